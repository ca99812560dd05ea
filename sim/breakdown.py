"""Per-layer and per-op-kind breakdowns of a step Program's commands (``tritium estimate --breakdown``,
``tritium cosim top --breakdown``).

Each command of a Program is labelled with the model op it was lowered from: HOST commands name their host
op; TLMM and GEMM commands are named in the Program's listing (``compiler/lower.py`` writes one line per
command, ``INDEX  KIND  OP ...``; the listing is part of the Program's content hash). From the op name:

- **layer**: ``layer N`` for ops under ``layers.N``, else the op's top-level module (``embed_tokens``,
  ``norm``, ``lm_head``);
- **op kind**: the engine and what runs on it: ``TLMM q_proj`` (the projection), ``GEMM qk`` / ``GEMM pv``
  (attention's Q·Kᵀ and P·V), ``HOST <host-op kind>`` (``HOST attn_softmax``, ``HOST dequant``, ...),
  ``SYNC`` (with ``system.overlap``: a wait, labelled with the layer of the command it comes before).

:func:`group` adds per-command figures up by either label, in first-seen order, so the rows of a grouping
always sum to the step's totals.
"""

from __future__ import annotations

import re

from hw.isa import GemmCommand, GemmListCommand, HostCommand, KvrCommand, SyncCommand, TlmmCommand

__all__ = ["command_labels", "layer_of", "op_kind", "group", "cosim_breakdown", "BOUNDS"]

BOUNDS = ("compute", "DRAM", "host")
"""What limits a command: the engine's compute (its own cycles), the DRAM (its bytes through the
accelerator's port or the shared DRAM), or the host CPU (a HOST op's flops or bytes)."""

_LINE = re.compile(r"^\s*(\d+)\s+(HOST|TLMM|GEMM|GEMLS|KVR|SYNC)\s+(\S+)")
_LAYER = re.compile(r"^layers\.(\d+)(?:\.|$)")
_ENGINE = {
    TlmmCommand: "TLMM",
    GemmCommand: "GEMM",
    GemmListCommand: "GEMLS",  # the listing's name of a GEMM_LIST
    KvrCommand: "KVR",
    HostCommand: "HOST",
    SyncCommand: "SYNC",
}


def layer_of(op: str) -> str:
    """``layer N`` for an op under ``layers.N``; otherwise the op's top-level module name."""
    m = _LAYER.match(op)
    return f"layer {m.group(1)}" if m else op.split(".")[0]


def op_kind(engine: str, op: str, host_kind: str | None = None) -> str:
    """``TLMM q_proj``, ``GEMM qk``, ``HOST rmsnorm+quant`` (see the module doc)."""
    if engine == "HOST":
        return f"HOST {host_kind}"
    if engine == "SYNC":  # a wait before the op it names (system.overlap)
        return "SYNC"
    parts = [p for p in op.split(".") if not p.isdigit()]
    what = re.sub(r"\d+$", "", parts[-1]) if parts else op
    if what == "gemm" and len(parts) > 1:  # an int8 linear's GEMM (the acc_int8 LM head, W8A8): its module
        what = re.sub(r"\d+$", "", parts[-2])
    return f"{engine} {what}"


def command_labels(prog, commands=None) -> list[tuple[str, str]]:
    """``(layer, op kind)`` of every command of ``prog`` (a :class:`hw.program.Program`), in order. Raises
    ValueError if the listing does not name every command with its engine (a listing not written by the
    compiler)."""
    cmds = prog.commands() if commands is None else commands
    named: dict[int, tuple[str, str]] = {}
    for line in prog.listing.splitlines():
        m = _LINE.match(line)
        if m:
            named[int(m.group(1))] = (m.group(2), m.group(3))
    out = []
    for i, c in enumerate(cmds):
        eng = _ENGINE[type(c)]
        got = named.get(i)
        if got is None or got[0] != eng:
            raise ValueError(f"Program listing: command {i} ({eng}) is not named in the listing")
        op = got[1]
        if eng == "HOST":
            h = prog.host_ops[c.op]
            op, kind = h.name, h.kind
            out.append((layer_of(op), op_kind(eng, op, kind)))
        else:
            out.append((layer_of(op), op_kind(eng, op)))
    return out


def group(records: list[dict], key: str, fields: tuple[str, ...], nested: tuple[str, ...] = ()) -> list[dict]:
    """Sum ``fields`` (numbers) and ``nested`` (dicts of numbers) of ``records`` by ``record[key]``; each row
    also counts its ``commands`` (a record stands for ``record["commands"]`` commands, default 1). Rows in
    first-seen order."""
    rows: dict[str, dict] = {}
    for r in records:
        row = rows.get(r[key])
        if row is None:
            row = rows[r[key]] = {"name": r[key], "commands": 0, **{f: 0 for f in fields}}
            row.update({n: {} for n in nested})
        row["commands"] += r.get("commands", 1)
        for f in fields:
            row[f] += r[f]
        for n in nested:
            for k, v in r[n].items():
                row[n][k] = row[n].get(k, 0) + v
    return list(rows.values())


def cosim_breakdown(labels: list, rtl_cycles: list, model_cycles: list, clock_mhz: float) -> dict:
    """Per-layer and per-op-kind cycles of a co-simulated run from the RTL's per-command counts
    (``tritium cosim top --breakdown``): ``prefill`` is step 0, ``decode`` every later step added up.
    ``labels``, ``rtl_cycles``, ``model_cycles``: per step, per command (a hung step has fewer RTL counts;
    its missing commands count 0 RTL cycles). Rows: commands, ``rtl_cycles``, ``model_cycles``, ``time_s``
    (RTL cycles at the config's clock); ``totals`` are the sums of the per-command counts."""
    f = clock_mhz * 1e6
    out = {}
    for label, steps in (("prefill", range(0, min(1, len(labels)))), ("decode", range(1, len(labels)))):
        recs = []
        for s in steps:
            rtl = list(rtl_cycles[s]) + [0] * (len(labels[s]) - len(rtl_cycles[s]))
            for (layer, kind), r, m in zip(labels[s], rtl, model_cycles[s], strict=True):
                recs.append(
                    {"layer": layer, "op_kind": kind, "rtl_cycles": r, "model_cycles": m, "time_s": r / f}
                )
        fields = ("rtl_cycles", "model_cycles", "time_s")
        out[label] = {
            "steps": len(steps),
            "by_layer": group(recs, "layer", fields),
            "by_op_kind": group(recs, "op_kind", fields),
            "totals": {
                "commands": len(recs),
                "rtl_cycles": sum(sum(rtl_cycles[s]) for s in steps),
                "model_cycles": sum(sum(model_cycles[s]) for s in steps),
                "time_s": sum(sum(rtl_cycles[s]) for s in steps) / f,
            },
        }
    return out
