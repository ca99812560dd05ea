"""An on-disk cache of compiled step Programs, so a repeated ``tritium estimate`` skips PyTorch, the capture
and the lowering.

**Where.** ``$TRITIUM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/tritium``, else ``~/.cache/tritium``;
Programs live under ``programs/<key>/`` (an ordinary Program folder, hw/program.py) and the model facts the
estimate needs before it knows the steps (``max_seq``) under ``models/<key>.json``. Deleting the folder is
always safe. ``tritium estimate --no-cache`` neither reads nor writes it.

**Key.** SHA-256 of a canonical JSON of everything that determines a Program:

- the cache format (:data:`CACHE_FORMAT`), the Program and ISA versions;
- the compiler's code: a hash of the source files of ``compiler/``, ``models/`` and the hw contracts a
  Program depends on (:data:`CODE_MODULES`) — any edit to them is a new key;
- the model: its MODEL argument and, when that names a file or folder, the SHA-256 of its contents (every
  file, by relative name), so a changed checkpoint is a new key;
- the whole accelerator config (every field, not only the hardware fingerprint: a Program embeds it);
- the compile options (meta tensors, capture length) and the step (tokens, position, logits mode).

**Trust.** An entry is loaded with :meth:`hw.program.Program.load`, which checks file sizes, SHA-256s and the
Program's content hash; the step and config it holds are checked against the request too. Any defect is
reported in one line, the entry is deleted and the Program compiled again — a damaged entry is never used.
Writes are atomic (Program folders are saved as a unit; JSON through hw/files.py), so a killed run leaves a
complete entry or none; a cache that cannot be written only costs the next run the compile.

:data:`STATS` counts hits, misses, damaged entries and stores in this process (tests read it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hw.files import write_text
from hw.isa import ISA_VERSION
from hw.program import PROGRAM_VERSION, Program, ProgramError

__all__ = [
    "CACHE_FORMAT",
    "CODE_MODULES",
    "STATS",
    "ProgramCache",
    "ProgramSource",
    "default_root",
    "code_hash",
]

CACHE_FORMAT = "tritium-program-cache/1"
CODE_MODULES = (
    "compiler",
    "models",
    "hw.config",
    "hw.isa",
    "hw.program",
    "hw.ternary",
    "hw.gemm_layout",
    "hw.top_geometry",
)
"""Packages and modules whose source determines a compiled Program (hashed into every key)."""

STATS: Counter = Counter()  # "hit", "miss", "damaged", "stored", "unwritable"
_CODE_HASH: str | None = None


def default_root() -> Path:
    """``$TRITIUM_CACHE_DIR``, else ``$XDG_CACHE_HOME/tritium``, else ``~/.cache/tritium``."""
    env = os.environ.get("TRITIUM_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tritium"


def _files_of(module: str) -> list[Path]:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return []
    if spec.submodule_search_locations:  # a package: every .py below it
        return sorted(p for d in spec.submodule_search_locations for p in Path(d).rglob("*.py"))
    return [Path(spec.origin)] if spec.origin else []


def code_hash() -> str:
    """SHA-256 over the source files of :data:`CODE_MODULES` (relative name and bytes), once per process."""
    global _CODE_HASH
    if _CODE_HASH is None:
        h = hashlib.sha256()
        for mod in CODE_MODULES:
            for p in _files_of(mod):
                if "__pycache__" in p.parts:
                    continue
                data = p.read_bytes()
                h.update(f"{mod}:{p.name}:{len(data)}\n".encode())
                h.update(data)
        _CODE_HASH = h.hexdigest()
    return _CODE_HASH


def _content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative name, size and SHA-256 of each)."""

    def file_hash(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    if path.is_file():
        return file_hash(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{p.stat().st_size}\0{file_hash(p)}\n".encode())
    return h.hexdigest()


def model_identity(model_spec: str) -> dict:
    """What names the model in a key: the MODEL argument, plus the content hash of the file or folder it
    names (a preset name has none; its definition is in the hashed code)."""
    p = Path(model_spec)
    ident = {"spec": model_spec}
    if p.exists():
        ident["content_sha256"] = _content_hash(p)
    return ident


def _digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:40]


class ProgramCache:
    """Program folders by key under ``root/programs``; model facts under ``root/models`` (module doc)."""

    def __init__(self, root: str | os.PathLike | None = None, log: Callable[[str], None] | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.log = log or (lambda msg: None)

    # ---- keys
    def base_key(self, model_spec: str, acfg, options: dict) -> dict:
        return {
            "format": CACHE_FORMAT,
            "program_version": PROGRAM_VERSION,
            "isa_version": ISA_VERSION,
            "code": code_hash(),
            "model": model_identity(model_spec),
            "config": acfg.to_dict(),
            "options": options,
        }

    # ---- Programs
    def _dir(self, key: str) -> Path:
        return self.root / "programs" / key

    def load(self, key: str, acfg, tokens: int, pos: int) -> Program | None:
        """The Program stored under ``key``, verified; None when absent or damaged (a damaged entry is
        reported, deleted and counted)."""
        d = self._dir(key)
        if not d.exists():
            STATS["miss"] += 1
            return None
        try:
            prog = Program.load(d)
            if prog.config != json.loads(json.dumps(acfg.to_dict())):  # as the Program stores it
                raise ProgramError(f"{d}: holds a Program for another config")
            if (prog.meta.get("tokens"), prog.meta.get("pos")) != (tokens, pos):
                raise ProgramError(f"{d}: holds a Program for another step")
        except ProgramError as e:
            STATS["damaged"] += 1
            STATS["miss"] += 1
            self.log(f"cache: damaged entry ignored and recompiled: {e}")
            shutil.rmtree(d, ignore_errors=True)
            return None
        STATS["hit"] += 1
        return prog

    def store(self, key: str, prog: Program) -> None:
        """Save ``prog`` under ``key`` (atomically); a cache that cannot be written is reported, not fatal."""
        d = self._dir(key)
        try:
            prog.save(d)  # replaces an existing Program folder as a unit
            STATS["stored"] += 1
        except (OSError, ProgramError) as e:
            STATS["unwritable"] += 1
            self.log(f"cache: cannot write {d} ({e}); continuing without it")

    # ---- model facts
    def get_facts(self, key: str) -> dict | None:
        p = self.root / "models" / f"{key}.json"
        try:
            facts = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            STATS["damaged"] += 1
            self.log(f"cache: damaged entry ignored and recomputed: {p}")
            return None
        if not isinstance(facts, dict) or not isinstance(facts.get("max_seq"), int) or facts["max_seq"] < 1:
            STATS["damaged"] += 1
            self.log(f"cache: damaged entry ignored and recomputed: {p}")
            return None
        return facts

    def put_facts(self, key: str, facts: dict) -> None:
        p = self.root / "models" / f"{key}.json"
        try:
            write_text(p, json.dumps(facts, sort_keys=True) + "\n")
        except OSError as e:
            STATS["unwritable"] += 1
            self.log(f"cache: cannot write {p} ({e}); continuing without it")


class ProgramSource:
    """The step Programs of one model on one config: from ``cache`` when it holds them, else from
    ``compiled()`` (called at most once, only on a miss), stored for next time. Without a cache it is a thin
    wrapper over the compiled model."""

    OPTIONS = {"device": "meta", "capture_len": 8}  # what tritium.estimate compiles with

    def __init__(
        self,
        model_spec: str,
        acfg,
        compiled: Callable,
        cache: ProgramCache | None = None,
        options: dict | None = None,
    ):
        """``options``: the compile options ``compiled`` uses beyond :attr:`OPTIONS` (e.g. ``lm_head``),
        part of the key."""
        self.model_spec, self.acfg, self.cache = model_spec, acfg, cache
        self._compiled_fn, self._cm = compiled, None
        opts = {**self.OPTIONS, **(options or {})}
        self._base = cache.base_key(model_spec, acfg, opts) if cache is not None else None

    def compiled(self):
        if self._cm is None:
            self._cm = self._compiled_fn()
        return self._cm

    def max_seq(self) -> int:
        if self.cache is None:
            return self.compiled().lowering.mc["max_seq"]
        key = _digest({**self._base, "facts": "model"})
        facts = self.cache.get_facts(key)
        if facts is None:
            facts = {"max_seq": int(self.compiled().lowering.mc["max_seq"])}
            self.cache.put_facts(key, facts)
        return facts["max_seq"]

    def program(self, tokens: int, pos: int, logits: str = "last") -> Program:
        if self.cache is None:
            return self.compiled().program(tokens, pos, logits=logits)
        key = _digest({**self._base, "step": {"tokens": tokens, "pos": pos, "logits": logits}})
        prog = self.cache.load(key, self.acfg, tokens, pos)
        if prog is None:
            prog = self.compiled().program(tokens, pos, logits=logits)
            self.cache.store(key, prog)
        return prog
