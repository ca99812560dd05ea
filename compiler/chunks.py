"""Row-chunked host ops and their emission order for an overlapped prefill (``system.overlap``; docs/design.md,
"Top level overlap").

A prefill's row-wise host ops — output row i depends on input row i only: ``rmsnorm(+quant)``, ``quant``,
``add``, ``swiglu``/``relu2(+quant)``, ``dequant`` and their ``dequant+<kind>`` forms — each read all T rows
of a tensor that the TLMM writes in token chunks, so unsplit each waits for a projection's last TLMM command
and the next projection waits for it. :func:`split_host_ops` cuts each into row chunks (``attrs["row_chunk"] =
[r0, r1]``, a multiple of ``tlmm.tokens`` rows each, :func:`host_chunk_rows`); the executor runs a chunk on
its rows with the same numerics, compiler.hostcost costs its rows' share, compiler.schedule reads and writes
its rows only. :func:`pipeline_order` then re-emits the plan's items in an order the in-order top level
overlaps: a list schedule over the items' data dependencies (read-after-write, write-after-read and
write-after-write on tensors and rows), engine commands in their original order (the weight buffer's
fill/reuse), each step emitting whichever of the next engine command and the first ready host op would be
dispatched first under the top level's rules (sim/top_model.py), with modeled durations; among ready host
ops, the one the earliest engine command waits for. Attention's per-token host ops (:data:`ROW_ATTENTION`:
``attn_prep``, ``attn_out``) are chunked too, by rows of their per-token tensors (:func:`token_tensors`),
every other tensor of theirs read and written whole; the softmax, embed and LM-head host ops are left whole.
Decode steps (one token) and overlap-off Programs are not touched.
"""

from __future__ import annotations

import heapq
import math

from hw.config import AcceleratorConfig
from hw.program import DEQUANT_PREFIX, HostOp, tlmm_wgt_beat_bytes

__all__ = [
    "ROW_WISE",
    "MAX_HOST_CHUNKS",
    "MIN_CHUNK_ROWS",
    "ROW_ATTENTION",
    "row_wise",
    "row_attention",
    "token_tensors",
    "host_chunk_rows",
    "split_host_ops",
    "dependencies",
    "pipeline_order",
]

#: Host-op kinds whose output row i depends on input row i only (with a ``dequant+`` prefix too).
ROW_WISE = frozenset(
    {"rmsnorm", "rmsnorm+quant", "quant", "add", "swiglu", "swiglu+quant", "relu2", "relu2+quant", "dequant"}
)
#: Attention host ops whose work is per token (row) as well: ``attn_prep`` (RoPE at each token's position, int8
#: quantization per token and head, the token's K/V cache columns and scales) and ``attn_out`` (each token's
#: P·V rows times its P scales). Their other tensors (the Q·Kᵀ A panels, the per-head scales ``sq``, the KV
#: cache) are not laid out by token row: a chunk reads and writes them whole (compiler.schedule: conservative
#: SYNC ranges) and the executor updates only its tokens' entries in them.
ROW_ATTENTION = frozenset({"attn_prep", "attn_out"})
#: At most this many row chunks per host op: each chunk pays ``device.host_op_us`` and a SYNC or two, and
#: the part that cannot overlap (the last chunk's host time) shrinks as 1 / chunks (BitNet-0.7B on kv260,
#: prompt 128, host_op_us 2, modeled TTFT: 4 chunks 395 ms, 8 386 ms, 16 383 ms, 32 383 ms).
MAX_HOST_CHUNKS = 16
#: At least this many rows per chunk: a few rows of host work are dominated by the op's fixed costs (its
#: dispatch, a SYNC, cache misses on the first rows), so short prompts keep whole host ops.
MIN_CHUNK_ROWS = 8


def row_wise(kind: str) -> bool:
    return kind.removeprefix(DEQUANT_PREFIX) in ROW_WISE


def row_attention(kind: str) -> bool:
    """An attention host op chunked by its per-token tensors (:data:`ROW_ATTENTION`, ``dequant+`` forms too)."""
    return kind.removeprefix(DEQUANT_PREFIX) in ROW_ATTENTION


def token_tensors(h: HostOp, tensors: dict) -> set[str]:
    """The tensors of row chunk ``h`` indexed by token row (row i = token i): a chunk reads / writes rows r0..r1
    of these, every other tensor whole. A row-wise op: its rows-layout and TLMM-result tensors; ``attn_prep``:
    its inputs (q, k, v or their TLMM results, the activation scales); ``attn_out``: its output."""
    if row_attention(h.kind):
        names = h.inputs if h.kind.endswith("attn_prep") else h.outputs[:1]
    else:
        names = [*h.inputs, *h.outputs]
    out = set()
    for v in names:
        t = tensors.get(v)  # (a step plan's table has no host constants)
        if t is not None and t.attrs.get("space") != "host" and (t.layout == "rows" or "parts" in t.attrs):
            out.add(v)
    return out


