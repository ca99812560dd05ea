"""Long context (issue 16 part 4): the tiny-long checkpoint, ``tritium kv ppl`` (models/kvppl.py), the traces
recorded at 1024 tokens (traces/long/) and the KV configs at BitNet head sizes. Nothing here trains."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import kv_model_matches_reference

from hw.config import load_config

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "models/checkpoints/tiny.pt"
LONG = REPO / "models/checkpoints/tiny-long.safetensors"
LONG_TRACES = sorted((REPO / "traces" / "long").glob("*.npz"))


@pytest.fixture(scope="module")
def acfg():
    return load_config(REPO / "configs/default.yaml")


@pytest.fixture(scope="module")
def tiny():
    from models.checkpoint import load_checkpoint

    return load_checkpoint(TINY)


@pytest.fixture(scope="module")
def long_model():
    from models.checkpoint import load_checkpoint

    return load_checkpoint(LONG)


# ---------------------------------------------------------------- the checkpoint
def test_tiny_long_checkpoint_is_the_preset_in_safetensors(long_model):
    from models.presets import PRESETS

    assert LONG.read_bytes()[8:9] == b"{"  # safetensors header, nothing pickled
    assert long_model.config == PRESETS["tiny-long"] and long_model.config.max_seq == 1024
    assert {**PRESETS["tiny"].to_dict(), "max_seq": 1024} == PRESETS["tiny-long"].to_dict()
    res = json.loads(LONG.with_suffix(".json").read_text())
    assert res["preset"] == "tiny-long" and res["train"]["init"]["checkpoint"] == "tiny.pt"
    assert res["command"].startswith("python -m models.train --preset tiny-long --init")


@torch.no_grad()
def _nll_by_position(model, tokens):
    toks = torch.as_tensor(tokens, dtype=torch.int64).reshape(1, -1)
    logits = model(toks, mode="fake")[0, :-1]
    return torch.nn.functional.cross_entropy(logits, toks[0, 1:], reduction="none").numpy()


def test_long_model_uses_its_long_context(long_model):
    """Fake mode (float attention, fast) on two 1024-byte validation windows: the fine-tuned model predicts
    positions 512..1023 far better than the 256-position tiny model does with its RoPE extended there, and it
    predicts bytes 768..1023 at least as well from the whole window as from the last 512 bytes alone (the
    long context helps, or at least does not hurt; the extended tiny model fails both)."""
    from models.kvppl import validation_windows
    from traces.record import load_model

    wins = validation_windows(1024, 2, offset=4096)
    extended = load_model(TINY, max_seq=1024)
    lng = np.stack([_nll_by_position(long_model, w) for w in wins])
    ext = np.stack([_nll_by_position(extended, w) for w in wins])
    assert lng[:, 511:].mean() < ext[:, 511:].mean() - 0.1
    short = np.stack([_nll_by_position(long_model, w[512:]) for w in wins])
    assert lng[:, 767:].mean() < short[:, 255:].mean() + 0.02
    ext_short = np.stack([_nll_by_position(extended, w[512:]) for w in wins])
    assert not ext[:, 767:].mean() < ext_short[:, 255:].mean() + 0.02


# ---------------------------------------------------------------- kv ppl
def test_kv_shares_counts_selected_over_visible():
    from models.kvppl import kv_shares

    s = 6
    m = np.tril(np.ones((1, 1, s, s), dtype=bool))
    m[0, 0, 4, :3] = False  # step 4 keeps 2 of 5
    frac, sel, vis, last = kv_shares(m, first=4)
    assert (sel, vis, last) == (2 + 6, 5 + 6, 6)
    assert frac == pytest.approx((2 / 5 + 1) / 2)


@pytest.mark.parametrize("name", ["resv", "h2o", "quest"])
def test_one_pass_closed_loop_equals_layer_by_layer(tiny, acfg, name):
    from models.kvpolicy import closed_loop_nll, make_policy
    from models.kvppl import closed_loop_one_pass, validation_windows

    (w,) = validation_windows(64, 1, offset=1000)
    pol = make_policy(name, 0.3, kvcfg=acfg.kv, **({"alpha": 0.3, "recent": 4} if name == "resv" else {}))
    a, ma = closed_loop_one_pass(tiny, w, pol)
    b, mb = closed_loop_nll(tiny, w, pol)
    assert np.array_equal(ma, mb) and np.array_equal(a, b)
    assert not ma[:, :, 16:].all()  # something was left out


def test_cli_kv_ppl_json(capsys):
    from models.kvpolicy import restricted_nll
    from models.kvppl import validation_windows
    from traces.record import load_model
    from tritium.cli import main

    args = ["kv", "ppl", "--checkpoint", str(TINY), "--context", "64", "--windows", "2", "--offset", "500"]
    assert (
        main([*args, "--policy", "resv", "streaming", "--recent", "0", "8", "--budget", "0.5", "--json"]) == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert (r["context"], r["windows"], r["first"], r["loop"]) == (64, 2, 16, "closed")
    assert [x["setting"] for x in r["rows"]] == [
        "resv(alpha=0.3)",
        "resv(alpha=0.3, recent=8)",
        "streaming(budget=0.5)",
    ]
    model = load_model(TINY)
    dense = np.concatenate([restricted_nll(model, w, None)[16:] for w in validation_windows(64, 2, 500)])
    assert r["dense"]["ppl_per_byte"] == pytest.approx(float(np.exp(dense.mean())), abs=1e-4)
    resv, recent, stream = r["rows"]
    assert 0 < resv["kv_read_share"] < recent["kv_read_share"] < 1
    # StreamingLLM at half the visible prefix: Σ round(0.5·(t+1)) / Σ (t+1) over steps 16..63
    t = np.arange(16, 64)
    want = np.maximum(1, np.round(0.5 * (t + 1))).sum() / (t + 1).sum()
    assert stream["kv_read_share"] == pytest.approx(want, abs=1e-4)
    assert stream["retrieved_fraction"] == pytest.approx(
        np.mean(np.maximum(1, np.round(0.5 * (t + 1))) / (t + 1)), abs=1e-4
    )


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--context", "512"], "exceeds the checkpoint's max_seq 256"),
        (["--context", "64", "--config", "configs/kv-d96.yaml"], "kv.dim 96"),
        (["--context", "64", "--windows", "5000"], "exceed the validation text"),
        (["--context", "64", "--policy", "full"], "--policy 'full'"),
        (["--context", "64", "--budget", "1.5", "--policy", "h2o"], "budget"),
    ],
)
def test_cli_kv_ppl_bad_input(extra, msg, capsys):
    from tritium.cli import main

    assert main(["kv", "ppl", "--checkpoint", str(TINY), *extra]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- traces at 1024
def test_long_traces_are_the_long_model_at_1024():
    from traces.format import load_trace
    from traces.record import file_sha256, record

    assert LONG_TRACES, "traces/long/*.npz missing"
    sha = file_sha256(LONG)
    from traces.record import load_model

    model = load_model(LONG)
    for p in LONG_TRACES:
        tr = load_trace(p)
        assert tr.n_tokens == 1024 and tr.head_dim == 32 and tr.meta["checkpoint_sha256"] == sha
        # in int mode a prefix's q/k do not depend on what follows: re-record the first 48 tokens
        keys, queries, _ = record(model, torch.as_tensor(tr.tokens[:48]))
        assert np.array_equal(keys, tr.keys[:, :, :48]) and np.array_equal(queries, tr.queries[:, :, :48])


def test_long_trace_replay_model_matches_reference(acfg):
    from traces.format import load_trace
    from tritium.kv import replay

    tr = load_trace(LONG_TRACES[0]).prefix(96)
    r = replay(tr, acfg, "resv")
    assert r["model_matches_reference"] is True and 0 < r["retrieved_fraction"] < 1


# ---------------------------------------------------------------- KV configs at BitNet head sizes
@pytest.mark.parametrize("name, preset", [("kv-d96", "bitnet-0.7b"), ("kv-d128", "bitnet-2b")])
def test_kv_configs_match_bitnet_heads_and_the_model_matches_reference(name, preset):
    from models.presets import PRESETS
    from sim.kv_cases import directed_cases, random_cases

    kv = load_config(REPO / "configs" / f"{name}.yaml").kv
    assert kv.dim == PRESETS[preset].head_dim
    for case in directed_cases(kv, seed=1)[:3] + random_cases(kv, 2, seed=2):
        kv_model_matches_reference(kv, case)
