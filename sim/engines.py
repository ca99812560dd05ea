"""The engine registry: one :class:`Engine` descriptor per engine, registered once.

An engine's verification side — its numba model, its cocotb bench, its case generators per workload and
its co-simulation runner — is named here, next to a pointer (``hardware``) to its hardware side in
:data:`hw.fpga.ENGINES` (the RTL component's factory, config section, shrink hints, board-top hints). The
CLI (``tritium cosim <engine>``, ``tritium bitstream --engine``), the co-simulation and ``tritium bench``
iterate this registry instead of naming engines.

Layering: hw/ never imports sim/, so the hardware facts stay in hw/fpga.py and this registry points at them
by name. Every reference is a lazy ``"module:attr"`` string: importing this module imports neither
Amaranth nor numba nor cocotb.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hw.lookup import lookup

__all__ = ["Engine", "ENGINES", "register", "engine", "cosim_engines", "board_engines", "load"]


def load(ref: str) -> Any:
    """The object a ``"package.module:attr"`` reference names (imported now)."""
    module_name, _, attr = ref.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Engine:
    """Everything the toolkit needs to co-simulate, benchmark and build one engine.

    * ``sections``: the config sections the engine reads (``hw/config.py``).
    * ``hardware``: its entry in :data:`hw.fpga.ENGINES` (RTL factory, shrink hints, board top); None for
      an engine without hardware of its own.
    * ``model``: the numba model's entry point; ``bench``: the cocotb bench module; ``cosim``: the runner
      ``(acfg, cases, build_root, quiet, waves=None) -> CosimReport``; ``cases``: the case generator
      ``(acfg, workload, seed, n_random) -> list`` for the names in ``workloads``.
    * ``stimulus``: ``"cases"`` (the runner takes generated cases) or ``"program"`` (the top level runs a
      compiled model; driven by ``tritium cosim top``'s own options).
    * ``summary``: one line describing the engine's geometry from ``CosimReport.config``; ``reference``:
      what the golden reference is; ``notes``: lines printed under the co-simulation summary.
    """

    name: str
    description: str
    sections: tuple[str, ...]
    hardware: str | None = None
    model: str | None = None
    bench: str | None = None
    cosim: str | None = None
    cases: str | None = None
    workloads: tuple[str, ...] = ()
    stimulus: Literal["cases", "program"] = "cases"
    summary: Callable[[dict], str] | None = None
    reference: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def cosimulated(self) -> bool:
        """The engine can be run by ``tritium cosim``."""
        return self.bench is not None

    def fpga(self):
        """Its :class:`hw.fpga.FpgaEngine` (imports Amaranth)."""
        if self.hardware is None:
            raise ValueError(f"engine {self.name!r} has no hardware entry in hw/fpga.py ENGINES")
        from hw.fpga import fpga_engine

        return fpga_engine(self.hardware)

    def rtl(self, acfg):
        """A fresh instance of the engine's RTL component for ``acfg``."""
        return self.fpga().component(acfg)

    def make_cases(self, acfg, workload: str, seed: int = 0, n_random: int = 4) -> list:
        """The cases of ``workload`` for ``acfg``; ValueError naming the workloads for an unknown one."""
        if self.cases is None or workload not in self.workloads:
            known = ", ".join(self.workloads) or "none"
            raise ValueError(f"engine {self.name}: no workload {workload!r} (workloads: {known})")
        return load(self.cases)(acfg, workload, seed, n_random)

    def run_cosim(self, acfg, cases: list, build_root: Path, quiet: bool = False, waves: str | None = None):
        """Run ``cases`` through reference, model and RTL; returns the runner's CosimReport. ``waves``
        ("fst"/"vcd"): trace every case into ``build/waves/<engine>/<case>.<fmt>`` (docs/waves.md)."""
        if self.cosim is None:
            raise ValueError(f"engine {self.name!r} has no co-simulation runner")
        return load(self.cosim)(acfg, cases, build_root=build_root, quiet=quiet, waves=waves)


#: Engine name → descriptor, in registration order.
ENGINES: dict[str, Engine] = {}


def register(e: Engine) -> Engine:
    """Add ``e`` to the registry (once per name)."""
    if e.name in ENGINES:
        raise ValueError(f"engine {e.name!r} registered twice (sim/engines.py)")
    ENGINES[e.name] = e
    return e


def engine(name: str) -> Engine:
    """The engine called ``name``; ValueError naming the registered engines otherwise."""
    return lookup(ENGINES, name, "engine")


def cosim_engines() -> list[Engine]:
    """The engines ``tritium cosim`` can run."""
    return [e for e in ENGINES.values() if e.cosimulated]


def board_engines() -> list[Engine]:
    """The engines ``tritium bitstream`` can build."""
    return [e for e in ENGINES.values() if e.hardware is not None]


# ---------------------------------------------------------------- the engines
def _tlmm_line(c: dict) -> str:
    t = c["tlmm"]
    return f"G={t['group_size']} T={t['tables']} Q={t['columns']} {t['table_mode']} M<={t['tokens']}"


def _gemm_line(c: dict) -> str:
    g, m = c["gemm"], c["memory"]
    return (
        f"{g['rows']}x{g['cols']} block, k_tile {g['k_tile']}, {8 * m['bus_bytes']}-bit bus, "
        f"latency {m['latency']}"
    )


def _kv_line(c: dict) -> str:
    k = c["kv"]
    return (
        f"dim {k['dim']}, {k['hyperplanes']} hyperplanes, hamming {k['hamming']}, "
        f"{k['max_clusters']}x{k['max_cluster_size']} clusters, {k['lanes']} lanes, alpha {k['alpha']}"
    )


def _standalone(name: str, description: str, sections: tuple[str, ...], model: str, **kw) -> Engine:
    """A co-simulated engine laid out by the file convention of docs/adding-an-engine.md: its hardware entry
    under its own name, the bench ``sim/<name>_bench.py``, ``workload_cases`` in ``sim/<name>_cases.py``, the
    runner ``run_<name>_cosim`` in ``sim/cosim.py``. ``kw``: the other :class:`Engine` fields (or a reference
    that differs, e.g. a runner in ``sim/<name>_cases.py``)."""
    refs = {
        "hardware": name,
        "bench": f"sim.{name}_bench",
        "cosim": f"sim.cosim:run_{name}_cosim",
        "cases": f"sim.{name}_cases:workload_cases",
    }
    return Engine(name, description, sections, model=model, **{**refs, **kw})


register(
    _standalone(
        "tlmm",
        "table-lookup ternary matmul (config section tlmm)",
        ("tlmm",),
        "sim.tlmm_model:run_tlmm_streams",
        workloads=("cases", "bitnet", "all"),
        summary=_tlmm_line,
        reference="numpy int64 matmul",
    )
)
register(
    _standalone(
        "gemm",
        "temporal int8 GEMM, rows x cols MAC block (config sections gemm, memory)",
        ("gemm", "memory"),
        "sim.gemm_model:run_gemm_image",
        workloads=("cases", "bitnet", "all"),
        summary=_gemm_line,
        reference="numpy int64 matmul",
        notes=(
            "Memory: sim/memory.py serves the RTL's requests; the model's kernel applies the same rules; "
            "some cases override latency / outstanding / beat_interval (bandwidth-starved).",
        ),
    )
)
register(
    _standalone(
        "kv",
        "KV-cache retrieval engine (config section kv)",
        ("kv",),
        "sim.kv_model:run_kv",
        workloads=("cases", "bitnet", "traces", "all"),
        summary=_kv_line,
        reference="models/resv.py ClusterTable",
        notes=(
            "KV: every output beat (cluster ids in walk order) and the cycle it leaves in are compared; "
            "trace cases replay traces/*.npz (queries every 16 tokens, both heads of a GQA group).",
        ),
    )
)
register(
    Engine(
        "top",
        "the integrated top level: command decoder, TLMM DMA, TLMM and GEMM on one memory port",
        ("tlmm", "gemm", "memory"),
        hardware="top",
        model="sim.top_model:program_cycles",
        bench="sim.top_bench",
        cosim=None,
        stimulus="program",
        reference="PyTorch int mode and the executor on the numba models",
    )
)
register(
    Engine(
        "all",
        "both engines side by side (tlmm + gemm), as a system using both holds them",
        ("tlmm", "gemm", "memory"),
        hardware="all",
    )
)
register(
    Engine(
        "deploy",
        "the deployable ULX3S board: the top level with a PLL, an SDRAM controller and a UART host link "
        "(docs/board.md)",
        ("tlmm", "gemm", "memory"),
        hardware="deploy",
    )
)