def host_chunk_rows(acfg: AcceleratorConfig, tokens: int) -> int:
    """Rows per host chunk of a ``tokens``-row step: the fewest whole TLMM token chunks (``tlmm.tokens`` rows)
    that hold :data:`MIN_CHUNK_ROWS` rows and keep a host op at :data:`MAX_HOST_CHUNKS` chunks or fewer (a
    step of at most that many rows keeps whole host ops)."""
    per = acfg.tlmm.tokens
    groups = math.ceil(tokens / per)
    return per * max(math.ceil(groups / MAX_HOST_CHUNKS), math.ceil(MIN_CHUNK_ROWS / per))


def _chunkable(h: HostOp, tensors: dict, T: int) -> bool:
    """Every device tensor ``h`` reads or writes holds one row per token (rows layout, T rows; a TLMM result
    of T rows; or a TLMM activation stream of one token chunk)."""
    if row_attention(
        h.kind
    ):  # attention: its per-token tensors hold T rows; no KV retrieval (its pages, lists)
        return (
            "resv" not in h.attrs
            and h.attrs.get("tokens") == T
            and _rows_ok(token_tensors(h, tensors), tensors, T)
        )
    if not row_wise(h.kind):
        return False
    return _rows_ok(list(h.inputs) + list(h.outputs), tensors, T)


def _rows_ok(names, tensors: dict, T: int) -> bool:
    for v in names:
        t = tensors.get(v)
        if t is None or t.attrs.get("space") == "host":
            return False
        if t.layout == "tlmm_act":
            continue
        if t.layout != "rows" or not t.shape or t.shape[0] != T:
            return False
        if "parts" not in t.attrs and t.nbytes != math.prod(t.shape) * _ITEMSIZE.get(t.dtype, 0):
            return False  # row i at bytes i·row .. (i+1)·row (compiler.schedule's row ranges)
    return True


_ITEMSIZE = {"float32": 4, "int32": 4, "float16": 2, "int8": 1}


def split_host_ops(items: list, tensors: dict, T: int, rows: int) -> list:
    """``items`` (a StepPlan's) with each row-wise host op of a T-row step cut into chunks of ``rows`` rows
    (``rows`` a multiple of ``tlmm.tokens``, so every activation-stream tensor lies in one chunk): a chunk
    keeps the op's name, kind, inputs and attrs plus ``attrs["row_chunk"]``, and writes only its rows' activation
    streams."""
    if rows >= T:
        return list(items)
    out = []
    for kind, body in items:
        if kind != "host" or not _chunkable(body, tensors, T):
            out.append((kind, body))
            continue
        # each output's row window once (an activation stream's token chunk; None: every row)
        wins = []
        for v in body.outputs:
            t = tensors.get(v)  # (persistent tensors, e.g. the KV cache, are not in a step plan's table)
            act = t is not None and t.layout == "tlmm_act"
            wins.append((v, (t.attrs["m0"], t.attrs["m0"] + t.attrs["m"]) if act else None))
        for r0 in range(0, T, rows):
            r1 = min(T, r0 + rows)
            outs = [v for v, w in wins if w is None or (w[0] < r1 and w[1] > r0)]
            attrs = {**body.attrs, "row_chunk": [r0, r1]}
            out.append(("host", HostOp(body.name, body.kind, list(body.inputs), outs, attrs, body.where)))
    return out


# ---- dependencies -------------------------------------------------------------------------------------

_ALL = (0, 1 << 62)


def _accesses(item, tensors: dict, io, parts: dict | None = None) -> list[tuple[str, int, int, bool]]:
    """(tensor, first row, end row, is write) of everything an item touches; whole tensors span all rows.
    ``parts``: a cache of each TLMM result's (part, first row, end row)."""
    kind, body = item
    out = []
    rows = body.attrs.get("row_chunk") if kind == "host" else None
    if rows is None:
        ins, outs = io(item)
        out += [(v, *_ALL, False) for v in ins]
        out += [(v, *_ALL, True) for v in outs]
        return out
    r0, r1 = rows
    tok = token_tensors(body, tensors) if row_attention(body.kind) else None
    for v, w in [(v, False) for v in body.inputs] + [(v, True) for v in body.outputs]:
        if tok is not None and v not in tok:  # an attention chunk's other tensors: whole
            out.append((v, *_ALL, w))
            continue
        t = tensors[v]
        if "parts" in t.attrs:  # a TLMM result: the token-chunk parts that hold these rows
            win = None if parts is None else parts.get(v)
            if win is None:
                win = [
                    (p, tensors[p].attrs["m0"], tensors[p].attrs["m0"] + tensors[p].attrs["m"])
                    for p in t.attrs["parts"]
                ]
                if parts is not None:
                    parts[v] = win
            out += [(p, *_ALL, w) for p, a, b in win if a < r1 and b > r0]
        elif t.layout == "rows":
            out.append((v, r0, r1, w))
        else:
            out.append((v, *_ALL, w))
    return out


