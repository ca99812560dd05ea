"""``tritium run``: load a compiled Program folder, verify it, and execute it on the numba cycle models.

    tritium run PROGRAM_DIR [--tokens IDS | --prompt TEXT | --input NPY] [--logits NPY] [--json]

A user compiles once (``tritium compile MODEL -o DIR``) and runs the folder as often as needed: the Program
is loaded with every integrity check of :meth:`hw.program.Program.load` (file hashes, content hash, types,
ranges), then its commands run in order through :func:`sim.runtime.execute` on a copy of the Program's own
memory image (TLMM/GEMM commands on the numba models, HOST commands on the host-op functions). The step's
input is its token ids (exactly ``meta.tokens`` of them); the output is the Program's output tensor
(``meta.output``, the logits): per row its argmax, and the next token (argmax of the last row). A general
module's Program (``compiler.compile_model(module, acfg, example_inputs=...)``, ``meta.input``) takes its
float input rows from ``--input NPY`` (default: the zeros stored in its image).

Hook into the main parser with :func:`register`. Exit codes: 0 ran; 2 the folder is not a valid Program
(one line naming file and field), the inputs do not fit it, or it was compiled without weights (a preset
on meta tensors).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["register", "run_program", "parse_tokens", "cmd_run"]

EXIT_INPUT = 2
#: The stages of ``tritium run`` as its progress bar counts them (the execution also shows commands run).
RUN_STAGES = ("load + verify", "execute")


def parse_tokens(text: str) -> list[int]:
    """Token ids from ``"1,2,3"`` or ``"1 2 3"``."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--tokens: expected integers separated by commas or spaces, got {text!r}") from None


def _step_tokens(prog, tokens: list[int] | None, prompt: str | None) -> list[int]:
    import numpy as np

    T = prog.meta["tokens"]
    if prompt is not None:
        tokens, what = list(prompt.encode("utf-8")), f"--prompt is {len(prompt.encode('utf-8'))} byte(s)"
    elif tokens is not None:
        what = f"--tokens gives {len(tokens)} id(s)"
    else:
        return [int(v) for v in np.asarray(prog.read(prog.image, "tokens")).reshape(-1)[:T]]
    if len(tokens) != T:
        raise ValueError(
            f"{what}, but the Program is a step of {T} token(s) (compile with --tokens "
            f"{len(tokens)} for this input)"
        )
    vocab = prog.meta["model"].get("vocab")
    bad = [t for t in tokens if t < 0 or (isinstance(vocab, int) and t >= vocab)]
    if bad:
        raise ValueError(f"token id {bad[0]} outside the model's vocabulary 0..{vocab - 1 if vocab else '?'}")
    return tokens


def run_program(
    program_dir: str | Path,
    tokens: list[int] | None = None,
    prompt: str | None = None,
    logits_out: str | Path | None = None,
    input_npy: str | Path | None = None,
) -> dict:
    """Load, verify and execute one Program folder; returns the report ``tritium run --json`` prints.
    Raises :class:`hw.program.ProgramError` (a damaged or invalid folder) or ValueError (inputs)."""
    import numpy as np

    from sim.progress import step

    t0 = time.perf_counter()
    step("load + verify")  # imports PyTorch and numba, then checks every file of the folder

    from hw.program import Program
    from sim.runtime import execute

    prog = Program.load(program_dir)
    if not prog.meta["weights_materialized"]:
        raise ValueError(
            f"{program_dir}: compiled on meta tensors (a preset, no weights): it can be inspected, "
            f"not run; compile a checkpoint to run it"
        )
    acfg = prog.acfg
    if "input" in prog.meta:  # a general module: float rows in, no tokens
        if tokens is not None or prompt is not None:
            raise ValueError(f"{program_dir}: a general module's Program takes --input NPY, not tokens")
        name = prog.meta["input"]
        x = prog.read(prog.image, name) if input_npy is None else np.load(Path(input_npy), allow_pickle=False)
        toks = []
        t1 = time.perf_counter()
        logits, stats = execute(prog, x)
    else:
        if input_npy is not None:
            raise ValueError(
                f"{program_dir}: a language model's Program takes --tokens or --prompt, not --input"
            )
        toks = _step_tokens(prog, tokens, prompt)
        t1 = time.perf_counter()
        logits, stats = execute(prog, np.asarray(toks, np.int64))
    t2 = time.perf_counter()
    out = logits.numpy()
    if logits_out is not None:
        np.save(Path(logits_out), out, allow_pickle=False)
    module = "input" in prog.meta  # a general module's output is a tensor, not logits: no next token
    argmax = [int(i) for i in out.argmax(axis=-1)] if out.ndim == 2 and out.shape[-1] and not module else []
    nxt = argmax[-1] if argmax else None
    finite = np.isfinite(out)
    vocab = prog.meta["model"].get("vocab")
    total = sum(stats.cycles.values())  # tlmm, gemm (GEMM_LIST included) and, with retrieval, kv
    return {
        "program": str(program_dir),
        "content_hash": prog.digest(),
        "config": acfg.name,
        "tokens": toks,
        "rows": prog.meta["tokens"],
        "pos": prog.meta["pos"],
        "commands": {**stats.commands, "total": sum(stats.commands.values())},
        "cycles": {**stats.cycles, "total": total},
        "engine_us": round(total / acfg.clock_mhz, 3),
        "output": {
            "tensor": prog.meta["output"],
            "shape": list(out.shape),
            "argmax": argmax,
            "next_token": nxt,
            "next_text": bytes([nxt]).decode("latin-1") if vocab == 256 and nxt is not None else None,
            "finite": bool(finite.all()),
            "min": float(out[finite].min()) if finite.any() else None,
            "max": float(out[finite].max()) if finite.any() else None,
        },
        "logits_file": str(logits_out) if logits_out is not None else None,
        "load_s": round(t1 - t0, 3),
        "run_s": round(t2 - t1, 3),
    }


