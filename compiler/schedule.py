"""Explicit dependencies for overlapped dispatch (``system.overlap``; docs/design.md, "Top level" and
"Compiler"): which memory ranges each command reads and writes, and the SYNC commands a Program needs.

The top level's overlapping decoder issues commands in order and dispatches each as soon as its engine is
free; TLMM and GEMM share the memory port, so at most one of them is in flight, and host ops run one at a
time beside it. So when a command is dispatched, every earlier command of its own class — and, for TLMM/GEMM,
of the other engine class — has finished: the only commands that can still run are the last engine command
(TLMM or GEMM) and the last host op. :func:`insert_syncs` checks a command's read and write ranges against
those two (RAW, WAR, WAW) and puts ``SYNC`` (the conflicting classes) in front of it when they overlap.
"""

from __future__ import annotations

from compiler.chunks import row_attention, token_tensors
from hw.config import AcceleratorConfig
from hw.isa import SYNC_GEMM, SYNC_HOST, SYNC_TLMM, GemmCommand, HostCommand, SyncCommand, TlmmCommand
from hw.program import tlmm_wgt_beat_bytes

__all__ = ["command_ranges", "insert_syncs", "with_syncs", "sync_class", "mask_names"]

Ranges = list[tuple[int, int]]  # [start, end) byte ranges


def sync_class(cmd) -> int:
    """The SYNC mask bit of a command's engine class."""
    if isinstance(cmd, TlmmCommand):
        return SYNC_TLMM
    if isinstance(cmd, GemmCommand):
        return SYNC_GEMM
    if isinstance(cmd, HostCommand):
        return SYNC_HOST
    raise TypeError(f"no engine class: {cmd!r}")


def mask_names(mask: int) -> str:
    return "|".join(n for b, n in ((SYNC_TLMM, "TLMM"), (SYNC_GEMM, "GEMM"), (SYNC_HOST, "HOST")) if mask & b)


def _tensor_ranges(
    tensors: dict, names: list[str], W: int, rows: list | None = None, tok: set | None = None
) -> Ranges:
    """Byte ranges of tensors ``names``; for a row chunk (``rows`` = [r0, r1], compiler.chunks) only those
    rows of its per-token tensors (``tok``; None: all of them): of a rows-layout tensor its rows' bytes, of a
    TLMM result the parts of its token chunks in them."""
    out = []
    for n in names:
        t = tensors[n]
        if t.attrs.get("space") == "host":  # host-side constants: not in the accelerator's memory
            continue
        r = rows if tok is None or n in tok else None
        if t.nbytes == 0 and "parts" in t.attrs:
            parts = list(t.attrs["parts"])
            if r:
                parts = [
                    p
                    for p in parts
                    if tensors[p].attrs["m0"] < r[1] and tensors[p].attrs["m0"] + tensors[p].attrs["m"] > r[0]
                ]
            out += _tensor_ranges(tensors, parts, W)
        elif t.nbytes > 0 and t.addr >= 0:
            a = t.addr * W
            if r and t.layout == "rows":
                row = t.nbytes // t.shape[0]
                out.append((a + r[0] * row, a + r[1] * row))
            else:
                out.append((a, a + t.nbytes))
    return out


def command_ranges(acfg: AcceleratorConfig, cmd, host_ops: list, tensors: dict) -> tuple[Ranges, Ranges]:
    """(reads, writes) of a command as byte ranges of the accelerator's memory: TLMM activations and packed
    weights / results, GEMM A and B panels / C tiles, a host op's input / output tensors (host-side
    constants excluded)."""
    W = acfg.memory.bus_bytes
    if isinstance(cmd, TlmmCommand):
        t = acfg.tlmm
        a = cmd.act_base * W
        w = cmd.wgt_base * W
        r = cmd.res_base * W
        return (
            [
                (a, a + cmd.k_chunks * cmd.tokens * t.chunk_k),
                (w, w + cmd.k_chunks * cmd.n_blocks * tlmm_wgt_beat_bytes(t)),
            ],
            [(r, r + cmd.n_blocks * cmd.tokens * t.columns * 4)],
        )
    if isinstance(cmd, GemmCommand):
        geo = acfg.gemm_geometry
        a, b, c = cmd.a_base, cmd.b_base, cmd.c_base
        return (
            [
                (a * W, (a + cmd.m_tiles * cmd.k_tiles * geo.a_beats) * W),
                (b * W, (b + cmd.b_span(geo.b_beats)) * W),
            ],
            [(c * W, (c + cmd.m_tiles * cmd.n_tiles * geo.out_beats(bool(cmd.requant))) * W)],
        )
    if isinstance(cmd, HostCommand):
        h = host_ops[cmd.op]
        rows = h.attrs.get("row_chunk")
        # attention chunks (compiler.chunks.row_attention): rows of their per-token tensors only, the rest whole
        tok = token_tensors(h, tensors) if rows and row_attention(h.kind) else None
        return (
            _tensor_ranges(tensors, list(h.inputs), W, rows, tok),
            _tensor_ranges(tensors, list(h.outputs), W, rows, tok),
        )
    raise TypeError(f"no ranges: {cmd!r}")


def _overlap(xs: Ranges, ys: Ranges) -> bool:
    return any(a0 < b1 and b0 < a1 for a0, a1 in xs for b0, b1 in ys)


def _conflict(first: tuple[Ranges, Ranges], then: tuple[Ranges, Ranges]) -> bool:
    """RAW, WAR or WAW between an earlier command's (reads, writes) and a later one's."""
    (r0, w0), (r1, w1) = first, then
    return _overlap(w0, r1) or _overlap(r0, w1) or _overlap(w0, w1)


def insert_syncs(
    acfg: AcceleratorConfig, commands: list, host_ops: list, tensors: dict
) -> list[tuple[int, int]]:
    """Where SYNCs go: ``(i, mask)`` for each command i that must wait for the classes in ``mask`` (the
    commands ``commands[i]`` conflicts with that may still run when it is dispatched; module doc)."""
    engine = None  # (class bit, ranges) of the last engine command not yet synced
    host = None  # ranges of the last host op not yet synced
    out = []
    for i, cmd in enumerate(commands):
        rng = command_ranges(acfg, cmd, host_ops, tensors)
        cls = sync_class(cmd)
        mask = 0
        if cls == SYNC_HOST:
            if engine is not None and _conflict(engine[1], rng):
                mask |= engine[0]
                engine = None
            host = rng
        else:
            if host is not None and _conflict(host, rng):
                mask |= SYNC_HOST
                host = None
            engine = (cls, rng)
        if mask:
            out.append((i, mask))
    return out


def with_syncs(commands: list, syncs: list[tuple[int, int]]) -> tuple[list, list[int]]:
    """``commands`` with ``SyncCommand(mask)`` before each command of ``syncs``; also the new index of every
    original command."""
    at = dict(syncs)
    out, index = [], []
    for i, c in enumerate(commands):
        if i in at:
            out.append(SyncCommand(at[i]))
        index.append(len(out))
        out.append(c)
    return out, index