def dependencies(items: list, tensors: dict, io) -> list[set[int]]:
    """For each item, the earlier items it must follow: a read after an overlapping write, a write after an
    overlapping read or write (rows of the same tensor overlap when their row intervals do)."""
    writes: dict[str, list] = {}
    reads: dict[str, list] = {}
    preds: list[set[int]] = []
    parts: dict = {}
    for j, item in enumerate(items):
        p: set[int] = set()
        acc = _accesses(item, tensors, io, parts)
        for v, a, b, w in acc:
            for a2, b2, i in writes.get(v, ()):
                if a < b2 and a2 < b:
                    p.add(i)
            if w:
                for a2, b2, i in reads.get(v, ()):
                    if a < b2 and a2 < b:
                        p.add(i)
        for v, a, b, w in acc:
            (writes if w else reads).setdefault(v, []).append((a, b, j))
        p.discard(j)
        preds.append(p)
    return preds


# ---- the list schedule --------------------------------------------------------------------------------


def _duration(acfg: AcceleratorConfig, item, tensors: dict, host_cycles) -> float:
    """An item's modeled cycles for ordering only (the Program's timing comes from the cycle models): a TLMM
    command's lookups or its weight stream, a GEMM's tile steps, a host op's compiler.hostcost latency."""
    kind, body = item
    if kind == "host":
        try:
            return float(host_cycles(acfg, tensors, body))
        except (KeyError, IndexError, TypeError):
            return 1.0
    if kind == "tlmm":
        t = acfg.tlmm
        kc, nb, m = body["k_chunks"], body["n_blocks"], body["tokens"]
        stream = 0 if body["wbuf"] == 2 else kc * nb * tlmm_wgt_beat_bytes(t) / acfg.memory.bus_bytes
        return float(max(kc * nb * m, stream))
    if kind in ("gemm", "gemm_list"):
        geo = acfg.gemm_geometry
        mt = math.ceil(body["m"] / geo.rows)
        nt = math.ceil(body["n"] / geo.cols)
        kt = math.ceil(body["k"] / geo.k_tile)
        return float(mt * nt * kt * geo.k_tile)
    return 1.0


def pipeline_order(acfg: AcceleratorConfig, items: list, tensors: dict, io, host_cycles) -> list:
    """``items`` re-ordered for the overlapping top level (module doc): every dependency of
    :func:`dependencies` kept, engine items in their original order."""
    n = len(items)
    preds = dependencies(items, tensors, io)
    engine = [i for i, (k, _) in enumerate(items) if k != "host"]
    for a, b in zip(engine, engine[1:], strict=False):
        preds[b].add(a)
    succs: list[list[int]] = [[] for _ in range(n)]
    for j, p in enumerate(preds):
        for i in p:
            succs[i].append(j)
    left = [len(p) for p in preds]
    dur = [_duration(acfg, it, tensors, host_cycles) for it in items]
    finish = [0.0] * n
    ready_at = [0.0] * n  # the latest finish among an item's predecessors, once they are all emitted
    # a ready host op's priority: the first engine command that waits for it (directly or through other host
    # ops), then its index — so a chunk feeding the next engine command goes before chunks of a later op
    # (attn_out's chunk 0, then o_proj's quant chunk 0, before attn_out's chunk 1)
    need = [n] * n
    for j in range(n - 1, -1, -1):
        nj = j if items[j][0] != "host" else n
        for s in succs[j]:
            if need[s] < nj:
                nj = need[s]
        need[j] = nj
    ready_host: list[tuple[int, int]] = [
        (need[j], j) for j in range(n) if left[j] == 0 and items[j][0] == "host"
    ]
    heapq.heapify(ready_host)
    eng_pos = 0
    issue = 0.0
    free = {"engine": 0.0, "host": 0.0}
    order: list[int] = []

    def dispatch(j: int, res: str) -> float:
        return max(issue, free[res], ready_at[j])

    while len(order) < n:
        cands = []
        if eng_pos < len(engine) and left[engine[eng_pos]] == 0:
            j = engine[eng_pos]
            cands.append((dispatch(j, "engine"), j, "engine"))
        if ready_host:
            j = ready_host[0][1]
            cands.append((dispatch(j, "host"), j, "host"))
        if not cands:
            raise RuntimeError("pipeline_order: a dependency cycle (a bug)")
        d, j, res = min(cands)
        if res == "engine":
            eng_pos += 1
        else:
            heapq.heappop(ready_host)
        issue = d
        finish[j] = d + dur[j]
        free[res] = finish[j]
        order.append(j)
        f = finish[j]
        for s in succs[j]:
            left[s] -= 1
            if f > ready_at[s]:
                ready_at[s] = f
            if left[s] == 0 and items[s][0] == "host":
                heapq.heappush(ready_host, (need[s], s))
    return [items[j] for j in order]
