"""KV retrieval engine (V-Rex ReSV): the integer reference's rules, the numba model against the reference,
and RTL ⇔ model ⇔ reference co-simulation (directed, random with stalls, trace replays): outputs and the
cycle of every output beat equal."""

import dataclasses

import numpy as np
import pytest
from conftest import cli_json, cosim_mismatches, kv_model_matches_reference, run_cli

from hw.config import ConfigError, KvConfig, config_from_dict, load_config
from hw.kv_numerics import hyperplane_bits, reciprocal
from models.resv import ClusterTable, signature
from sim.cosim import run_kv_cosim
from sim.kv_cases import directed_cases, random_cases, replay_commands, trace_cases
from sim.kv_model import run_commands


def _table(kv=None):
    return ClusterTable(kv or KvConfig())


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kv, field",
    [
        ({"lanes": 3}, "kv.lanes"),
        ({"dim": 30}, "kv.dim"),
        ({"max_clusters": 4, "lanes": 8}, "kv.max_clusters"),
        ({"alpha": 1.5}, "kv.alpha"),
        ({"hamming": 40}, "kv.hamming"),
        ({"buckets": 12}, "kv.buckets"),
        ({"max_cluster_size": 300}, "kv.max_cluster_size"),
        ({"bogus": 1}, "kv.bogus"),
    ],
)
def test_bad_kv_fields_are_named(kv, field):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"tlmm": {}, "kv": kv}, "x.yaml")
    msg = str(e.value)
    assert msg.startswith(f"x.yaml: {field}") and "\n" not in msg


# ---------------------------------------------------------------- reference
def test_hyperplanes_are_fixed_by_the_seed():
    a, b = hyperplane_bits(32, 32, 1), hyperplane_bits(32, 32, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, hyperplane_bits(32, 32, 2))
    assert 0.4 < a.mean() < 0.6
    assert [reciprocal(n) for n in (1, 2, 3, 64)] == [65536, 32768, 21845, 1024]


def test_signature_is_scale_invariant():
    rng = np.random.default_rng(0)
    hp = np.where(hyperplane_bits(32, 32, 1), 1, -1)
    k = rng.integers(-60, 60, 32)
    assert signature(k, hp) == signature(2 * k, hp)


def test_clustering_rules():
    kv = KvConfig(max_clusters=8, max_cluster_size=4, lanes=8, hamming=0)
    t = _table(kv)
    k = np.arange(32, dtype=np.int64) - 16
    assert t.insert(k) == (0, True, False)
    assert [t.insert(k)[:2] for _ in range(3)] == [(0, False)] * 3  # same signature joins
    assert t.insert(k) == (1, True, False)  # cluster 0 is full: a new one
    assert t.counts == [4, 1] and t.members[0] == [0, 1, 2, 3]
    # fill the table with far keys, then keys are force-joined, then dropped
    rng = np.random.default_rng(1)
    while t.n < kv.max_clusters:
        t.insert(rng.integers(-128, 128, 32))
    while sum(t.counts) < kv.max_clusters * kv.max_cluster_size:
        cid, new, full = t.insert(rng.integers(-128, 128, 32))
        assert not new and not full
    assert t.insert(k) == (-1, False, True)


def test_selection_stops_at_the_threshold():
    rng = np.random.default_rng(2)
    t = _table()
    base = rng.integers(-128, 128, (5, 32))
    for i in range(200):
        t.insert(np.clip(base[i % 5] + rng.integers(-15, 16, 32), -128, 127))
    for _ in range(20):
        q = rng.integers(-128, 128, 32)
        s = t.select(q)
        lo = min(s.scores)
        w = [(s.scores[c] - lo) * t.counts[c] for c in s.clusters]
        assert sum(w) >= s.threshold and sum(w[:-1]) < s.threshold  # exits right after reaching Th
        assert s.threshold == (77 * s.row_sum) >> 8
        assert len(set(s.clusters)) == len(s.clusters) == s.visited
        # walk order follows buckets from the top: scores never rise by more than a bucket's width
        sc = [s.scores[c] for c in s.clusters]
        assert sc[0] >= max(s.scores) - (max(s.scores) - lo) / 2
    toks = t.tokens([0, 1])
    assert list(toks) == sorted(t.members[0] + t.members[1])


