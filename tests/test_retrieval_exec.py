"""KV retrieval in the loop, executed (docs/design.md, "KV retrieval in the loop"): the tile-list GEMM
(opcode 6) on the stepped GEMM model, KVR (opcode 5) through sim.runtime, and Programs holding them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_resv_config

from hw import isa
from hw.gemm_layout import gemm_shape, pack_a, pack_b, unpack_c
from sim.gemm_model import list_fetch_beats, list_fetch_cycles, run_gemm_list_on_image, run_gemm_on_image
from sim.mem_kernel import mem_timing


def _write_list(image, base, tiles):
    w = image.shape[1]
    words = np.zeros(4 + len(tiles), "<u4")
    words[0] = len(tiles)
    words[4:] = [t | 64 << 16 for t in tiles]
    image.reshape(-1)[base * w : base * w + 4 * words.size] = words.view(np.uint8)


def _layout(ap, bp, list_base=3):
    """Beat addresses of the tile list, A, B and C in the test image (a gap after each)."""
    a_base = list_base + 2
    b_base = a_base + ap.shape[0] + 1
    return {"list_base": list_base, "a_base": a_base, "b_base": b_base, "c_base": b_base + bp.shape[0] + 2}


@pytest.mark.parametrize("mode", [1, 2])
def test_gemm_list_reads_only_the_listed_tiles(mode):
    """A GEMM_LIST equals the dense GEMM over the listed tiles gathered in list order (values), and its
    cycles are the list fetch plus the opcode-2 GEMM with the list's count (the one cycle definition)."""
    acfg = tiny_resv_config()
    geo = acfg.gemm_geometry
    rng = np.random.default_rng(mode)
    tiles_total, tiles = 7, [0, 5, 2]  # list order is not tile order
    W = geo.bus_bytes
    if mode == 1:  # Q·Kᵀ: A (2 × 64) against B = Kᵀ (64 × 7·cols), columns through the list
        K, cols = 64, geo.cols
        a = rng.integers(-128, 128, (2, K), dtype=np.int8)
        b = rng.integers(-128, 128, (K, tiles_total * cols), dtype=np.int8)
        want = a.astype(np.int64) @ np.concatenate([b[:, d * cols : (d + 1) * cols] for d in tiles], 1)
        ap, bp = pack_a(a, geo), pack_b(b, geo)
        s = gemm_shape(geo, 2, K, tiles_total * cols)
        cap_fields = dict(m_tiles=s.m_tiles, n_tiles=8, k_tiles=s.k_tiles)
        out_shape = gemm_shape(geo, 2, K, len(tiles) * cols)
    else:  # P·V: A (2 × 7·TK) against B = V (7·TK × 64), k-tiles through the list
        TK, N = geo.k_tile, 64
        v = rng.integers(-128, 128, (tiles_total * TK, N), dtype=np.int8)
        p = rng.integers(-128, 128, (2, len(tiles) * TK), dtype=np.int8)
        want = p.astype(np.int64) @ np.concatenate([v[d * TK : (d + 1) * TK] for d in tiles], 0)
        ap, bp = pack_a(p, geo), pack_b(v, geo)
        s = gemm_shape(geo, 2, tiles_total * TK, N)
        cap_fields = dict(m_tiles=s.m_tiles, n_tiles=s.n_tiles, k_tiles=8)
        out_shape = gemm_shape(geo, 2, len(tiles) * TK, N)
    b_stride = s.k_tiles * geo.b_beats if mode == 2 else 0
    cmd = isa.GemmListCommand(**cap_fields, **_layout(ap, bp), b_stride=b_stride, mode=mode)
    image = np.zeros((cmd.c_base + 64, W), np.uint8)
    image[cmd.a_base : cmd.a_base + ap.shape[0]] = ap
    image[cmd.b_base : cmd.b_base + bp.shape[0]] = bp
    _write_list(image, cmd.list_base, tiles)
    assert isa.decode_program(cmd.words()) == [cmd]
    before = image.copy()
    cycles, events, n = run_gemm_list_on_image(acfg, image, cmd)
    assert n == len(tiles)
    nout = out_shape.m_tiles * out_shape.n_tiles * geo.out_beats(False)
    got = unpack_c(image[cmd.c_base : cmd.c_base + nout], geo, out_shape, requant=False)
    assert np.array_equal(got, want)
    assert np.array_equal(image[: cmd.c_base], before[: cmd.c_base]) and not image[cmd.c_base + nout :].any()
    # timing: the dense GEMM with the list's count on a packed image of the gathered tiles
    dense = cmd.with_count(n)
    a2 = pack_a(a if mode == 1 else p, geo)
    gathered = (
        pack_b(np.concatenate([b[:, d * cols : (d + 1) * cols] for d in tiles], 1), geo)
        if mode == 1
        else pack_b(np.concatenate([v[d * TK : (d + 1) * TK] for d in tiles], 0), geo)
    )
    img2 = np.concatenate([a2, gathered, np.zeros((nout, W), np.uint8)])
    ref = isa.GemmCommand(
        dense.m_tiles, dense.n_tiles, dense.k_tiles, 0, a2.shape[0], a2.shape[0] + gathered.shape[0]
    )
    c2, _ = run_gemm_on_image(acfg, img2, ref)
    fetch = list_fetch_cycles(mem_timing(acfg.memory), n, W)
    assert fetch == acfg.memory.latency + list_fetch_beats(n, W) * acfg.memory.beat_interval
    assert cycles == fetch + c2


