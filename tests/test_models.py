"""models/: BitLinear numerics against hw.ternary, host ops, the LM's modes and KV cache, presets, checkpoints,
and the trained tiny checkpoint's quality."""
# ruff: noqa: E402

import os

# Before torch loads: spinning OpenMP waits make torch ~15x slower when another job shares the cores
# (see models/__init__.py; ineffective if an earlier test module already imported torch).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import math
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")
import torch
import torch.nn.functional as F

from hw.ternary import quantize_activations, quantize_weights
from models import hostops
from models.bitlinear import BitLinear, int_matmul, quantize_act, ternary_weight
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.data import VOCAB, decode, encode, eval_windows, load_corpus
from models.lm import LMConfig, generate
from models.presets import PRESETS, bitnet_2b_layout, build_model
from models.train import evaluate

pytestmark = pytest.mark.torch

SMALL = bitnet_2b_layout(vocab=64, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, ffn=96, max_seq=64)
SMALL_SWIGLU = LMConfig(vocab=64, d_model=48, n_layers=2, n_heads=3, n_kv_heads=3, ffn=80, max_seq=64)

# The trained checkpoint (python -m models.train) and the bound its int-mode perplexity must meet on the first
# validation windows. A random model scores ≈ 256 (uniform over bytes); a byte-unigram model ≈ 20.
CKPT = "models/checkpoints/tiny.pt"
PPL_BOUND = 8.0
EVAL_WINDOWS = 4


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.int32)


def tie_activations(rng: np.random.Generator) -> np.ndarray:
    """Rows whose quantized values hit exact .5 ties, all-zero rows, single-element rows and random rows."""
    rows = []
    for amax in (127.0, 254.0, 63.5):  # 127/amax = 1, 0.5, 2 exactly, so x·(127/amax) = k + 0.5
        inv = 127.0 / amax
        r = ((rng.integers(-127, 127, 64) + 0.5) / inv).astype(np.float32)
        r[0] = amax
        rows.append(r)
    rows.append(np.zeros(64, np.float32))
    z = np.zeros(64, np.float32)
    z[7] = -1e-30
    rows.append(z)
    rows.append(np.array([-128.0, 127.0] * 32, np.float32))
    for _ in range(10):
        rows.append((rng.standard_normal(64) * 10.0 ** rng.uniform(-6, 6)).astype(np.float32))
    return np.stack(rows)


def rounding_edge_rows(rng: np.random.Generator, n: int = 48) -> np.ndarray:
    """Rows [a, x, 0, ...] with x next to a rounding boundary of q = round(x·(127/a)), chosen so that an
    implementation computing 127/a as reciprocal(a)·127, or q as (127·x)/a or x/(a/127), gets another q."""
    f = np.float32
    rows = []
    for a in rng.uniform(0.01, 100, 20000).astype(f):
        inv = f(127) / a
        k = int(rng.integers(0, 126))
        x0 = f((k + 0.5) / inv)
        for x in (np.nextafter(x0, f(-np.inf)), x0, np.nextafter(x0, f(np.inf))):
            want = np.rint(x * inv)
            alts = (np.rint(x * ((f(1) / a) * f(127))), np.rint((f(127) * x) / a), np.rint(x / (a / f(127))))
            if any(alt != want for alt in alts):
                rows.append(np.pad(np.array([a, x if len(rows) % 2 else -x], f), (0, 62)))
                break
        if len(rows) == n:
            break
    assert len(rows) == n
    return np.stack(rows)


# ---------------------------------------------------------------- BitLinear numerics vs hw.ternary


@pytest.mark.parametrize("bits_", [8, 6])
def test_quantize_act_bit_identical_to_hw(bits_):
    rng = np.random.default_rng(0)
    for x in (
        tie_activations(rng),
        rounding_edge_rows(rng),
        (rng.standard_normal((37, 333)) * 3).astype(np.float32),
        (rng.standard_normal((2, 5, 96)) * 1e-3).astype(np.float32),
    ):
        q_np, s_np = quantize_activations(x, bits_)
        q_t, s_t = quantize_act(torch.from_numpy(x), bits_)
        assert q_t.dtype == torch.int8 and s_t.dtype == torch.float32
        assert np.array_equal(q_t.numpy(), q_np)
        assert np.array_equal(bits(s_t.numpy()), bits(s_np))
    # the tie rows really contain ties, rounded to even
    x = tie_activations(rng)[:3]
    frac = np.abs(x * (np.float32(127) / np.abs(x).max(-1, keepdims=True))) % 1
    assert (frac == 0.5).any()


