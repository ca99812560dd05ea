"""The DSE's persistent record of finished points (:mod:`tritium.dse` runs the sweep).

Every design point has a *key* that does not depend on Optuna trial numbers: a grid point's key is its
parameter tuple (``grid:[v1,v2,…]``), an NSGA-II point's key is ``STREAM:ORD`` (its position in the
seeded ask order of one stream; one stream per invocation seed). Each finished point is one Optuna trial
added with ``add_trial`` — a single database transaction — so a point is stored complete or not at all,
whenever the process dies. On resume, stored keys are skipped, and evaluations that finished in worker
processes but were not stored yet are read back from ``evaluations.jsonl`` (appended with one ``write``
per record, fsynced) instead of being evaluated again.

The grid order is a seeded permutation of the grid (so a budget below the grid size samples it evenly),
fixed by the spec alone.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tritium.dse_spec import MAX_GRID_POINTS

__all__ = [
    "Point",
    "Store",
    "GridOrder",
    "open_study",
    "append_log",
    "read_log",
    "mask_url",
    "grid_key",
    "MAX_GRID_POINTS",
]


@dataclass
class Point:
    """One design point of a sweep, before or after evaluation."""

    key: str  # unique in the study: "grid:[…]" or "STREAM:ORD"
    ord: int  # position in its stream's order (grid: in the seeded grid order)
    stream: str  # "grid", or the NSGA-II stream ("seed0", or an invocation id when shared)
    params: dict
    trial: object = None  # the in-memory Optuna trial that proposed it (NSGA-II)
    system_attrs: dict = field(default_factory=dict)


def grid_key(names: list[str], params: dict) -> str:
    return "grid:" + json.dumps([params[n] for n in names], separators=(",", ":"))


class GridOrder:
    """The grid in a seeded order: point ``ord`` ↦ its parameters (mixed radix, last parameter fastest)."""

    def __init__(self, parameters: dict[str, list], seed: int):
        import numpy as np

        self.names = list(parameters)
        self.values = [list(parameters[n]) for n in self.names]
        self.size = math.prod(len(v) for v in self.values)
        if self.size > MAX_GRID_POINTS:  # load_spec rejects these; a guard for direct callers
            raise ValueError(f"grid of {self.size} points > {MAX_GRID_POINTS}")
        self._perm = np.random.default_rng(seed).permutation(self.size)

    def point(self, ord_: int) -> Point:
        idx = int(self._perm[ord_])
        params = {}
        for n, vals in zip(reversed(self.names), reversed(self.values), strict=True):
            idx, r = divmod(idx, len(vals))
            params[n] = vals[r]
        params = {n: params[n] for n in self.names}
        return Point(grid_key(self.names, params), ord_, "grid", params)


# ---- the evaluation log -----------------------------------------------------------------------------


def append_log(path: str, rec: dict) -> None:
    """Append one record as one ``write`` (O_APPEND) and fsync it: a kill leaves whole lines or a cut last one."""
    line = (json.dumps(rec, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(path: Path) -> list[dict]:
    """Records of ``evaluations.jsonl`` (a line cut by a kill is skipped)."""
    out = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "uid" in rec:
                out.append(rec)
    return out


# ---- the study ----------------------------------------------------------------------------------------


def mask_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://")[0] + "://***"


def _sqlite_pragmas() -> None:
    """WAL journal, synchronous=NORMAL for SQLite studies: a commit survives a killed process (not a power
    cut), at a fraction of the fsyncs; readers and writers of several processes do not block each other."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if getattr(_sqlite_pragmas, "done", False):
        return

    @event.listens_for(Engine, "connect")
    def _on_connect(dbapi_conn, _record):
        if isinstance(dbapi_conn, sqlite3.Connection):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

    _sqlite_pragmas.done = True


def storage_url(storage: str | None, out: Path) -> str:
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    if url.startswith("sqlite"):
        _sqlite_pragmas()
    if url.startswith("postgresql://"):  # SQLAlchemy 2.1 defaults to psycopg 3; we depend on psycopg2-binary
        url = "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def open_study(url: str, study_name: str, directions: list[str]):
    """The persistent Optuna study (created if missing; concurrent creators on a fresh database retry)."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(6):
        try:
            stor = optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True} if url.startswith("postgres") else None
            )
            return optuna.create_study(
                study_name=study_name, storage=stor, directions=directions, load_if_exists=True
            )
        except (IntegrityError, ProgrammingError):
            if attempt == 5:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


class Store:
    """The persistent study seen as key → finished trial. ``put`` is one ``add_trial`` (one transaction)."""

    def __init__(self, db, objectives: list[str], dists: dict):
        self.db, self.objectives, self.dists = db, objectives, dists
        self.trials: dict[str, object] = {}
        self.refresh()

    def refresh(self) -> list:
        """Read trials stored since the last call (by any invocation); return the new ones."""
        new = []
        for t in self.db.get_trials(deepcopy=False):
            k = t.user_attrs.get("uid")
            if k is not None and "result" in t.user_attrs and k not in self.trials:
                self.trials[k] = t
                new.append(t)
        return new

    def __contains__(self, key: str) -> bool:
        return key in self.trials

    def __len__(self) -> int:
        return len(self.trials)

    def result(self, key: str) -> tuple[str, str, dict]:
        r = self.trials[key].user_attrs["result"]
        return r["status"], r["reason"], r["metrics"]

    def frozen(self, p: Point, status: str, reason: str, m: dict):
        import optuna
        from optuna.trial import TrialState

        state = {"ok": TrialState.COMPLETE, "error": TrialState.FAIL}.get(status, TrialState.PRUNED)
        values = [float(m[k]) for k in self.objectives] if state == TrialState.COMPLETE else None
        return optuna.trial.create_trial(
            state=state,
            values=values,
            params=p.params,
            distributions=self.dists,
            system_attrs=p.system_attrs,
            user_attrs={
                "uid": p.key,
                "ord": p.ord,
                "stream": p.stream,
                "result": {"status": status, "reason": reason, "metrics": m},
            },
        )

    def put(self, p: Point, status: str, reason: str, m: dict) -> None:
        if p.key in self.trials:
            return
        fr = self.frozen(p, status, reason, m)
        self.db.add_trial(fr)
        self.trials[p.key] = fr
