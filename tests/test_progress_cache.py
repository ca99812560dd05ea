"""The Program cache (compiler/cache.py) and the progress helper (sim/progress.py): a hit returns the identical
Program without compiling; a damaged entry is detected, reported and recompiled; keys change with what
determines a Program; bars stay off stderr unless asked for and never touch stdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.cache import STATS, ProgramCache, ProgramSource, default_root, model_identity
from hw.config import config_from_dict, load_config
from sim import progress as prog_mod

REPO = Path(__file__).resolve().parent.parent
STEP = (6, 0)


@pytest.fixture(scope="module")
def acfg():
    return load_config(REPO / "configs" / "kv260.yaml")


def _source(acfg, cache, calls: list | None = None, model: str = "tiny") -> ProgramSource:
    from tritium.estimate import _compiled

    def compiled():
        if calls is None:
            raise AssertionError("compiled on a cache hit")
        calls.append(1)
        return _compiled(model, acfg)

    return ProgramSource(model, acfg, compiled, cache)


@pytest.mark.torch
def test_hit_returns_the_identical_program(acfg, tmp_path):
    cache = ProgramCache(tmp_path)
    STATS.clear()
    calls: list = []
    first = _source(acfg, cache, calls).program(*STEP)
    assert calls == [1] and STATS["miss"] == 1 and STATS["stored"] == 1
    assert _source(acfg, cache, calls).max_seq() == first.meta["model"]["max_seq"]
    again = _source(acfg, cache, None)  # compiling now fails the test
    second = again.program(*STEP)
    assert again.max_seq() == first.meta["model"]["max_seq"]
    assert STATS["hit"] == 1
    assert second.digest() == first.digest()
    assert (second.words == first.words).all() and second.listing == first.listing


@pytest.mark.torch
@pytest.mark.parametrize("damage", ["listing", "npz", "json", "missing"])
def test_damaged_entry_is_recompiled(acfg, tmp_path, damage):
    logs: list[str] = []
    cache = ProgramCache(tmp_path, log=logs.append)
    good = _source(acfg, cache, []).program(*STEP)
    (entry,) = (tmp_path / "programs").iterdir()
    if damage == "listing":  # same size, one byte changed: only the hashes notice
        p = entry / "listing.txt"
        data = bytearray(p.read_bytes())
        data[-2] ^= 1
        p.write_bytes(bytes(data))
    elif damage == "npz":
        p = entry / "program.npz"
        p.write_bytes(p.read_bytes()[:-10])
    elif damage == "json":
        (entry / "program.json").write_text("{")
    else:
        (entry / "listing.txt").unlink()
    STATS.clear()
    calls: list = []
    again = _source(acfg, cache, calls).program(*STEP)
    assert STATS["damaged"] == 1 and STATS["hit"] == 0 and calls == [1]
    assert again.digest() == good.digest()
    assert any("damaged entry" in m for m in logs)
    STATS.clear()
    assert _source(acfg, cache, None).program(*STEP).digest() == good.digest()  # rewritten, now a hit
    assert STATS["hit"] == 1


@pytest.mark.torch
def test_damaged_model_facts_are_recomputed(acfg, tmp_path):
    cache = ProgramCache(tmp_path)
    n = _source(acfg, cache, []).max_seq()
    (facts,) = (tmp_path / "models").iterdir()
    facts.write_text(json.dumps({"max_seq": "many"}))
    STATS.clear()
    calls: list = []
    assert _source(acfg, cache, calls).max_seq() == n and calls == [1] and STATS["damaged"] == 1


def test_keys_follow_what_determines_a_program(acfg, tmp_path):
    cache = ProgramCache(tmp_path)
    opts = ProgramSource.OPTIONS
    base = cache.base_key("tiny", acfg, opts)
    other = config_from_dict({**acfg.to_dict(), "memory": {**acfg.to_dict()["memory"], "latency": 99}})
    assert cache.base_key("tiny", other, opts) != base
    assert cache.base_key("tiny", acfg, {**opts, "capture_len": 4}) != base
    ck = tmp_path / "m.safetensors"
    ck.write_bytes(b"one")
    a = model_identity(str(ck))
    ck.write_bytes(b"two")
    assert model_identity(str(ck)) != a and "content_sha256" in a
    assert model_identity("tiny") == {"spec": "tiny"}


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITIUM_CACHE_DIR", str(tmp_path / "a"))
    assert default_root() == tmp_path / "a"
    monkeypatch.delenv("TRITIUM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x" / "tritium"


@pytest.mark.torch
def test_estimate_with_cache_equals_without(acfg, tmp_path):
    from tritium.estimate import estimate

    cache = ProgramCache(tmp_path)
    plain = estimate("tiny", acfg, 6, 20)
    STATS.clear()
    first = estimate("tiny", acfg, 6, 20, cache=cache)
    second = estimate("tiny", acfg, 6, 20, cache=cache)
    assert STATS["hit"] == 2 and STATS["stored"] == 2
    for k in ("ttft_s", "decode_s_per_token", "j_per_token", "dram_bytes_per_token"):
        assert plain[k] == first[k] == second[k]


def test_progress_off_unless_asked(monkeypatch, capsys):
    monkeypatch.delenv("TRITIUM_PROGRESS", raising=False)
    prog_mod.set_enabled(None)
    assert not prog_mod.enabled()  # pytest's stderr is not a terminal
    assert list(prog_mod.track(range(3), desc="quiet")) == [0, 1, 2]
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    monkeypatch.setenv("TRITIUM_PROGRESS", "1")
    with prog_mod.progress(2, "loud") as bar:
        bar.stage("now")
        bar.update(2)
    out, err = capsys.readouterr()
    assert out == "" and "loud" in err
    prog_mod.set_enabled(False)  # what --json does: wins over the environment
    try:
        assert not prog_mod.enabled()
        list(prog_mod.track(range(2), desc="json"))
        assert capsys.readouterr() == ("", "")
    finally:
        prog_mod.set_enabled(None)