def test_ternary_weight_bit_identical_to_hw():
    rng = np.random.default_rng(1)
    ties = np.tile(np.array([0.5, 1.5, -0.5, -1.5, 1.0, -1.0, 0.0, 2.0], np.float32), (6, 4))  # mean|w| = 1
    tiny = np.full((3, 5), 1e-7, np.float32)  # eps floor
    for w in (
        ties,
        tiny,
        (rng.standard_normal((48, 77)) * 0.02).astype(np.float32),
        rng.standard_normal((300, 129)).astype(np.float32),
    ):
        wq_np, s_np = quantize_weights(w)
        wq_t, s_t = ternary_weight(torch.from_numpy(w))
        assert np.array_equal(wq_t.numpy(), wq_np) and s_t == s_np
    wq, s = ternary_weight(torch.from_numpy(ties))
    assert s == 1.0 and set(np.unique(wq.numpy())) == {-1, 0, 1}
    assert np.array_equal(wq.numpy()[0, :8], [0, 1, 0, -1, 1, -1, 0, 1])  # 0.5 → 0, 1.5 → 2 → clip 1


def test_bitlinear_int_and_fake_modes_follow_the_numeric_definition():
    rng = np.random.default_rng(2)
    torch.manual_seed(0)
    lin = BitLinear(72, 40)
    x = np.concatenate([(rng.standard_normal((5, 72)) * 4).astype(np.float32), np.zeros((1, 72), np.float32)])
    w = lin.weight.detach().numpy()
    xq, sx = quantize_activations(x)
    wq, sw = quantize_weights(w)
    y_int = xq.astype(np.int64) @ wq.astype(np.int64).T
    want = y_int.astype(np.int32).astype(np.float32) * (sx * np.float32(sw))
    with torch.no_grad():
        got = lin(torch.from_numpy(x), mode="int").numpy()
        fake = lin(torch.from_numpy(x), mode="fake").numpy()
        flt = lin(torch.from_numpy(x), mode="float").numpy()
    assert np.array_equal(bits(got), bits(want))
    assert np.allclose(fake, want, rtol=1e-5, atol=1e-5)  # same values, float matmul instead of integer
    assert np.allclose(flt, x @ w.T, rtol=1e-5, atol=1e-5)
    assert not np.allclose(flt, want, atol=1e-3)  # quantization does change the result
    with pytest.raises(ValueError, match="mode"):
        lin(torch.from_numpy(x), mode="int4")


def test_int_matmul_is_exact_and_wraps_to_int32():
    a = torch.full((1, 1000), -128, dtype=torch.int8)
    b = torch.full((1000, 2), -128, dtype=torch.int8)
    assert int_matmul(a, b).tolist() == [[16384000, 16384000]]
    assert int_matmul(a, b).dtype == torch.int32


def test_ternary_cache_follows_weight_updates():
    torch.manual_seed(0)
    lin = BitLinear(16, 8)
    x = torch.randn(3, 16)
    y0 = lin(x, mode="int")
    with torch.no_grad():
        lin.weight.mul_(-1.0)
    assert torch.equal(lin(x, mode="int"), -y0)


def test_straight_through_gradients():
    torch.manual_seed(0)
    lin = BitLinear(32, 24)
    x = torch.randn(6, 32, requires_grad=True)
    g = torch.randn(6, 24)
    lin(x, mode="fake").backward(g)
    xq, sx = quantize_act(x.detach())
    wq, sw = ternary_weight(lin.weight)
    x_hat, w_hat = xq.float() * sx, wq.float() * sw
    assert torch.allclose(lin.weight.grad, g.T @ x_hat, atol=1e-5)
    assert torch.allclose(x.grad, g @ w_hat, atol=1e-5)
    assert lin.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- host ops


