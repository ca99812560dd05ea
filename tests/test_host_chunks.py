"""Row-chunked host ops in an overlapped prefill (compiler/chunks.py; docs/design.md, "Top level overlap"):
the chunked Program computes the same logits bit for bit as the whole-op Program and as PyTorch, keeps every
data dependency (in its emission order and under the top level's overlapped schedule), and its prefill step
is shorter; decode steps and overlap-off Programs are not chunked."""

import dataclasses

import numpy as np
import pytest
from conftest import REPO, overlapped_pairs

from compiler.chunks import MIN_CHUNK_ROWS, ROW_ATTENTION, dependencies, host_chunk_rows, row_wise
from hw.config import load_config
from hw.isa import HostCommand

pytestmark = pytest.mark.torch

PROMPT = [3, 17, 40, 8, 61, 5, 9, 22, 30, 14, 2, 44, 7, 19, 11, 28, 36, 50, 6]  # 19: not a multiple of 8


def _overlap(acfg):
    return dataclasses.replace(acfg, system=dataclasses.replace(acfg.system, overlap=True))


def _tiny(repo, layers=2):
    from compiler import load_model
    from sim.cosim import truncated_model

    return truncated_model(load_model(str(repo / "models" / "checkpoints" / "tiny.pt")), layers)


@pytest.fixture(scope="module")
def compiled():
    from compiler import compile_model

    acfg = _overlap(load_config(REPO / "configs" / "default.yaml"))
    m = _tiny(REPO)
    return m, acfg, compile_model(m, acfg)


def _whole(cm, T, pos, monkeypatch):
    """The same step without row chunks (the chunk rule says: one chunk)."""
    import compiler.lower

    with monkeypatch.context() as mp:
        mp.setattr(compiler.lower, "host_chunk_rows", lambda acfg, tokens: tokens)
        return cm.program(T, pos)


