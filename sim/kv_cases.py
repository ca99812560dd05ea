"""Co-simulation cases for the KV retrieval engine: directed corners, seeded random streams with random
stall patterns, and trace replays (real post-RoPE keys/queries of the small trained model). Each case is a
command list starting with RESET plus the ``vec`` valid and ``out`` ready patterns it runs under."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hw.config import AcceleratorConfig, KvConfig

__all__ = ["KvCase", "directed_cases", "random_cases", "replay_commands", "trace_cases", "workload_cases"]

_ONE = np.ones(1, np.int8)


@dataclass
class KvCase:
    name: str
    commands: list
    vec_pattern: np.ndarray = field(default_factory=lambda: _ONE)
    out_pattern: np.ndarray = field(default_factory=lambda: _ONE)


def _i8(rng, shape, lo=-128, hi=127):
    return rng.integers(lo, hi + 1, shape).astype(np.int8)


def _grouped(rng, kv: KvConfig, n: int, groups: int, spread: int) -> list:
    base = rng.integers(-128, 128, (groups, kv.dim))
    out = []
    for _ in range(n):
        k = base[rng.integers(groups)] + rng.integers(-spread, spread + 1, kv.dim)
        out.append(np.clip(k, -128, 127).astype(np.int8))
    return out


def directed_cases(kv: KvConfig, seed: int = 0) -> list[KvCase]:
    """Corners: empty table, one key, zeros, ±extremes, identical keys (clusters fill up), a full table
    (forced joins, then dropped keys), RESET mid-stream, stalled streams."""
    rng = np.random.default_rng(seed)
    d, cap = kv.dim, kv.max_clusters * kv.max_cluster_size
    q = _i8(rng, d)
    same = _i8(rng, d)
    cases = [
        KvCase("query-empty-table", [("reset",), ("query", q)]),
        KvCase("one-key", [("reset",), ("insert", _i8(rng, d)), ("query", q)]),
        KvCase(
            "zeros", [("reset",)] + [("insert", np.zeros(d, np.int8))] * 3 + [("query", np.zeros(d, np.int8))]
        ),
        KvCase(
            "extremes",
            [("reset",)]
            + [("insert", rng.choice(np.array([-128, 127], np.int8), d)) for _ in range(2 * kv.lanes + 3)]
            + [("query", np.full(d, -128, np.int8)), ("query", np.full(d, 127, np.int8))],
        ),
        KvCase(
            "identical-keys-fill",
            [("reset",)] + [("insert", same)] * (2 * kv.max_cluster_size + 1) + [("query", q)],
        ),
    ]
    # far-apart random keys overflow the table: opens, then forced joins, then FULL drops
    over = [("insert", _i8(rng, d)) for _ in range(min(cap + 3, 700))]
    cases.append(
        KvCase(
            "table-overflow",
            [("reset",)]
            + over
            + [("query", q), ("query", -q.astype(np.int16).clip(-128, 127).astype(np.int8))],
        )
    )
    mid = _grouped(rng, kv, 12, 3, 20)
    cases.append(
        KvCase(
            "reset-mid-stream",
            [("reset",)]
            + [("insert", k) for k in mid[:6]]
            + [("query", q), ("reset",)]
            + [("insert", k) for k in mid[6:]]
            + [("query", q)],
        )
    )
    stall = (
        [("reset",)]
        + [("insert", k) for k in _grouped(rng, kv, 40, 4, 25)]
        + [("query", _i8(rng, d)) for _ in range(3)]
    )
    cases.append(KvCase("vec-starved", stall, vec_pattern=np.array([1, 0, 0], np.int8)))
    cases.append(KvCase("out-backpressure", stall, out_pattern=np.array([0, 1, 0, 0, 1], np.int8)))
    return cases


def random_cases(kv: KvConfig, n: int, seed: int = 1) -> list[KvCase]:
    """Streams of grouped keys (random group count and spread) with queries interleaved; half of the cases
    under random valid/ready patterns."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        keys = _grouped(
            rng, kv, int(rng.integers(1, 160)), int(rng.integers(1, 12)), int(rng.integers(0, 80))
        )
        cmds: list = [("reset",)]
        for k in keys:
            cmds.append(("insert", k))
            if rng.random() < 0.1:
                cmds.append(("query", _i8(rng, kv.dim)))
        cmds.append(("query", _i8(rng, kv.dim)))
        c = KvCase(f"random-{i}", cmds)
        if i % 2:
            c.vec_pattern = (rng.random(int(rng.integers(1, 6))) < 0.6).astype(np.int8)
            c.out_pattern = (rng.random(int(rng.integers(1, 6))) < 0.6).astype(np.int8)
            c.vec_pattern[0] = c.out_pattern[-1] = 1
        cases.append(c)
    return cases


def replay_commands(keys: np.ndarray, queries: np.ndarray, query_every: int = 1, start: int = 0) -> list:
    """Commands of one head's stream: keys (S, dim) int8 inserted in order; after key t (t ≥ start, every
    ``query_every``-th), the query rows ``queries[:, t]`` ((G, S, dim) int8: the GQA group's heads) are
    issued — the decode-time retrieval of token t."""
    cmds: list = [("reset",)]
    for t in range(keys.shape[0]):
        cmds.append(("insert", keys[t]))
        if t >= start and (t - start) % query_every == 0:
            cmds.extend(("query", queries[g, t]) for g in range(queries.shape[0]))
    return cmds


def trace_cases(kv: KvConfig, paths, heads: int = 2, query_every: int = 16) -> list[KvCase]:
    """Replays of recorded traces (traces/*.npz): the first ``heads`` (layer, KV head) streams of each."""
    from models.resv import quantize_keys
    from traces.format import load_trace

    cases = []
    for path in paths:
        tr = load_trace(path)
        if tr.head_dim != kv.dim:
            raise ValueError(f"{path}: head_dim {tr.head_dim} differs from kv.dim {kv.dim} of the config")
        group = tr.group
        done = 0
        for layer in range(tr.keys.shape[0]):
            for h in range(tr.keys.shape[1]):
                if done >= heads:
                    break
                k8 = quantize_keys(tr.keys[layer, h])
                q8 = quantize_keys(tr.queries[layer, h * group : (h + 1) * group])
                cmds = replay_commands(k8, q8, query_every, start=query_every - 1)
                cases.append(KvCase(f"trace-{Path(tr.path).stem}-L{layer}H{h}", cmds))
                done += 1
    return cases


def workload_cases(acfg: AcceleratorConfig, workload: str, seed: int = 0, n_random: int = 4) -> list[KvCase]:
    """The cases of a named workload (``tritium cosim kv --workload``): ``cases`` (directed + seeded
    random), ``traces`` / ``bitnet`` (replays of the committed traces/*.npz) or ``all`` (both). A trace
    that does not fit the config raises ValueError (TraceError)."""
    from hw import data_files

    cases: list[KvCase] = []
    if workload in ("cases", "all"):
        cases += directed_cases(acfg.kv, seed) + random_cases(acfg.kv, n_random, seed + 1)
    if workload in ("bitnet", "traces", "all"):
        paths = [str(p) for p in data_files.trace_files()]
        if not paths:
            raise ValueError("traces/: no committed *.npz traces to replay")
        cases += trace_cases(acfg.kv, paths, heads=2, query_every=16)
    return cases
