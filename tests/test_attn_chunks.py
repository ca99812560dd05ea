"""Row-chunked attention host ops in an overlapped prefill (compiler/chunks.py ROW_ATTENTION; docs/design.md,
"Compiler"): ``attn_prep`` and ``attn_out`` cut into chunks of token rows compute the same logits bit for bit
as the whole ops and as PyTorch — prompts not a multiple of the chunk, a second prefill step at pos > 0, then
decode — keep every dependency under the top level's overlapped schedule, cost their tokens' share, and leave
decode steps and overlap-off Programs unchanged."""

import dataclasses

import numpy as np
import pytest
from conftest import REPO, overlapped_pairs

from compiler.chunks import ROW_ATTENTION, host_chunk_rows, token_tensors
from hw.config import load_config
from hw.isa import HostCommand

pytestmark = pytest.mark.torch

TOKENS = [3, 17, 40, 8, 61, 5, 9, 22, 30, 14, 2, 44, 7, 19, 11, 28, 36, 50, 6, 12, 33, 1, 27, 4, 58, 10, 21]
TOKENS += [45, 13, 52, 24, 39, 16]  # 33: two prefill steps and a decode step's token
T1, T2 = 19, 13  # two prefill steps (19 and 13 rows: neither a multiple of the chunk), then decode


def _overlap(acfg, on=True):
    return dataclasses.replace(acfg, system=dataclasses.replace(acfg.system, overlap=on))


def _tiny(layers=2):
    from compiler import load_model
    from sim.cosim import truncated_model

    return truncated_model(load_model(str(REPO / "models" / "checkpoints" / "tiny.pt")), layers)


@pytest.fixture(scope="module")
def compiled():
    from compiler import compile_model

    acfg = _overlap(load_config(REPO / "configs" / "default.yaml"))
    m = _tiny()
    return m, acfg, compile_model(m, acfg)


def _whole(cm, T, pos, monkeypatch):
    """The same step without row chunks."""
    import compiler.lower

    with monkeypatch.context() as mp:
        mp.setattr(compiler.lower, "host_chunk_rows", lambda acfg, tokens: tokens)
        return cm.program(T, pos)


def _attn_chunks(p):
    return [
        h for h in p.host_ops if "row_chunk" in h.attrs and h.kind.removeprefix("dequant+") in ROW_ATTENTION
    ]


@pytest.mark.parametrize("T,pos", [(T1, 0), (T2, T1)])
def test_attention_chunks_cover_every_token_and_cost_their_share(compiled, monkeypatch, T, pos):
    from compiler.hostcost import host_cost

    _, acfg, cm = compiled
    p, pw = cm.program(T, pos), _whole(cm, T, pos, monkeypatch)
    rows = host_chunk_rows(acfg, T)
    assert rows < T and T % rows  # the last chunk is short
    chunks = _attn_chunks(p)
    kinds = {h.kind.removeprefix("dequant+") for h in chunks}
    assert kinds == {"attn_prep", "attn_out"}
    by_op: dict = {}
    for h in chunks:
        by_op.setdefault((h.name, h.kind), []).append(tuple(h.attrs["row_chunk"]))
    assert len(by_op) == 2 * 2  # prep and out of each of the 2 layers
    for spans in by_op.values():
        assert sorted(spans) == [(r, min(T, r + rows)) for r in range(0, T, rows)]
    whole = {(h.name, h.kind): host_cost(pw.tensors, h) for h in pw.host_ops}
    for key in by_op:
        for i in (0, 1):  # flops and bytes: the chunks' add up to the whole op's
            s = sum(host_cost(p.tensors, h)[i] for h in chunks if (h.name, h.kind) == key)
            assert s == pytest.approx(whole[key][i], rel=1e-9)
    # the per-token tensors: prep's q/k/v (or their TLMM results) and scales; out's output — never the
    # per-head scales or the KV cache, which a chunk reads and writes whole
    for h in chunks:
        tok = token_tensors(h, p.tensors)
        assert tok and all(p.tensors[v].shape[0] == T for v in tok)
        assert not any(v.startswith("kv") or v.endswith((".sq", ".sp")) for v in tok)
    # softmax stays whole per KV-head group
    assert not any("row_chunk" in h.attrs for h in p.host_ops if h.kind == "attn_softmax")