def test_gemm_list_refuses_a_bad_list():
    acfg = tiny_resv_config()
    image = np.zeros((64, acfg.gemm_geometry.bus_bytes), np.uint8)
    cmd = isa.GemmListCommand(1, 4, 1, a_base=8, b_base=10, c_base=30, list_base=0, mode=1)
    with pytest.raises(ValueError, match="holds 0 entries; the command allows 1..4"):
        run_gemm_list_on_image(acfg, image, cmd)
    _write_list(image, 0, [40])
    with pytest.raises(ValueError, match="a listed B tile .* outside the 64-beat image"):
        run_gemm_list_on_image(acfg, image, cmd)


# ---------------------------------------------------------------- end to end: compiler → executor → reference
@pytest.mark.torch
def test_tiny_model_resv_decode_is_bit_exact(repo, tmp_path):
    """The trained tiny model compiled with system.attention=resv (kv_min_context 64): prefill and decode
    steps on sim.runtime (KVR on the KV model, GEMM_LIST on the GEMM model, the restricted softmax) give
    models/lm.py int mode's logits with a models.retrieval.RetrievalCache bit for bit, below and past the
    threshold; the retrieval steps hold KVR and GEMM_LIST commands and read fewer tiles than the context."""
    torch = pytest.importorskip("torch")
    from compiler import compile_model
    from models.checkpoint import load_checkpoint
    from models.retrieval import RetrievalCache
    from sim.runtime import Runtime

    model = load_checkpoint(repo / "models" / "checkpoints" / "tiny.pt")
    cfg = model.config
    acfg = tiny_resv_config(kv_sinks=2, kv_window=8)
    cm = compile_model(model, acfg)
    rg = cm.lowering.rgeo
    prompt, steps = 60, 12  # decode positions 60..71: dense up to 62, retrieval from 63 (context 64), window
    # tiles from 64 on
    rng = np.random.default_rng(3)
    toks = torch.as_tensor(rng.integers(32, 127, prompt + steps)).reshape(1, -1)
    cache, dense_cache = model.new_cache(), model.new_cache()
    cache.retrieval = RetrievalCache(acfg.kv, 2, 8, 64, rg.group, cfg.n_layers)
    p0 = cm.program(prompt, 0)
    assert not any(isinstance(c, isa.GemmListCommand) for c in p0.commands())
    assert sum(isinstance(c, isa.KvrCommand) for c in p0.commands()) == cfg.n_layers * rg.streams_per_layer
    rt = Runtime(p0)
    with torch.no_grad():
        want = model(toks[:, :prompt], cache=cache, mode="int", lm_head="acc_int8")[0]
        model(toks[:, :prompt], cache=dense_cache, mode="int", lm_head="acc_int8")
    got, _ = rt.run(p0, toks[0, :prompt].numpy())
    assert torch.equal(got, want)
    lists, differs = 0, 0
    for pos in range(prompt, prompt + steps):
        prog = cm.program(1, pos)
        kinds = [type(c).__name__ for c in prog.commands()]
        assert ("GemmListCommand" in kinds) == (pos + 1 >= 64)
        got, stats = rt.run(prog, toks[0, pos : pos + 1].numpy())
        with torch.no_grad():
            want = model(toks[:, pos : pos + 1], cache=cache, mode="int", lm_head="acc_int8")[0]
            dense = model(toks[:, pos : pos + 1], cache=dense_cache, mode="int", lm_head="acc_int8")[0]
        assert torch.equal(got, want), (pos, float((got - want).abs().max()))
        differs += not torch.equal(got, dense)
        assert pos + 1 >= 64 or torch.equal(got, dense)
        lists += stats.commands.get("kv", 0)
    assert differs > 0  # retrieval changed the attention (the executor followed it bit for bit)
    assert lists == cfg.n_layers * rg.streams_per_layer * steps
    rows = cache.retrieval.rows
    assert rows and all((row >= 0).sum() < p + 1 for _l, _j, p, row, _s in rows)  # restricted, not dense
    # the last step's folder loads (opcodes 5 and 6 pass Program.load) and `tritium run` executes it alone
    from sim.runtime import execute
    from tritium.run import run_program

    prog.save(tmp_path / "step")
    rep = run_program(tmp_path / "step", tokens=[int(toks[0, pos])], logits_out=tmp_path / "l.npy")
    assert rep["commands"]["kv"] == cfg.n_layers * rg.streams_per_layer and rep["cycles"]["kv"] > 0
    alone = execute(prog, toks[0, pos : pos + 1].numpy())[0]
    assert np.array_equal(np.load(tmp_path / "l.npy"), alone.numpy())


def test_compiler_resv_limits_and_dense_option():
    """A prefill inserting more keys than a KVR holds is refused in one line; ``retrieval=False`` (what the
    estimate compiles) keeps the dense Program on a resv config, and the resv Program holds KVR/GEMM_LIST."""
    from compiler import CompileError, compile_model, load_model

    model = load_model("tiny", device="meta")
    cm = compile_model(model, tiny_resv_config(kv_sinks=0))
    with pytest.raises(CompileError, match="inserts 256 keys per stream; a KVR command holds 255"):
        cm.program(256, 0)
    kinds = {type(c).__name__ for c in cm.program(1, 100).commands()}
    assert {"KvrCommand", "GemmListCommand"} <= kinds
    dense = compile_model(model, tiny_resv_config(kv_sinks=0), retrieval=False).program(1, 100)
    assert {type(c).__name__ for c in dense.commands()} == {"TlmmCommand", "GemmCommand", "HostCommand"}