def cmd_run(args) -> int:
    from hw.program import ProgramError
    from sim.progress import progress
    from tritium.report import error_line, fmt_time

    try:
        tokens = parse_tokens(args.tokens) if args.tokens is not None else None
        with progress(desc="run", stages=RUN_STAGES):
            rep = run_program(args.program, tokens, args.prompt, args.logits, args.input)
    except (ProgramError, ValueError) as e:
        print(f"tritium: error: {error_line(e)}", file=sys.stderr)
        return EXIT_INPUT
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    c, cy, o = rep["commands"], rep["cycles"], rep["output"]
    print(
        f"ran {rep['program']} ({rep['content_hash'][:19]}…) on {rep['config']}: step of {rep['rows']} "
        f"token(s) at position {rep['pos']}"
    )
    if rep["pos"] > 0:
        print("  note: a step at position > 0 run alone sees the Program's own (empty) KV cache")
    print(f"  commands: {c['tlmm']} TLMM, {c['gemm']} GEMM, {c['host']} HOST ({c['total']} in all)")
    print(
        f"  engine cycles: TLMM {cy['tlmm']:,}, GEMM {cy['gemm']:,}, total {cy['total']:,} "
        f"({fmt_time(rep['engine_us'] * 1e-6)} at the config's clock; host ops not counted)"
    )
    nxt = o["next_token"]
    if nxt is not None:
        text = f" {o['next_text']!r}" if o["next_text"] is not None else ""
        what = f"next token {nxt}{text}"
    else:  # a general module: its output is a tensor (save it with --logits FILE.npy)
        what = "no finite values" if o["min"] is None else f"values in [{o['min']:.6g}, {o['max']:.6g}]"
    print(f"  output {o['tensor']} {o['shape']}: {what}{'' if o['finite'] else '  (non-finite values!)'}")
    if rep["logits_file"]:
        print(f"  wrote {rep['logits_file']}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``run`` to the ``tritium`` subparsers; returns its parser."""
    r = subparsers.add_parser(
        "run", help="verify a compiled Program folder and execute it on the numba models"
    )
    r.add_argument("program", metavar="PROGRAM_DIR", help="folder written by `tritium compile -o`")
    src = r.add_mutually_exclusive_group()
    src.add_argument(
        "--tokens",
        default=None,
        metavar="IDS",
        help="the step's token ids, comma or space separated (exactly the step's token count); "
        "default: the ids stored in the Program's image (zeros after `tritium compile`)",
    )
    src.add_argument(
        "--prompt",
        default=None,
        metavar="TEXT",
        help="the step's tokens as the UTF-8 bytes of TEXT (byte-level models such as tiny.pt)",
    )
    src.add_argument(
        "--input",
        default=None,
        metavar="NPY",
        help="a general module's input rows (float, rows x features) as a .npy file",
    )
    r.add_argument("--logits", default=None, metavar="NPY", help="also save the output tensor as a .npy file")
    r.add_argument("--json", action="store_true", help="print a JSON report")
    r.set_defaults(func=cmd_run)
    return r
