"""Decode attention against its DRAM floor (modeled): per context, the time of one decode step's attention
GEMMs (the commands whose B operand is the KV cache) and the time to read the KV cache once at the
accelerator's bandwidth (min(port, shared DRAM)), plus the whole decode rate of ``tritium estimate``.

Run from the repository root::

    python examples/attention_floor.py [--model bitnet-0.7b] [--config configs/kv260.yaml] [--context 128 1024]

Every figure is modeled: GEMM cycles from ``sim.gemm_model.gemm_fast`` (equal to the stepped model, which is
co-simulated cycle-exact against the RTL), each command bounded below by its bytes through the shared DRAM,
as ``tritium estimate`` costs it.
"""

from __future__ import annotations

import math

from _common import workload_parser  # examples/_common.py (puts the checkout on sys.path)

from compiler import compile_model, load_model
from hw.config import load_config
from hw.isa import GemmCommand
from sim.gemm_model import gemm_fast
from tritium.estimate import estimate


def attention_seconds(prog, acfg) -> tuple[float, int]:
    """Seconds of the GEMM commands that read the KV cache, and their count."""
    geo, f = acfg.gemm_geometry, acfg.clock_mhz * 1e6
    dram = acfg.device.dram_gbs * 1e9 / f  # bytes per cycle
    spans = [
        (t.addr, t.addr + -(-t.nbytes // acfg.memory.bus_bytes))
        for name, t in prog.tensors.items()
        if name.startswith("kv") and t.layout == "gemm_b"
    ]
    cycles, n = 0, 0
    for c in prog.commands():
        if isinstance(c, GemmCommand) and any(lo <= c.b_base < hi for lo, hi in spans):
            g = gemm_fast(acfg, c)
            nbytes = (g.events["read_beats"] + g.events["write_beats"]) * geo.bus_bytes
            cycles += max(g.cycles, math.ceil(nbytes / dram))
            n += 1
    return cycles / f, n


def main() -> None:
    a = workload_parser(__doc__).parse_args()
    acfg = load_config(a.config)
    cm = compile_model(load_model(a.model, device="meta"), acfg)
    mc = cm.lowering.mc
    hd = mc["d_model"] // mc["n_heads"]
    port = min(
        acfg.memory.bus_bytes / acfg.memory.beat_interval * acfg.clock_mhz * 1e6, acfg.device.dram_gbs * 1e9
    )
    print(f"{a.model} on {acfg.name} (modeled)")
    for ctx in a.context:
        s, n = attention_seconds(cm.program(1, ctx - 1, logits="last"), acfg)
        kv = 2 * mc["n_layers"] * ctx * mc["n_kv_heads"] * hd  # int8 K and V of every layer
        floor = kv / port
        r = estimate(a.model, acfg, a.prompt, ctx)
        print(
            f"context {ctx}: decode attention {s * 1e3:.2f} ms/token in {n} GEMM commands; DRAM floor "
            f"{floor * 1e3:.2f} ms ({kv / 1e6:.1f} MB at {port / 1e9:.1f} GB/s), {s / floor:.2f}x; "
            f"decode {r['decode_tokens_per_s']:.2f} tokens/s"
        )


if __name__ == "__main__":
    main()
