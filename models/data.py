"""Offline English text corpus and byte-level tokenizer for the tiny model.

Corpus ("pydoc+docstrings"), assembled deterministically from the running Python's standard library, so it
exists on every machine that runs the project and needs no network:

1. ``pydoc_data.topics.topics``: the Python Language Reference topics that ``help()`` shows (English prose:
   the language reference's sections on statements, expressions, data model ...; ~465 k characters on 3.11),
   one document per topic, in sorted key order; document id ``topics/<key>``.
2. Docstrings of the pure-Python standard library: every ``*.py`` file under ``sysconfig``'s ``stdlib``
   folder (files and folders visited in sorted order; skipped folders: ``site-packages``, ``test``, ``tests``,
   ``idlelib``, ``lib2to3``, ``turtledemo``, ``__pycache__``), parsed with :mod:`ast` (nothing is imported);
   the module docstring and each class/function docstring in :func:`ast.walk` order, cleaned with
   :func:`ast.get_docstring`; document id ``<relative path>:<line>``. Docstrings shorter than 64 characters
   are dropped (mostly one-line stubs like "Return self==value.").

Exact duplicates are kept once (first occurrence). A document goes to the validation split iff
``sha256(id)[0] % 20 == 0`` (≈5 %), independent of every other document. Each split is the UTF-8 bytes of its
documents, each followed by ``"\\n\\n"``. On CPython 3.11.7 this gives ≈1.9 MB (see :func:`corpus_info`);
other Python versions give a similar but not identical corpus, so :func:`corpus_info` records the version and
a SHA-256 of each split.

Tokenizer: bytes (vocab 256, token = byte value); no special tokens.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass

import torch

__all__ = [
    "VOCAB",
    "encode",
    "decode",
    "documents",
    "Corpus",
    "load_corpus",
    "corpus_info",
    "batches",
    "eval_windows",
]

VOCAB = 256
_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
_MIN_DOC = 64
_VAL_MOD = 20


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes as an int64 tensor of token ids 0..255."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int64)


def decode(tokens) -> str:
    """Token ids back to text (invalid UTF-8 sequences become U+FFFD)."""
    t = torch.as_tensor(tokens).reshape(-1)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= VOCAB):
        raise ValueError(f"decode: token ids must be 0..{VOCAB - 1}")
    return t.to(torch.uint8).numpy().tobytes().decode("utf-8", errors="replace")


def _topic_docs():
    import pydoc_data.topics as topics

    for key in sorted(topics.topics):
        yield f"topics/{key}", topics.topics[key]


def _docstring_docs():
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            try:
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if doc:
                        yield f"{rel}:{getattr(node, 'lineno', 0)}", doc


def documents() -> list[tuple[str, str]]:
    """All (id, text) documents in corpus order, deduplicated, short docstrings dropped."""
    seen: set[str] = set()
    out = []
    for doc_id, text in list(_topic_docs()) + list(_docstring_docs()):
        text = text.strip()
        if len(text) < _MIN_DOC or text in seen:
            continue
        seen.add(text)
        out.append((doc_id, text))
    return out


def _is_val(doc_id: str) -> bool:
    return hashlib.sha256(doc_id.encode("utf-8")).digest()[0] % _VAL_MOD == 0


@dataclass(frozen=True)
class Corpus:
    train: torch.Tensor  # int64 byte ids
    val: torch.Tensor
    n_docs: int
    n_val_docs: int


@functools.lru_cache(maxsize=1)
def load_corpus() -> Corpus:
    """The corpus, split into train and validation byte streams (cached per process)."""
    docs = documents()
    train = "".join(t + "\n\n" for i, t in docs if not _is_val(i))
    val = "".join(t + "\n\n" for i, t in docs if _is_val(i))
    return Corpus(encode(train), encode(val), len(docs), sum(_is_val(i) for i, _ in docs))


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.to(torch.uint8).numpy().tobytes()).hexdigest()


def corpus_info() -> dict:
    """Plain description of the corpus on this machine (for reports and checkpoints)."""
    c = load_corpus()
    return {
        "name": "pydoc+docstrings",
        "python": sys.version.split()[0],
        "documents": c.n_docs,
        "val_documents": c.n_val_docs,
        "train_bytes": int(c.train.numel()),
        "val_bytes": int(c.val.numel()),
        "train_sha256": _sha(c.train),
        "val_sha256": _sha(c.val),
    }


def batches(data: torch.Tensor, batch: int, seq: int, generator: torch.Generator):
    """Endless random (inputs, targets) pairs of shape (batch, seq): windows of seq+1 bytes at uniform
    random offsets drawn from ``generator``."""
    n = data.numel() - seq - 1
    while True:
        idx = torch.randint(0, n, (batch,), generator=generator)
        win = torch.stack([data[i : i + seq + 1] for i in idx.tolist()])
        yield win[:, :-1], win[:, 1:]


def eval_windows(
    data: torch.Tensor, seq: int, max_windows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive non-overlapping windows of seq+1 bytes from the start of ``data`` (the last byte of a
    window is the first of the next) → (inputs, targets) of shape (n, seq); every byte after the first is
    predicted once (a trailing partial window is dropped)."""
    n = (data.numel() - 1) // seq
    if max_windows is not None:
        n = min(n, max_windows)
    win = torch.stack([data[i * seq : i * seq + seq + 1] for i in range(n)])
    return win[:, :-1], win[:, 1:]
