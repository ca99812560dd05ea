"""Overlapped dispatch (system.overlap; docs/design.md "Top level", "Compiler"): SYNC commands from the data
dependencies, the top level's event schedule (sim/top_model.py), the estimate's use of it, and the RTL top
level running overlapped Programs with every command's cycles, the whole step's cycles and the logits equal."""

import dataclasses

import pytest
from conftest import config_variant, top_one_layer

from compiler.schedule import command_ranges, insert_syncs, with_syncs
from hw.config import load_config
from hw.isa import (
    SYNC_GEMM,
    SYNC_HOST,
    SYNC_TLMM,
    GemmCommand,
    HostCommand,
    SyncCommand,
    TlmmCommand,
    decode,
    decode_program,
    encode_program,
)
from hw.program import HostOp, TensorInfo
from sim.top_model import schedule


def _overlap(acfg, on=True):
    return dataclasses.replace(acfg, system=dataclasses.replace(acfg.system, overlap=on))


def _tensors(W):
    # beat addresses: x (host writes, TLMM reads) at 100, y (TLMM result) at 200, z (unrelated) at 400
    return {
        "x": TensorInfo("x", 100, 2 * W, "int8", [2 * W], "tlmm_act"),
        "y": TensorInfo("y", 200, 4 * W, "int32", [W], "tlmm_res"),
        "z": TensorInfo("z", 400, W, "float32", [W // 4]),
        "c": TensorInfo("c", -1, 16, "float32", [4], attrs={"space": "host"}),
    }


def _hazard_case():
    """The default config, the tensors of ``_tensors`` and a TLMM reading x (beat 100) and writing y (beat 200)."""
    acfg = load_config()
    W = acfg.memory.bus_bytes
    return acfg, W, _tensors(W), TlmmCommand(1, 1, 1, act_base=100, wgt_base=300, res_base=200)


def test_sync_encoding_round_trip():
    cmds = [SyncCommand(SYNC_TLMM | SYNC_HOST), HostCommand(3), SyncCommand(SYNC_GEMM)]
    words = encode_program(cmds)
    assert len(words) == 3 and decode_program(words) == cmds
    assert words[0] == 4 | (5 << 8)
    with pytest.raises(ValueError, match="mask"):
        decode([4])  # a SYNC that waits for nothing
    with pytest.raises(ValueError, match="reserved"):
        decode([4 | (1 << 8) | (1 << 20)])


def test_raw_hazard_gets_a_sync():
    acfg, W, t, tl = _hazard_case()
    ops = [HostOp("quant", "quant", ["c"], ["x"]), HostOp("deq", "dequant", ["y"], ["z"])]
    reads, writes = command_ranges(acfg, tl, ops, t)
    assert (100 * W, 100 * W + acfg.tlmm.chunk_k) in reads and writes[0][0] == 200 * W
    # the host writes x, the TLMM reads it (RAW on HOST); the host then reads y the TLMM wrote (RAW on TLMM)
    cmds = [HostCommand(0), tl, HostCommand(1)]
    assert insert_syncs(acfg, cmds, ops, t) == [(1, SYNC_HOST), (2, SYNC_TLMM)]
    out, index = with_syncs(cmds, insert_syncs(acfg, cmds, ops, t))
    assert out == [HostCommand(0), SyncCommand(SYNC_HOST), tl, SyncCommand(SYNC_TLMM), HostCommand(1)]
    assert index == [0, 2, 4]


def test_war_and_waw_hazards_get_a_sync_independent_commands_do_not():
    acfg, _, t, tl = _hazard_case()
    ops = [HostOp("reads_y", "dequant", ["y"], ["z"]), HostOp("writes_y", "dequant", ["z"], ["y"])]
    # WAR: the host op reads y, then the TLMM overwrites it
    assert insert_syncs(acfg, [HostCommand(0), tl], ops, t) == [(1, SYNC_HOST)]
    # WAW: the TLMM writes y, then the host op writes it too
    assert insert_syncs(acfg, [tl, HostCommand(1)], ops, t) == [(1, SYNC_TLMM)]
    # a host op on unrelated memory runs beside the engine: no SYNC
    ops2 = [HostOp("other", "add", ["z"], ["z"])]
    assert insert_syncs(acfg, [tl, HostCommand(0)], ops2, t) == []
    # GEMM after TLMM: the shared port orders them already
    g = GemmCommand(1, 1, 1, a_base=200, b_base=500, c_base=600)
    assert insert_syncs(acfg, [tl, g], ops, t) == []


def test_schedule_rules():
    tl, g, h = TlmmCommand(1, 1, 1), GemmCommand(1, 1, 1), HostCommand(0)
    # serial: each command waits for every engine; words 3, 3, 1; a class is idle the cycle after its done
    s = schedule([tl, h, g], [10, 7, 5], overlap=False)
    assert s.fetch == [0, 4, 15] and s.dispatch == [3, 14, 22] and s.done == [13, 21, 27]
    assert s.length == 28 and s.per_command == [14, 18, 13]
    # overlap: the host op goes beside the TLMM; the GEMM waits for the TLMM (shared port) only
    s = schedule([tl, h, g], [10, 7, 5], overlap=True)
    assert s.dispatch == [3, 5, 14] and s.done == [13, 12, 19] and s.length == 20
    # a SYNC on HOST holds the GEMM until the host op is done
    s = schedule([h, SyncCommand(SYNC_HOST), g], [30, 0, 5], overlap=True)
    assert s.done[1] == 32 and s.dispatch[2] == 36 and s.length == 42
    # continuous time (the estimate): no fetch cost
    s = schedule([tl, h, g], [1.0, 0.5, 2.0], overlap=True, fetch=False)
    assert s.length == 3.0 and s.done == [1.0, 0.5, 3.0]
    assert schedule([tl, h, g], [1.0, 0.5, 2.0], overlap=False, fetch=False).length == 3.5


def _unfused(monkeypatch):
    """Compile without compiler.passes.fuse_dequant: the dequants then run beside the next TLMM. With it, every
    host op of the tiny model on these configs waits for the engine command before it (nothing to overlap;
    tests/test_fuse_dequant.py runs the fused Programs)."""
    from compiler import passes

    run = passes.run_pipeline
    monkeypatch.setattr(passes, "run_pipeline", lambda g, state: run(g, state, skip=("fuse_dequant",)))


def _two_groups(acfg):
    """A GEMM geometry on which the tiny model's attention has two KV-head groups: with overlap, the softmax of
    group 0 runs beside the Q·Kᵀ of group 1."""
    return config_variant(acfg, gemm={"rows": 2, "cols": 16, "k_tile": 32, "buffers": 4})


@pytest.mark.torch
def test_overlapped_programs_compute_the_same_and_take_fewer_cycles(repo, monkeypatch):
    """The tiny model's prefill and a decode step: overlap only adds SYNCs (the same commands otherwise),
    the executor's logits are bit-identical and the modeled step is shorter."""
    import numpy as np

    from compiler import compile_model, load_model
    from sim.cosim import truncated_model
    from sim.runtime import execute
    from sim.top_model import program_schedule

    _unfused(monkeypatch)
    model = truncated_model(load_model(str(repo / "models" / "checkpoints" / "tiny.pt")), 1)
    base = load_config(repo / "configs" / "default.yaml")
    serial, over = compile_model(model, base), compile_model(model, _overlap(base))
    for T in (5, 1):
        ps = serial.program(T, 0, logits="last")
        po = over.program(T, 0, logits="last")
        cs, co = ps.commands(), po.commands()
        assert not any(isinstance(c, SyncCommand) for c in cs)
        body = [c for c in co if not isinstance(c, SyncCommand)]
        assert [type(c) for c in body] == [type(c) for c in cs] and len(co) > len(cs)
        assert all(h.attrs["cycles"] >= 1 for h in po.host_ops)
        toks = list(range(3, 3 + T))
        assert np.array_equal(execute(ps, toks)[0].numpy(), execute(po, toks)[0].numpy())
        ss, so = program_schedule(ps), program_schedule(po)
        assert so.length < ss.length
        # serial: the step is exactly the commands one after another (each done before the next dispatch)
        assert all(d < c for d, c in zip(ss.done, ss.dispatch[1:], strict=False))


@pytest.mark.torch
def test_estimate_uses_the_schedule(repo):
    from tritium.estimate import estimate

    base = _two_groups(load_config(repo / "configs" / "default.yaml"))
    off = estimate(str(repo / "models" / "checkpoints" / "tiny.pt"), base, 8, 16, breakdown=True)
    on = estimate(str(repo / "models" / "checkpoints" / "tiny.pt"), _overlap(base), 8, 16, breakdown=True)
    assert on["decode_s_per_token"] < off["decode_s_per_token"]
    assert on["decode_s_per_token"] >= on["dram_bytes_per_token"] / (base.device.dram_gbs * 1e9)
    b = on["breakdown"]["decode"]
    assert any(r["name"] == "overlap (saved)" and r["time_s"] < 0 for r in b["by_op_kind"])
    assert sum(r["time_s"] for r in b["by_op_kind"]) == pytest.approx(b["totals"]["time_s"], rel=1e-9)
    assert sum(r["commands"] for r in b["by_layer"]) == b["totals"]["commands"]


@pytest.mark.torch
@pytest.mark.verilator
def test_top_overlapped_cycle_exact(repo, monkeypatch):
    """One decoder layer of the tiny model, prompt + 1 decode step, overlap on: logits bit-exact, every
    command's cycles and the whole step's cycles equal to sim/top_model.py, and commands really overlap.
    On configs/small-g2-half.yaml (G=2 half tables, T=3, Q=5, 3 tokens: 6-byte activation beats, 20-byte
    result beats that straddle the 32-byte bus beats, another weight width), so the same build also runs the
    gearbox and the result packer on other boundaries than default.yaml's (one Verilator build for both)."""
    _unfused(monkeypatch)  # dequants beside TLMMs: host and engine really run at once
    rep = top_one_layer(_overlap(load_config(repo / "configs" / "small-g2-half.yaml")), b"import os", 2)
    assert rep.overlap and rep.rtl_step_cycles == rep.model_step_cycles
    kinds = {k for step in rep.commands for k in step}
    assert kinds == {"tlmm", "gemm", "host", "sync"}
    for s in range(2):
        assert rep.rtl_step_cycles[s] < sum(rep.rtl_cycles[s])  # overlapped: shorter than the commands' sum


@pytest.mark.torch
def test_split_softmax_equals_pytorch(repo):
    """With overlap and several KV-head groups, attention's softmax is one host op per group (right after
    its Q·Kᵀ, so it runs beside the next group's GEMM); the logits stay bit-identical to PyTorch int mode."""
    torch = pytest.importorskip("torch")
    from compiler import compile_model
    from hw.config import config_from_dict
    from models.lm import LMConfig, TernaryLM
    from sim.runtime import Runtime
    from sim.top_model import program_schedule

    cfg = LMConfig(
        vocab=64, d_model=48, n_layers=2, n_heads=4, n_kv_heads=4, ffn=80, activation="relu2", max_seq=64
    )
    torch.manual_seed(0)
    m = TernaryLM(cfg).eval()
    d = load_config(repo / "configs" / "default.yaml").to_dict()
    d["gemm"] = {**d["gemm"], "rows": 2, "cols": 16, "k_tile": 32, "buffers": 4}
    d["system"] = {**d["system"], "overlap": True}
    acfg = config_from_dict(d)
    cm = compile_model(m, acfg)
    prompt = torch.tensor([3, 17, 40, 8, 61])
    p0 = cm.program(len(prompt), 0)
    soft = [op for op in p0.host_ops if op.kind == "attn_softmax"]
    assert len(soft) == 2 * 2 and {op.attrs["group_lo"] for op in soft} == {0, 1}
    rt = Runtime(p0)
    logits, _ = rt.run(p0, prompt.numpy())
    toks = prompt.tolist()
    assert torch.equal(logits, m(prompt[None], mode="int")[0])
    for _ in range(2):
        toks.append(int(logits[-1].argmax()))
        prog = cm.program(1, len(toks) - 1)
        logits, _ = rt.run(prog, [toks[-1]])
        assert torch.equal(logits[-1], m(torch.tensor(toks)[None], mode="int")[0, -1])
        s = program_schedule(prog)
        cmds = prog.commands()
        # a softmax runs while a GEMM runs (their dispatch..done intervals intersect)
        spans = list(zip(cmds, s.dispatch, s.done, strict=True))
        gem = [(a, b) for c, a, b in spans if isinstance(c, GemmCommand)]
        soft = [
            (a, b)
            for c, a, b in spans
            if isinstance(c, HostCommand) and prog.host_ops[c.op].kind == "attn_softmax"
        ]
        assert any(a < d and c < b for a, b in soft for c, d in gem)


@pytest.mark.torch
def test_dse_evaluator_equals_estimate_with_overlap():
    from tritium.dse import FastEvaluator, build_workload
    from tritium.estimate import estimate

    acfg = _overlap(_two_groups(load_config()))
    got = FastEvaluator(build_workload("tiny", 8, 16, acfg)).estimate(acfg)
    want = estimate("tiny", acfg, 8, 16)
    for k in ("decode_s_per_token", "ttft_s", "j_per_token"):
        assert got[k] == pytest.approx(want[k], rel=1e-12)
    assert got["overlap"] and got["overlap_saved_s"]["decode"] > 0
