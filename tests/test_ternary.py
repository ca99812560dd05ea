import numpy as np
import pytest

from hw.config import TlmmConfig
from hw.isa import TlmmCommand, decode
from hw.ternary import (
    build_table,
    lookup,
    pack_fields,
    pack_weight_groups,
    quantize_activations,
    quantize_weights,
    tlmm_streams,
    unpack_weight_groups,
)


@pytest.mark.parametrize("g", [2, 3])
def test_pack_roundtrip_and_zero_index(g):
    rng = np.random.default_rng(1)
    w = rng.integers(-1, 2, (7, 11)).astype(np.int8)
    idx = pack_weight_groups(w, g)
    assert idx.shape == (7, -(-11 // g)) and idx.max() < 3**g
    assert np.array_equal(unpack_weight_groups(idx, g, 11), w)
    assert pack_weight_groups(np.zeros((1, g), np.int8), g)[0, 0] == (3**g - 1) // 2


def test_g3_index_is_offset_base3():
    # w = (+1, 0, -1) → digits (2, 1, 0) → 2 + 3 = 5
    assert pack_weight_groups(np.array([[1, 0, -1]]), 3)[0, 0] == 5


def test_non_ternary_weight_is_named():
    with pytest.raises(ValueError, match=r"w\[0, 2\] = 2"):
        pack_weight_groups(np.array([[1, 0, 2]]), 3)


@pytest.mark.parametrize("g", [2, 3])
def test_table_symmetry_and_half_lookup(g):
    rng = np.random.default_rng(2)
    a = rng.integers(-128, 128, (5, g))
    t = build_table(a, g)
    e = 3**g
    assert np.array_equal(t[:, ::-1], -t)  # t[E-1-idx] = -t[idx]
    assert (t[:, (e - 1) // 2] == 0).all()
    idx = rng.integers(0, e, (5, 9))
    assert np.array_equal(lookup(t, idx, g, "half"), lookup(t, idx, g, "full"))
    # the table really is the dot product with the unpacked weights
    w = unpack_weight_groups(idx.reshape(-1, 1).astype(np.uint8), g, g).reshape(5, 9, g)
    assert np.array_equal(lookup(t, idx, g, "full"), np.einsum("bij,bj->bi", w, a))


def test_activation_quantization_rules():
    q, s = quantize_activations(np.array([[0.5, -1.0, 0.25, 0.0]]))
    assert q.tolist() == [[64, -127, 32, 0]] and np.isclose(s[0, 0], 1 / 127)
    q, _ = quantize_activations(np.array([[2.5 / 127, 1.0]]))  # 2.5 rounds half to even → 2
    assert q[0, 0] == 2
    q, s = quantize_activations(np.zeros((1, 3)))
    assert (q == 0).all() and s[0, 0] == 1.0


def test_weight_quantization_absmean():
    wq, s = quantize_weights(np.array([[0.1, -0.3, 0.02, 0.5]]))
    assert np.isclose(s, 0.23) and wq.tolist() == [[0, -1, 0, 1]]


def test_streams_layout_and_padding():
    cfg = TlmmConfig(group_size=3, tables=2, columns=2, tokens=2)
    rng = np.random.default_rng(3)
    w = rng.integers(-1, 2, (3, 7)).astype(np.int8)
    x = rng.integers(-128, 128, (2, 7)).astype(np.int8)
    shape, act, wgt = tlmm_streams(cfg, w, x)
    assert (shape.k_chunks, shape.n_blocks) == (2, 2)
    assert act.shape == (2, 2, 6) and act[1, 1, 0] == x[1, 6] and (act[1, :, 1:] == 0).all()
    assert wgt.shape == (2, 2, 2, 2)
    assert wgt[0, 1, 0, 1] == pack_weight_groups(w, 3)[2, 1]
    assert (wgt[:, 1, 1] == cfg.zero_index).all()  # padded column
    assert (wgt[1, :, :, 1] == cfg.zero_index).all()  # padded groups


def test_stream_checks():
    cfg = TlmmConfig(tokens=2, act_bits=6)
    with pytest.raises(ValueError, match="tokens=3"):
        tlmm_streams(cfg, np.zeros((1, 4), np.int8), np.zeros((3, 4), np.int8))
    with pytest.raises(ValueError, match="6-bit"):
        tlmm_streams(cfg, np.zeros((1, 4), np.int8), np.full((1, 4), 40, np.int8))


def test_pack_fields_twos_complement():
    assert pack_fields(np.array([-1, 1]), 4) == 0x1F
    assert pack_fields(np.array([3, 0, 2]), 5) == 3 | (2 << 10)


def test_command_roundtrip_and_errors():
    c = TlmmCommand(tokens=4, k_chunks=64, n_blocks=192)
    assert decode(c.words()) == c and c.words()[0] & 0xFF == 1
    with pytest.raises(ValueError, match="opcode"):
        decode([c.words()[0] & ~0xFF | 7] + c.words()[1:])
    with pytest.raises(ValueError, match="reserved"):
        decode([c.words()[0] | 1 << 60] + c.words()[1:])
    with pytest.raises(ValueError, match="k_chunks"):
        TlmmCommand(1, 0, 1)
