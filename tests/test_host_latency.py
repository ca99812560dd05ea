"""One host latency: every host op of a compiled Program carries ``attrs["cycles"]`` (compiler.hostcost, what the
RTL top bench and sim/top_model.py wait), and ``tritium estimate`` (cost_program) charges the same op
``time_s`` seconds; the two must be the one definition: ``cycles == max(1, ceil(time_s · clock))``.

An attention's prep, softmax and out host ops once shared one attrs dict, so all three carried attn_out's
latency and the cycle model's decode step at context 1024 was 2 ms short of the estimate (BitNet-0.7B, kv260)."""

import math

import pytest

pytest.importorskip("torch", reason="[torch] PyTorch is not installed (the ml extra)")

from compiler import compile_model, load_model
from compiler.hostcost import host_cycles
from hw.config import config_from_dict, load_config
from hw.isa import HostCommand, SyncCommand
from sim.top_model import run_cycles
from tritium.estimate import cost_program

pytestmark = pytest.mark.torch


def _host_pairs(prog, acfg):
    """(host op, the estimate's seconds for it) for every HOST command of ``prog``, in order."""
    recs: list = []
    cost_program(prog, acfg, records=recs)
    cmds = [c for c in prog.commands() if not isinstance(c, SyncCommand)]  # a SYNC has no record
    assert len(cmds) == len(recs)
    return [
        (c, prog.host_ops[c.op], r["time_s"])
        for c, r in zip(cmds, recs, strict=True)
        if isinstance(c, HostCommand)
    ]


@pytest.mark.parametrize(
    "config, overlap", [("default.yaml", False), ("kv260.yaml", False), ("kv260.yaml", True)]
)
def test_stored_host_cycles_are_the_estimates_host_time(repo, config, overlap):
    d = load_config(repo / "configs" / config).to_dict()
    d["system"]["overlap"] = overlap  # overlap splits the softmax per KV group (its own attrs)
    acfg = config_from_dict(d, config)
    f = acfg.clock_mhz * 1e6
    cm = compile_model(load_model(str(repo / "models" / "checkpoints" / "tiny.pt"), device="meta"), acfg)
    ctx = min(48, cm.graph.model_config["max_seq"])
    prog = cm.program(1, ctx - 1, logits="last")  # a decode step at a context > 0
    pairs = _host_pairs(prog, acfg)
    kinds = {op.kind.removeprefix("dequant+") for _, op, _ in pairs}  # q/k/v's dequant fused into attn_prep
    assert {"attn_prep", "attn_softmax", "attn_out"} <= kinds
    for cmd, op, s in pairs:
        stored = int(op.attrs["cycles"])
        assert stored == max(1, math.ceil(s * f - 1e-9)), (op.name, op.kind, stored, s * f)
        assert stored == host_cycles(acfg, prog.tensors, op)
        assert run_cycles(acfg, cmd, prog.host_ops) == stored  # the top model waits the stored latency
    # the ops of one attention keep their own latencies (a shared attrs dict gave them all attn_out's)
    by_kind = {}
    for _, op, _ in pairs:
        if op.attrs.get("layer") == 0:
            by_kind.setdefault(op.kind, op.attrs["cycles"])
    assert by_kind["attn_softmax"] != by_kind["attn_out"]
    ids = [id(op.attrs) for _, op, _ in pairs]
    assert len(set(ids)) == len(ids)
