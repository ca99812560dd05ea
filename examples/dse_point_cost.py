"""What one overlapped DSE point costs to evaluate (docs/dse.md, "Overlapped points"): the evaluator of
``tritium dse`` on a config with ``system.overlap`` (configs/kv260.yaml ships with it), timed on points that
differ from the base only in timing fields (their step Programs come from the compile-key cache) and on points
with a new compile key (the model is lowered again from its captured graph). Prints the median wall and CPU
seconds per point and the last point's figures. The figures are MODELED; the times are measured.

Run from the repository root::

    python examples/dse_point_cost.py --model bitnet-0.7b --config configs/kv260.yaml --prompt 128 --context 1024
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from _common import workload_parser  # examples/_common.py (puts the checkout on sys.path)

from hw.config import load_config  # noqa: E402
from tritium.dse import PROGRAM_STATS, FastEvaluator, build_workload  # noqa: E402


def main() -> None:
    args = workload_parser(__doc__, contexts=(1024,)).parse_args()
    if len(args.context) != 1:
        raise SystemExit("--context: one context")
    base = load_config(args.config)
    base = dataclasses.replace(base, system=dataclasses.replace(base.system, overlap=True))
    ev = FastEvaluator(build_workload(args.model, args.prompt, args.context[0], base))
    ev.estimate(base)  # the base point: capture, lowering, numba warm-up

    def var(section: str, **fields):
        return dataclasses.replace(base, **{section: dataclasses.replace(getattr(base, section), **fields)})

    def run(label: str, points: list) -> None:
        wall, cpu = [], []
        for acfg in points:
            t, c = time.perf_counter(), time.process_time()
            r = ev.estimate(acfg)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        print(
            f"{label}: median {statistics.median(wall):.3f} s wall, {statistics.median(cpu):.3f} s CPU per point "
            f"({len(points)} points; last: {r['decode_tokens_per_s']:.2f} tok/s, TTFT {r['ttft_s']:.4f} s, modeled)"
        )

    lat = base.memory.latency
    run(
        "timing-only points (memory.latency, device.host_gflops, gemm.buffers)",
        [var("memory", latency=lat + d) for d in (-10, 10, 20, 30)]
        + [var("device", host_gflops=g) for g in (4.0, 12.0)]
        + [var("gemm", buffers=2 if base.gemm.buffers != 2 else 4)],
    )
    t = base.tlmm
    run(
        "new compile keys (tlmm.tokens, tlmm.weight_buffer_beats, gemm.rows)",
        [
            var("tlmm", tokens=8 if t.tokens != 8 else 2),
            var("tlmm", weight_buffer_beats=2048 if t.weight_buffer_beats != 2048 else 4096),
            var("tlmm", weight_buffer_beats=0 if t.weight_buffer_beats else 1024),
            var("gemm", rows=base.gemm.rows * 2),
            var("gemm", rows=max(1, base.gemm.rows // 2)),
        ],
    )
    print(
        f"{ev.scheduled_points} overlapped points; step Programs from the compile-key cache: "
        f"{PROGRAM_STATS['hit']}, lowered: {PROGRAM_STATS['miss']}"
    )


if __name__ == "__main__":
    main()