def test_bit_identical_two_prefill_steps_then_decode(compiled, monkeypatch):
    """Chunked Programs on one persistent image: prefill 19 tokens, prefill 13 more at pos 19, one decode
    step — logits equal the whole-op Programs' and PyTorch's int mode at every step."""
    import torch

    from sim.runtime import Runtime

    m, _, cm = compiled
    ref = m(torch.tensor(TOKENS[: T1 + T2])[None], mode="int")[0]
    steps = [(T1, 0), (T2, T1)]
    pc = [cm.program(T, pos) for T, pos in steps]
    pw = [_whole(cm, T, pos, monkeypatch) for T, pos in steps]
    assert all(_attn_chunks(p) for p in pc) and not any(_attn_chunks(p) for p in pw)
    rc, rw = Runtime(pc[0]), Runtime(pw[0])
    for (T, pos), a, b in zip(steps, pc, pw, strict=True):
        toks = TOKENS[pos : pos + T]
        lc, _ = rc.run(a, toks)
        lw, _ = rw.run(b, toks)
        assert torch.equal(lc, lw) and torch.equal(lc, ref[pos : pos + T]), (T, pos)
    n = T1 + T2
    nxt = int(lc[-1].argmax())
    dc, dw = cm.program(1, n), _whole(cm, 1, n, monkeypatch)
    assert np.array_equal(dc.words, dw.words) and not any("row_chunk" in h.attrs for h in dc.host_ops)
    l1, _ = rc.run(dc, [nxt])
    assert torch.equal(l1[-1], m(torch.tensor(TOKENS[:n] + [nxt])[None], mode="int")[0, -1])


def test_overlap_off_and_decode_unchanged(compiled):
    from compiler import compile_model

    m, acfg, cm = compiled
    off = compile_model(m, _overlap(acfg, False))
    assert not any("row_chunk" in h.attrs for h in off.program(T1, 0).host_ops)
    assert not _attn_chunks(cm.program(1, T1))


@pytest.mark.parametrize("T,pos", [(T1, 0), (T2, T1)])
def test_no_race_under_the_overlapped_schedule(compiled, T, pos):
    """Brute force: every pair of conflicting commands (byte ranges; an attention chunk's per-token rows, the
    rest of its tensors whole) is ordered by the top level's schedule; and executing the commands in the order
    they finish gives the same logits as Program order (a second prefill step on the first step's image)."""
    from sim.runtime import Runtime, execute

    _, acfg, cm = compiled
    p = cm.program(T, pos)
    cmds = p.commands()
    idx, s, pairs = overlapped_pairs(p, acfg)

    def attn(i):
        c = cmds[i]
        return isinstance(c, HostCommand) and p.host_ops[c.op] in _attn_chunks(p)

    # some attention chunk runs beside an engine command
    assert len(pairs) > 0 and any(attn(i) or attn(j) for i, j in pairs)
    image = Runtime(cm.program(T1, 0)).image
    if pos:  # the second step runs on the first step's KV cache
        execute(cm.program(T1, 0), TOKENS[:T1], image)
    order = sorted(idx, key=lambda i: (s.done[i], i))
    assert order != idx
    body = [cmds[i] for i in order]
    words = np.array([w for c in body for w in c.words()], dtype=np.uint64)
    p2 = dataclasses.replace(p, words=words)
    toks = TOKENS[pos : pos + T]
    a = execute(p2, toks, _grown(image, p))[0]
    b = execute(p, toks, _grown(image, p))[0]
    assert np.array_equal(a.numpy(), b.numpy())


def _grown(image, prog):
    """A copy of ``image`` at least as long as ``prog``'s."""
    out = np.zeros((max(image.shape[0], prog.image.shape[0]), image.shape[1]), np.uint8)
    out[: image.shape[0]] = image
    return out


def test_shorter_prefill(compiled):
    """The attention chunks overlap the projections: the prefill step is shorter than with attention's host
    ops whole (the row-wise ops chunked in both)."""
    import compiler.chunks
    from sim.top_model import program_schedule

    _, _, cm = compiled
    p = cm.program(T1, 0)
    real = compiler.chunks.ROW_ATTENTION
    try:
        compiler.chunks.ROW_ATTENTION = frozenset()
        q = cm.program(T1, 0)
    finally:
        compiler.chunks.ROW_ATTENTION = real
    assert not _attn_chunks(q) and any("row_chunk" in h.attrs for h in q.host_ops)
    assert program_schedule(p).length < program_schedule(q).length


@pytest.mark.verilator
def test_top_attention_chunks_cycle_exact(repo):
    """One decoder layer of the tiny model, a 14-token prompt (attention's prep and out in row chunks of 9
    rows: 9 + 5) and one decode step through the RTL top level with overlap on configs/small-g2-half.yaml:
    logits bit-exact, every command's cycles and each step's cycles RTL = model."""
    from conftest import top_one_layer

    from compiler import compile_model

    acfg = _overlap(load_config(repo / "configs" / "small-g2-half.yaml"))
    prompt = b"def f(x): y, z"
    prog = compile_model(_tiny(1), acfg).program(len(prompt), 0)
    spans = {(h.kind.removeprefix("dequant+"), tuple(h.attrs["row_chunk"])) for h in _attn_chunks(prog)}
    assert spans == {(k, r) for k in ("attn_prep", "attn_out") for r in ((0, 9), (9, 14))}
    rep = top_one_layer(acfg, prompt, 2)
    assert rep.overlap and rep.rtl_step_cycles == rep.model_step_cycles
    assert rep.rtl_step_cycles[0] < sum(rep.rtl_cycles[0])
