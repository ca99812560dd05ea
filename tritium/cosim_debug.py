"""Debugging helpers of ``tritium cosim`` (docs/waves.md): pick one case (``--case``), list the cases
(``--list-cases``), and after a failing run name the kept simulator log and waveform of every failing case
with the exact command that reruns that case alone with waves."""

from __future__ import annotations

import shlex

from hw.config import ConfigError

__all__ = ["case_names", "select_case", "rerun_command", "failure_lines"]

#: ``--build-dir``'s default (a rerun command names the option only when it differs).
DEFAULT_BUILD_DIR = "build/cosim"


def case_names(eng, cases: list) -> list[str]:
    """The names of ``cases`` as the co-simulation prints them; the top level has one, the generation."""
    if eng.stimulus == "program":
        from sim.cosim import TOP_CASE

        return [TOP_CASE]
    return [c.name for c in cases]


def select_case(eng, cases: list, name: str, args) -> list:
    """The one case called ``name`` (ConfigError naming the valid names otherwise → exit 2)."""
    names = case_names(eng, cases)
    if name not in names:
        where = (
            f"the {eng.name} engine's {args.workload} workload (seed {args.seed}, {args.random} random)"
            if eng.stimulus == "cases"
            else "the top level (one generation)"
        )
        raise ConfigError(f"--case {name!r}: no such case in {where}; cases: {', '.join(names)}")
    return [c for c in cases if c.name == name] if eng.stimulus == "cases" else cases


def rerun_command(args, case: str, waves: str = "fst") -> str:
    """The ``tritium cosim`` command that reruns exactly ``case`` of this run with waves: the same engine,
    config, workload, seed, random count and build folder (and, for the top level, the same checkpoint,
    prompt, tokens and layers)."""
    cmd = ["tritium", "cosim", args.engine]
    if args.config is not None:
        cmd += ["--config", str(args.config)]
    if args.engine == "top":
        cmd += ["--model", str(args.checkpoint), "--prompt", args.prompt, "--tokens", str(args.tokens)]
        if args.layers is not None:
            cmd += ["--layers", str(args.layers)]
    else:
        cmd += ["--workload", args.workload, "--seed", str(args.seed), "--random", str(args.random)]
    if str(args.build_dir) != DEFAULT_BUILD_DIR:
        cmd += ["--build-dir", str(args.build_dir)]
    cmd += ["--case", case, "--waves" if waves == "fst" else f"--waves={waves}"]
    return shlex.join(cmd)


def failure_lines(args, failed: list[dict]) -> list[str]:
    """For every failing case (a row with ``name`` and, where kept, ``log``/``waves``): where its simulator
    log and waveform are, and the command that reruns it alone with waves."""
    lines = []
    waves = args.waves or "fst"
    for r in failed:
        kept = [f"{k} {r[k]}" for k in ("log", "waves") if r.get(k)]
        lines.append(f"FAILED {r['name']}" + (f" — {'; '.join(kept)}" if kept else ""))
        lines.append(f"  rerun with waves: {rerun_command(args, r['name'], waves)}")
    return lines