def test_chunk_rule():
    acfg = load_config(REPO / "configs" / "kv260.yaml")  # tlmm.tokens 4
    assert host_chunk_rows(acfg, 128) == 8  # 16 chunks of 8 rows
    assert host_chunk_rows(acfg, 1024) == 64
    assert host_chunk_rows(acfg, 5) >= 5  # short steps: whole host ops
    for T in (9, 17, 100, 128, 333):
        r = host_chunk_rows(acfg, T)
        assert r % acfg.tlmm.tokens == 0 and r >= MIN_CHUNK_ROWS and -(-T // r) <= 16
    assert row_wise("dequant+swiglu+quant") and row_wise("rmsnorm+quant") and row_wise("add")
    assert not row_wise("attn_prep") and not row_wise("dequant+attn_prep") and not row_wise("attn_softmax")
    assert not row_wise("embed") and not row_wise("lm_head")


def test_chunked_prefill_and_decode_bit_identical_and_shorter(repo, compiled, monkeypatch):
    import torch

    from sim.runtime import Runtime
    from sim.top_model import program_schedule

    m, acfg, cm = compiled
    T = len(PROMPT)
    pc, pw = cm.program(T, 0), _whole(cm, T, 0, monkeypatch)
    rows = host_chunk_rows(acfg, T)
    assert rows < T and rows % acfg.tlmm.tokens == 0
    chunks = [h for h in pc.host_ops if "row_chunk" in h.attrs]
    assert chunks and not any("row_chunk" in h.attrs for h in pw.host_ops)

    def chunked_kind(k):  # row-wise ops and attention's per-token ops (tests/test_attn_chunks.py)
        return row_wise(k) or k.removeprefix("dequant+") in ROW_ATTENTION

    assert all(chunked_kind(h.kind) for h in chunks)
    assert not any("row_chunk" in h.attrs for h in pc.host_ops if not chunked_kind(h.kind))
    # every chunked op (name, kind) is covered by consecutive chunks of `rows` rows
    by_op: dict = {}
    for h in chunks:
        by_op.setdefault((h.name, h.kind), []).append(tuple(h.attrs["row_chunk"]))
    for spans in by_op.values():
        assert sorted(spans) == [(r, min(T, r + rows)) for r in range(0, T, rows)]
    # chunk costs add up to the whole op's (compiler.hostcost: its rows' share)
    from compiler.hostcost import host_cost

    whole = {(h.name, h.kind): host_cost(pw.tensors, h) for h in pw.host_ops}
    for key in by_op:
        f = sum(host_cost(pc.tensors, h)[0] for h in chunks if (h.name, h.kind) == key)
        assert f == pytest.approx(whole[key][0], rel=1e-9)
    # the same logits as the whole-op Program and PyTorch's int mode; then a decode step (not chunked)
    rc, rw = Runtime(pc), Runtime(pw)
    lc, _ = rc.run(pc, PROMPT)
    lw, _ = rw.run(pw, PROMPT)
    ref = m(torch.tensor(PROMPT)[None], mode="int")[0]
    assert torch.equal(lc, lw) and torch.equal(lc, ref)
    toks = PROMPT + [int(lc[-1].argmax())]
    dc, dw = cm.program(1, T), _whole(cm, 1, T, monkeypatch)
    assert np.array_equal(dc.words, dw.words) and not any("row_chunk" in h.attrs for h in dc.host_ops)
    l1, _ = rc.run(dc, toks[-1:])
    assert torch.equal(l1[-1], m(torch.tensor(toks)[None], mode="int")[0, -1])
    # overlapped: the chunked prefill step is shorter
    assert program_schedule(pc).length < program_schedule(pw).length
    # overlap off: no chunks
    from compiler import compile_model

    off = compile_model(m, dataclasses.replace(acfg, system=dataclasses.replace(acfg.system, overlap=False)))
    assert not any("row_chunk" in h.attrs for h in off.program(T, 0).host_ops)


def test_emission_order_keeps_every_dependency(compiled, monkeypatch):
    """compiler.chunks.pipeline_order's output: each item after every earlier item it conflicts with."""
    import compiler.lower

    _, _, cm = compiled
    seen = {}
    real = compiler.lower.pipeline_order

    def spy(acfg, items, tensors, io, host_cycles):
        out = real(acfg, items, tensors, io, host_cycles)
        seen.update(items=items, out=out, tensors=tensors, io=io)
        return out

    monkeypatch.setattr(compiler.lower, "pipeline_order", spy)
    cm.program(len(PROMPT), 0)
    items, out = seen["items"], seen["out"]
    assert sorted(map(id, items)) == sorted(map(id, out)) and len(out) == len(items)
    assert [id(b) for b in items] != [id(b) for b in out]  # it did reorder
    pos = {id(it): k for k, it in enumerate(out)}
    preds = dependencies(items, seen["tensors"], seen["io"])
    for j, p in enumerate(preds):
        for i in p:
            assert pos[id(items[i])] < pos[id(items[j])], (items[i], items[j])
    eng = [id(it) for it in items if it[0] != "host"]
    assert [id(it) for it in out if it[0] != "host"] == eng  # engine commands in their order (weight buffer)
    # pipelined: some row chunk is emitted before an engine command that came before it (it reads earlier rows)
    orig = {id(it): k for k, it in enumerate(items)}
    early = [
        it
        for k, it in enumerate(out)
        if it[0] == "host"
        and "row_chunk" in it[1].attrs
        and any(o[0] != "host" and orig[id(o)] < orig[id(it)] for o in out[k + 1 :])
    ]
    assert early


def test_no_race_under_the_overlapped_schedule(compiled):
    """Brute force over the chunked Program: every pair of conflicting commands (byte ranges, rows of row
    chunks) is ordered by the top level's schedule (the later dispatches after the earlier is done); and
    executing the commands in the order they finish gives the same logits as Program order."""
    from sim.runtime import execute

    _, acfg, cm = compiled
    p = cm.program(len(PROMPT), 0)
    cmds = p.commands()
    idx, s, pairs = overlapped_pairs(p, acfg)
    assert len(pairs) > 0
    # run in finish order: a host chunk that overlaps an engine command may run entirely before it
    order = sorted(idx, key=lambda i: (s.done[i], i))
    assert order != idx
    body = [cmds[i] for i in order]
    words = np.array([w for c in body for w in c.words()], dtype=np.uint64)
    p2 = dataclasses.replace(p, words=words)
    assert np.array_equal(execute(p2, PROMPT)[0].numpy(), execute(p, PROMPT)[0].numpy())
    assert any(isinstance(cmds[i], HostCommand) and "row_chunk" in p.host_ops[cmds[i].op].attrs for i in idx)


def test_host_op_cost(repo, compiled):
    """device.host_op_us: a fixed time per host op (default 0: every existing figure unchanged), listed among
    the estimate's assumptions; configs/kv260.yaml states 2 µs with a range."""
    from compiler.hostcost import host_seconds
    from tritium.estimate import assumptions

    _, acfg, cm = compiled
    assert acfg.device.host_op_us == 0.0
    p = cm.program(len(PROMPT), 0)
    h = next(h for h in p.host_ops if "row_chunk" in h.attrs)
    more = dataclasses.replace(acfg, device=dataclasses.replace(acfg.device, host_op_us=5.0))
    s0, b0 = host_seconds(acfg, p.tensors, h)
    s1, b1 = host_seconds(more, p.tensors, h)
    assert b0 == b1 and s1 - s0 == pytest.approx(5e-6, rel=1e-9)
    kv = load_config(repo / "configs" / "kv260.yaml")
    a = {e["name"]: e for e in assumptions(kv)}["device.host_op_us"]
    assert a["value"] == 2.0 and a["kind"] == "assumption" and a["range"] == [0.5, 10.0]


@pytest.mark.verilator
def test_top_chunked_prefill_cycle_exact(repo):
    """One decoder layer of the tiny model, a 12-token prompt (host ops in row chunks of 9 rows: 9 + 3) and
    one decode step through the RTL top level with overlap on configs/small-g2-half.yaml (the build
    tests/test_overlap.py uses): logits bit-exact, every command's cycles and each step's cycles RTL = model."""
    from conftest import top_one_layer

    from compiler import compile_model

    acfg = _overlap(load_config(repo / "configs" / "small-g2-half.yaml"))
    prompt = b"import os, x"
    prog = compile_model(_tiny(repo, 1), acfg).program(len(prompt), 0)
    assert {tuple(h.attrs["row_chunk"]) for h in prog.host_ops if "row_chunk" in h.attrs} == {(0, 9), (9, 12)}
    rep = top_one_layer(acfg, prompt, 2)
    assert rep.overlap and rep.rtl_step_cycles == rep.model_step_cycles
    assert rep.rtl_step_cycles[0] < sum(rep.rtl_cycles[0])
