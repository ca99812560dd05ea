"""KV policies (models/kvpolicy.py) and the ``tritium kv`` replay/plot/report commands (tritium/kv.py)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from hw.config import load_config
from models import kvpolicy as kp
from traces.format import load_trace, save_trace

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parent.parent
TRACE = "traces/tiny-val-0.npz"
CKPT = str(REPO / "models/checkpoints/tiny.pt")


@pytest.fixture(scope="module")
def acfg():
    return load_config(REPO / "configs/default.yaml")


@pytest.fixture(scope="module")
def real():
    return load_trace(REPO / TRACE)


@pytest.fixture(scope="module")
def short(real):
    return real.prefix(64)


def _stream(real, layer=1, head=0):
    g = real.group
    return real.keys[layer, head], real.queries[layer, head * g : (head + 1) * g]


def test_budget_parsing():
    assert kp.parse_budget("64") == 64 and kp.parse_budget("0.25") == 0.25 and kp.parse_budget(None) is None
    for bad in ("0", "-3", "1.5", "x", "0.0"):
        with pytest.raises(ValueError):
            kp.parse_budget(bad)
    assert (
        kp.budget_tokens(0.25, 100) == 25
        and kp.budget_tokens(0.01, 10) == 1
        and kp.budget_tokens(64, 10) == 10
    )


def test_full_policy_recall_and_fraction_are_one(short):
    r = kp.evaluate(short, kp.make_policy("full"))
    assert r["retrieved_fraction"] == 1.0 and r["recall"] == pytest.approx(1.0, abs=1e-12)


def test_streaming_keeps_sinks_and_window(real):
    k, q = _stream(real)
    for budget in (24, 0.3):
        sel = kp.StreamingPolicy(budget).select(k, q)
        for t in range(16, 256):
            n = kp.budget_tokens(budget, t + 1)
            want = np.zeros(256, bool)
            want[:4] = True
            want[t + 1 - (n - 4) : t + 1] = True
            np.testing.assert_array_equal(sel.mask[t], want)
            assert sel.mask[t].sum() == n
        assert sel.mask[:16].sum() == 16 * 17 // 2  # the prompt rows are full


def test_h2o_budget_and_recent_window(real):
    k, q = _stream(real)
    sel = kp.H2OPolicy(0.25).select(k, q)
    for t in range(16, 256):
        n = kp.budget_tokens(0.25, t + 1)
        row = sel.mask[t]
        assert row.sum() <= n and not row[t + 1 :].any()
        recent = max(1, round(0.5 * n))
        assert row[t + 1 - recent : t + 1].all(), t
    # evicted tokens never return
    for t in range(17, 256):
        assert not (sel.mask[t, :t] & ~sel.mask[t - 1, :t]).any()


def test_quest_bound_is_an_upper_bound(real):
    rng = np.random.default_rng(0)
    for layer, head in ((0, 0), (3, 1)):
        k, q = _stream(real, layer, head)
        for t in rng.integers(0, 256, 20):
            t = int(t)
            b = kp.quest_bounds(k, q[:, t], t, 16)
            true = q[:, t].astype(np.float64) @ k[: t + 1].astype(np.float64).T
            for p in range(t // 16 + 1):
                assert (b[:, p] >= true[:, p * 16 : min(t + 1, p * 16 + 16)].max(axis=1) - 1e-9).all()
    # random data, partial last page
    k = rng.standard_normal((37, 8)).astype(np.float32)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    b = kp.quest_bounds(k, q, 36, 16)
    assert b.shape == (2, 3)
    assert (b[:, 2] >= (q.astype(np.float64) @ k[32:37].T.astype(np.float64)).max(axis=1) - 1e-9).all()


def test_quest_budget_and_pages(real):
    k, q = _stream(real)
    sel = kp.QuestPolicy(48, page=16).select(k, q)
    for t in range(16, 256):
        row = sel.mask[t]
        assert 1 <= row.sum() <= 48 and not row[t + 1 :].any()
        pages = row[: (t // 16 + 1) * 16].reshape(-1, 16) if (t + 1) % 16 == 0 else None
        if pages is not None:  # whole pages only
            assert all(p.all() or not p.any() for p in pages)


def test_matched_fraction_budgets(short):
    for name in ("streaming", "h2o"):
        r = kp.evaluate(short, kp.make_policy(name, 0.3))
        assert r["retrieved_fraction"] == pytest.approx(0.3, abs=0.02)


def test_resv_policy_uses_the_reference(real, acfg, monkeypatch):
    from models import resv

    k, q = _stream(real, 2, 1)
    calls = {"insert": 0, "select": 0}
    orig_insert, orig_select = resv.ClusterTable.insert, resv.ClusterTable.select

    def insert(self, key):
        calls["insert"] += 1
        return orig_insert(self, key)

    def select(self, qv):
        calls["select"] += 1
        return orig_select(self, qv)

    monkeypatch.setattr(resv.ClusterTable, "insert", insert)
    monkeypatch.setattr(resv.ClusterTable, "select", select)
    sel = kp.ResvPolicy(acfg.kv).select(k, q)
    assert calls == {"insert": 256, "select": 240 * 2}
    monkeypatch.undo()
    # recompute by hand at a few steps
    table = resv.ClusterTable(acfg.kv)
    kq, qq = resv.quantize_keys(k), resv.quantize_keys(q)
    it = 0
    for t in range(256):
        table.insert(kq[t])
        if t < 16:
            continue
        sels = [table.select(qq[h, t]) for h in range(2)]
        assert [s.clusters for s in sels] == sel.clusters[it : it + 2]
        assert [s.visited / s.n_clusters for s in sels] == sel.visited[it : it + 2]
        it += 2
        if t in (16, 100, 255):
            want = np.zeros(256, bool)
            want[table.tokens(sorted(set(sels[0].clusters) | set(sels[1].clusters)))] = True
            np.testing.assert_array_equal(sel.mask[t], want)
    # a local window on top keeps the last tokens and everything ReSV chose
    win = kp.ResvPolicy(acfg.kv, recent=8).select(k, q)
    assert win.clusters == sel.clusters and (win.mask >= sel.mask).all()
    assert all(win.mask[t, t - 7 : t + 1].all() for t in range(16, 256))
    # alpha is the knob: more alpha, more tokens
    lo = kp.ResvPolicy(acfg.kv, alpha=0.1).select(k, q).mask.sum()
    hi = kp.ResvPolicy(dataclasses.replace(acfg.kv, alpha=0.1), alpha=0.6).select(k, q).mask.sum()
    assert lo < sel.mask.sum() < hi


def test_restricted_forward(short):
    from traces.record import load_model

    model = load_model(CKPT)
    full = kp.evaluate(short, kp.make_policy("full"))["masks"]
    base = kp.restricted_nll(model, short.tokens, None)
    np.testing.assert_array_equal(
        kp.restricted_nll(model, short.tokens, full), base
    )  # all-True masks: identical
    only_self = np.broadcast_to(np.eye(64, dtype=bool), full.shape).copy()
    assert kp.restricted_nll(model, short.tokens, only_self).mean() > base.mean() + 0.1
    from models import hostops

    assert hostops.softmax.__name__ == "softmax" and hostops.softmax.__module__ == "models.hostops"


# ---------------------------------------------------------------- tritium kv
def test_replay_resv_model_matches_reference(short, acfg):
    from tritium.kv import replay

    r = replay(short, acfg, "resv")
    assert r["model_matches_reference"] is True
    assert r["cycles"] > 0 and r["energy_j_modeled"] > 0 and 0 < r["early_exit_fraction"] <= 1
    assert r["queries"] == 4 * 2 * 2 * (64 - 16) and r["inserts"] == 4 * 2 * 64


def test_cli_replay_json_and_errors(repo, tmp_path, capsys):
    from tritium.cli import main

    assert main(["kv", "replay", str(repo / TRACE), "--policy", "streaming", "--budget", "32", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["policy"] == "streaming" and 0 < r["retrieved_fraction"] < 1 and 0 < r["recall"] < 1
    assert main(["kv", "replay", str(tmp_path / "none.npz"), "--policy", "quest"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.npz" in err and err.startswith("tritium: error:")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert main(["kv", "replay", str(bad)]) == 2
    assert "bad.npz" in capsys.readouterr().err
    assert main(["kv", "replay", str(repo / TRACE), "--policy", "h2o", "--budget", "1.7"]) == 2
    assert "budget" in capsys.readouterr().err
    assert main(["kv", "replay", str(repo / TRACE), "--config", str(tmp_path / "no.yaml")]) == 2


def test_cli_plot_and_report(short, tmp_path, capsys):
    from tritium.cli import main

    p = save_trace(short, tmp_path / "short.npz")
    png = tmp_path / "out" / "recall.png"
    assert main(["kv", "plot", str(p), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(png.parent.glob("*.tmp*"))
    capsys.readouterr()
    out = tmp_path / "rep"
    assert main(["kv", "report", str(p), "--out", str(out), "--checkpoint", CKPT, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    rows = {s["policy"]: s for s in rep["summary"]}
    assert set(rows) == {"resv", "resv+recent8", "streaming", "h2o", "quest", "full"}
    assert rows["resv+recent8"]["retrieved_fraction"] > rows["resv"]["retrieved_fraction"]
    assert rows["full"]["recall"] == pytest.approx(1.0) and rows["resv"]["early_exit_fraction"] > 0
    assert rows["streaming"]["retrieved_fraction"] == pytest.approx(
        rows["resv"]["retrieved_fraction"], abs=0.03
    )
    assert all(s["ppl_per_byte"] > 1 for s in rep["summary"])
    md = (out / "report.md").read_text()  # report.md: what was run, the table, the column definitions
    assert "\n| policy |" in md and "Columns:" in md and (out / "recall.png").exists()


def test_closed_loop_selects_on_the_restricted_models_qk(short, acfg):
    from traces.record import load_model

    model = load_model(CKPT)
    base = kp.restricted_nll(model, short.tokens, None)
    nll, masks = kp.closed_loop_nll(model, short.tokens, kp.make_policy("full"))
    np.testing.assert_array_equal(nll, base)
    pol = kp.make_policy("resv", kvcfg=acfg.kv)
    nll, masks = kp.closed_loop_nll(model, short.tokens, pol)
    open_masks = kp.evaluate(short, pol)["masks"]
    np.testing.assert_array_equal(masks[0], open_masks[0])  # layer 0 sees the same q/k
    assert (masks[1:] != open_masks[1:]).any()  # later layers see restricted inputs
    np.testing.assert_array_equal(nll, kp.restricted_nll(model, short.tokens, masks))