def test_hostops_match_torch_reference_values():
    torch.manual_seed(0)
    x = torch.randn(5, 37) * 4
    assert torch.allclose(hostops.exp(x).float(), torch.exp(x), rtol=2e-7, atol=0)
    assert torch.allclose(hostops.softmax(x), torch.softmax(x, -1), rtol=1e-6, atol=1e-7)
    assert torch.allclose(hostops.silu(x), F.silu(x), rtol=1e-6, atol=1e-6)
    w = torch.rand(37) + 0.5
    assert torch.allclose(hostops.rmsnorm(x, w, 1e-5), F.rms_norm(x, (37,), w, 1e-5), rtol=1e-5, atol=1e-6)
    assert torch.allclose(hostops.relu2(x, x), F.relu(x) ** 2 * x)
    wl = torch.randn(11, 37)
    assert torch.allclose(hostops.linear(x, wl), x @ wl.T, rtol=1e-5, atol=1e-5)
    assert torch.equal(hostops.fold_sum(torch.tensor([[1.0, 2.0, 3.0]])), torch.tensor([[6.0]]))
    assert hostops.exp(torch.tensor([float("-inf")])).float().item() == 0.0


def test_rope_rotates_pairs_and_is_identity_at_position_zero():
    cos, sin = hostops.rope_tables(16, 8, 10000.0)
    assert cos.shape == (16, 4) and torch.equal(cos[0], torch.ones(4)) and torch.equal(sin[0], torch.zeros(4))
    x = torch.randn(2, 3, 16, 8)
    y = hostops.rope(x, torch.arange(16), cos, sin)
    assert torch.equal(y[..., 0, :], x[..., 0, :])
    pair_norm = lambda t: t[..., :4] ** 2 + t[..., 4:] ** 2  # noqa: E731
    assert torch.allclose(pair_norm(y), pair_norm(x), rtol=1e-5)
    # pair 0 at position p rotates by p radians (inv_freq_0 = 1)
    assert torch.allclose(cos[5, 0], torch.tensor(math.cos(5.0)))


def test_hostops_do_not_depend_on_shape_or_padding():
    """A row computed alone, inside a batch or padded (zeros / -inf) gives bit-identical results."""
    torch.manual_seed(1)
    rows = torch.randn(9, 50) * 3
    batch_sm = hostops.softmax(rows)
    padded = torch.cat([rows[:, :23], torch.full((9, 100), float("-inf"))], dim=1)
    for i in range(9):
        assert torch.equal(hostops.softmax(rows[i : i + 1]), batch_sm[i : i + 1])
        assert torch.equal(hostops.softmax(padded[i : i + 1])[:, :23], hostops.softmax(rows[i : i + 1, :23]))
    w = torch.rand(50)
    wl = torch.randn(7, 50)
    for i in range(9):
        assert torch.equal(
            hostops.rmsnorm(rows[i : i + 1], w, 1e-5), hostops.rmsnorm(rows, w, 1e-5)[i : i + 1]
        )
        assert torch.equal(
            hostops.linear(rows[i : i + 1], wl), hostops.linear(rows, wl, max_elems=100)[i : i + 1]
        )
        assert torch.equal(hostops.silu(rows[i]), hostops.silu(rows)[i])


# ---------------------------------------------------------------- the LM