# ---------------------------------------------------------------- model vs reference
@pytest.mark.parametrize(
    "kv",
    [
        KvConfig(),
        load_config("configs/kv-small.yaml").kv,
        KvConfig(dim=16, hyperplanes=64, hamming=20, lanes=16, max_clusters=16, buckets=64, alpha=1.0),
        KvConfig(
            dim=4, hyperplanes=1, hamming=0, lanes=1, max_clusters=1, max_cluster_size=1, buckets=1, alpha=0.0
        ),
    ],
)
def test_model_matches_reference(kv):
    for case in directed_cases(kv, seed=3) + random_cases(kv, 8, seed=4):
        run = kv_model_matches_reference(kv, case)
        assert run.cycles == max(x for x in run.command_cycles if x is not None) + 1


def test_model_cycles_follow_the_schedule():
    """Unstalled: INSERT = 1 + beats + (max(1, ceil(n/lanes)) + 2) + 1 + beats + 1; QUERY = 1 + beats +
    (n·beats + 5) + 2 + (n + 2) + 1 + selected + 1 (docs/design.md, KV retrieval engine)."""
    kv = KvConfig()
    rng = np.random.default_rng(5)
    keys = rng.integers(-128, 128, (20, 32)).astype(np.int8)
    t = _table(kv)
    cmds, prev = [("reset",)], 0
    expected_ends = []
    clock = 1  # RESET takes cycle 0
    for k in keys:
        n = t.n
        t.insert(k)
        clock += 1 + kv.beats + max(1, -(-n // kv.lanes)) + 2 + 1 + kv.beats + 1
        expected_ends.append(clock - 1)
        cmds.append(("insert", k))
    q = rng.integers(-128, 128, 32).astype(np.int8)
    sel = t.select(q)
    clock += 1 + kv.beats + t.n * kv.beats + 5 + 2 + t.n + 2 + 1 + sel.visited + 1
    expected_ends.append(clock - 1)
    cmds.append(("query", q))
    run = run_commands(kv, cmds)
    assert run.command_cycles[1:] == expected_ends
    del prev


def test_model_rejects_bad_commands():
    kv = KvConfig()
    with pytest.raises(ValueError, match="shape"):
        run_commands(kv, [("insert", np.zeros(31))])
    with pytest.raises(ValueError, match="unknown KV command"):
        run_commands(kv, [("scan",)])


# ---------------------------------------------------------------- RTL co-simulation
@pytest.mark.verilator
@pytest.mark.torch  # trace replays quantize keys with models.resv (torch)
def test_cosim_default_with_trace_replays(repo):
    acfg = load_config(repo / "configs" / "default.yaml")
    paths = sorted((repo / "traces").glob("*.npz"))
    assert paths, "committed traces missing"
    cases = (
        directed_cases(acfg.kv, 0) + random_cases(acfg.kv, 4, 1) + trace_cases(acfg.kv, paths[:2], heads=1)
    )
    rep = run_kv_cosim(acfg, cases, build_root=repo / "build" / "cosim", quiet=True)
    assert len(rep.rows) == len(cases) and not cosim_mismatches(rep), cosim_mismatches(rep)
    rows = {r["name"]: r for r in rep.rows}
    assert rows["vec-starved"]["rtl_cycles"] > rows["out-backpressure"]["rtl_cycles"]


@pytest.mark.verilator
def test_cosim_small_config(repo):
    acfg = load_config(repo / "configs" / "kv-small.yaml")
    cases = directed_cases(acfg.kv, 5) + random_cases(acfg.kv, 8, 6)
    rep = run_kv_cosim(acfg, cases, build_root=repo / "build" / "cosim", quiet=True)
    assert not cosim_mismatches(rep), cosim_mismatches(rep)


def test_replay_commands_interleave_queries():
    keys = np.zeros((5, 4), np.int8)
    qs = np.ones((2, 5, 4), np.int8)
    cmds = replay_commands(keys, qs, query_every=2, start=1)
    assert [c[0] for c in cmds] == [
        "reset",
        "insert",
        "insert",
        "query",
        "query",
        "insert",
        "insert",
        "query",
        "query",
        "insert",
    ]


def test_trace_head_dim_mismatch_is_reported(repo):
    kv = dataclasses.replace(KvConfig(), dim=16)
    with pytest.raises(ValueError, match="head_dim 32"):
        trace_cases(kv, sorted((repo / "traces").glob("*.npz"))[:1])


@pytest.mark.verilator
def test_cli_cosim_kv_json(repo):
    out = cli_json("cosim", "kv", "--config", repo / "configs" / "kv-small.yaml", "--random", 2)
    assert out["engine"] == "kv" and out["ok"] and out["cycles_equal"]
    r = run_cli("cosim", "tlmm", "--workload", "traces", expect=2)
    assert "not a workload of the tlmm engine" in r.stderr
