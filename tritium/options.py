"""The pieces of the ``tritium`` command line that several commands share, each defined once (docs/cli.md,
"One grammar"): a subcommand bound to the function that runs it, and the options that mean the same in
every command that takes them."""

from __future__ import annotations

import argparse
from collections.abc import Callable

#: option → its ``add_argument`` keywords, for the options with one meaning in every command taking them
SHARED: dict[str, dict] = {
    "--config": {"default": None, "help": "accelerator config YAML (default: configs/default.yaml)"},
    "--model": {
        "default": None,
        "help": "preset (bitnet-0.7b, bitnet-2b, tiny: meta tensors), Hugging Face BitNet folder or checkpoint",
    },
    "--module": {
        "default": None,
        "metavar": "FILE.py:FACTORY",
        "help": "a general torch.nn.Module instead of --model: FACTORY() from the Python file FILE (run as "
        "code: only files you trust; docs/models.md, 'General graphs'), compiled for --input-shape",
    },
    "--input-shape": {
        "default": None,
        "metavar": "ROWS,FEATURES",
        "help": "with --module: the example input's shape, ROWS,FEATURES (e.g. 4,64)",
    },
    "--build-dir": {"default": "build/cosim", "help": "Verilator build cache (default build/cosim)"},
}


def add_shared(parser: argparse.ArgumentParser, *options: str) -> None:
    """Add the shared ``options`` (keys of :data:`SHARED`) to ``parser``, in this order."""
    for option in options:
        parser.add_argument(option, **SHARED[option])


def command(subparsers, name: str, run: Callable[[argparse.Namespace], int], **kw) -> argparse.ArgumentParser:
    """The subcommand ``name`` (``add_parser`` keywords ``kw``: help, parents, ...) that ``run(args)`` runs."""
    parser = subparsers.add_parser(name, **kw)
    parser.set_defaults(func=run)
    return parser


def add_checkpoint(parser: argparse.ArgumentParser, default: str | None, purpose: str) -> None:
    """``--checkpoint``: the trained model a ``tritium kv`` action measures perplexity with (``purpose`` says
    what for; the default is named in the help)."""
    parser.add_argument("--checkpoint", default=default, help=f"{purpose} (default {default})")