@pytest.mark.parametrize("cfg", [SMALL, SMALL_SWIGLU], ids=["relu2-subln-gqa", "swiglu"])
def test_kv_cache_incremental_decoding_equals_full_forward(cfg):
    model = build_model(cfg, seed=3)
    tokens = torch.randint(0, cfg.vocab, (2, 21), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for mode in ("int", "float", "fake"):
            full = model(tokens, mode=mode)
            cache = model.new_cache()
            parts = [model(tokens[:, :9], cache=cache, mode=mode)]
            parts += [model(tokens[:, i : i + 1], cache=cache, mode=mode) for i in range(9, 21)]
            inc = torch.cat(parts, dim=1)
            assert cache.length == 21
            if mode == "int":  # every int-mode op is per token or has a fixed order
                assert torch.equal(inc, full)
            elif mode == "float":  # torch kernels: summation order differs with the shapes
                assert torch.allclose(inc, full, rtol=1e-4, atol=1e-5)
            else:  # fake: a last-bit difference may flip one activation rounding
                assert torch.allclose(inc, full, atol=0.05)
        assert cache.layers[0][0].dtype == torch.float32
        int_cache = model.new_cache()
        model(tokens[:, :3], cache=int_cache, mode="int")
        kq, sk, vq, sv = int_cache.layers[1]
        assert kq.dtype == vq.dtype == torch.int8 and sk.shape == (2, cfg.n_kv_heads, 3, 1)
        with pytest.raises(ValueError, match="KV cache was filled in mode"):
            model(tokens[:, 3:4], cache=int_cache, mode="float")


def test_generate_is_greedy_over_full_forward():
    model = build_model(SMALL, seed=4)
    out = generate(model, [1, 2, 3, 4], 6, mode="int")
    assert out.shape == (10,) and out[:4].tolist() == [1, 2, 3, 4]
    with torch.no_grad():
        logits = model(out[None, :-1], mode="int")
    assert torch.equal(logits[0, 3:].argmax(-1), out[4:])
    with pytest.raises(ValueError, match="max_seq"):
        generate(model, [1] * 60, 10)


def test_int_mode_is_close_to_fake_mode_on_random_model():
    model = build_model(SMALL, seed=5)
    tokens = torch.randint(0, SMALL.vocab, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fake, intm = model(tokens, mode="fake"), model(tokens, mode="int")
    assert (fake - intm).abs().max() < 0.1 * fake.abs().max()


def test_module_names_for_the_compiler():
    model = build_model(SMALL, device="meta")
    names = set(model.bitlinears())
    for i in range(SMALL.n_layers):
        for p in (
            "attn.q_proj",
            "attn.k_proj",
            "attn.v_proj",
            "attn.o_proj",
            "ffn.gate_proj",
            "ffn.up_proj",
            "ffn.down_proj",
        ):
            assert f"layers.{i}.{p}" in names
    assert len(names) == 7 * SMALL.n_layers
    assert model.layers[0].attn.k_proj.weight.shape == (SMALL.n_kv_heads * SMALL.head_dim, SMALL.d_model)
    assert model.lm_head.weight is model.embed_tokens.weight


def test_export_int_mode():
    from compiler.capture import IntForward

    model = build_model(SMALL, seed=6).eval()
    tokens = torch.randint(0, SMALL.vocab, (1, 12), generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        want = model(tokens, mode="int")  # fills the ternary-weight caches
        ep = torch.export.export(IntForward(model), (tokens,))
        assert torch.equal(ep.module()(tokens), want)


def test_config_errors():
    with pytest.raises(ValueError, match="n_kv_heads"):
        LMConfig(vocab=8, d_model=16, n_layers=1, n_heads=4, n_kv_heads=3, ffn=8)
    with pytest.raises(ValueError, match="activation"):
        LMConfig(vocab=8, d_model=16, n_layers=1, n_heads=4, n_kv_heads=4, ffn=8, activation="gelu")
    with pytest.raises(ValueError, match="unknown field"):
        LMConfig.from_dict({**SMALL.to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("bitnet-70b", device="meta")


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize(
    "name,published,exact", [("bitnet-0.7b", 0.73e9, 728_707_584), ("bitnet-2b", 2.4e9, 2_412_820_480)]
)
def test_big_presets_on_meta(name, published, exact):
    t0 = time.time()
    model = build_model(name, device="meta")
    assert time.time() - t0 < 5.0
    n = sum(p.numel() for p in model.parameters())
    assert n == exact and abs(n - published) / published < 0.05
    cfg = PRESETS[name]
    assert model.layers[cfg.n_layers - 1].ffn.down_proj.weight.shape == (cfg.d_model, cfg.ffn)
    assert model.layers[0].attn.v_proj.weight.shape == (cfg.n_kv_heads * cfg.head_dim, cfg.d_model)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_bitnet_2b_preset_shape():
    cfg = PRESETS["bitnet-2b"]
    assert (cfg.head_dim, cfg.n_kv_heads, cfg.activation, cfg.subln, cfg.rope_theta) == (
        128,
        5,
        "relu2",
        True,
        5e5,
    )
    assert PRESETS["bitnet-0.7b"].head_dim == 96


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_and_errors(tmp_path):
    model = build_model(SMALL_SWIGLU, seed=7)
    path = save_checkpoint(model, tmp_path / "m.pt", {"note": "test"})
    loaded = load_checkpoint(path)
    tokens = torch.randint(0, SMALL_SWIGLU.vocab, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(tokens, mode="int"), model(tokens, mode="int"))
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == SMALL_SWIGLU.to_dict() and raw["meta"] == {"note": "test"}

    with pytest.raises(CheckpointError, match=r"nope\.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not a tritium-lm checkpoint"):
        load_checkpoint(tmp_path / "other.pt")

    def variant(name, edit):
        obj = torch.load(path, weights_only=True)
        edit(obj)
        torch.save(obj, tmp_path / name)
        return tmp_path / name

    p = variant("missing.pt", lambda o: o["state_dict"].pop("layers.1.ffn.up_proj.weight"))
    with pytest.raises(
        CheckpointError, match=r"missing\.pt: .*missing 1 key\(s\), first 'layers\.1\.ffn\.up_proj"
    ):
        load_checkpoint(p)
    p = variant("extra.pt", lambda o: o["state_dict"].__setitem__("layers.9.x", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"extra\.pt: .*unexpected 1 key"):
        load_checkpoint(p)
    p = variant("shape.pt", lambda o: o["config"].__setitem__("ffn", 96))
    with pytest.raises(
        CheckpointError,
        match=r"shape\.pt: state_dict\['layers\.0\.ffn\.gate_proj\.weight'\] "
        r"has shape \(80, 48\), the config needs \(96, 48\)",
    ):
        load_checkpoint(p)
    p = variant("cfg.pt", lambda o: o["config"].__setitem__("activation", "tanh"))
    with pytest.raises(CheckpointError, match=r"cfg\.pt: bad config"):
        load_checkpoint(p)


# ---------------------------------------------------------------- corpus and the trained checkpoint


def test_corpus_is_byte_level_and_split():
    c = load_corpus()
    assert c.train.numel() > 1_000_000 and c.val.numel() > 50_000
    assert int(c.train.max()) < VOCAB and int(c.train.min()) >= 0
    assert decode(encode("ternary ± weights")) == "ternary ± weights"
    train = c.train.to(torch.uint8).numpy().tobytes()
    assert c.val[:4000].to(torch.uint8).numpy().tobytes() not in train  # the splits hold different documents
    x, y = eval_windows(c.val, 256, 3)
    assert x.shape == (3, 256) and torch.equal(x[1, 1:], y[1, :-1]) and torch.equal(y[0, -1], x[1, 0])


@pytest.fixture(scope="module")
def trained():
    return load_checkpoint(Path(__file__).resolve().parent.parent / CKPT)


def test_trained_checkpoint_int_mode_perplexity(trained):
    val = load_corpus().val
    res = evaluate(trained, "int", val, max_windows=EVAL_WINDOWS)
    assert res["bytes"] == EVAL_WINDOWS * trained.config.max_seq
    assert res["ppl"] < PPL_BOUND, res
    # the bound is one a model that learned nothing cannot meet
    untrained = build_model(trained.config, seed=0)
    assert evaluate(untrained, "int", val, max_windows=1)["ppl"] > 4 * PPL_BOUND


def test_trained_checkpoint_int_mode_close_to_fake_mode(trained):
    x, y = eval_windows(load_corpus().val, trained.config.max_seq, 2)
    with torch.no_grad():
        fake, intm = trained(x, mode="fake"), trained(x, mode="int")
    loss_f = F.cross_entropy(fake.reshape(-1, VOCAB), y.reshape(-1)).item()
    loss_i = F.cross_entropy(intm.reshape(-1, VOCAB), y.reshape(-1)).item()
    assert abs(loss_i - loss_f) < 0.05  # nats per byte
    assert (fake.argmax(-1) == intm.argmax(-1)).float().mean() > 0.95
    assert ((fake - intm).abs().mean() / fake.abs().mean()) < 0.05
