"""hw/data_files.py: shipped data is found through importlib.resources, user paths win over shipped ones."""

import os
from pathlib import Path

import pytest
from conftest import run_cli

from hw import data_files
from hw.config import load_config


def test_every_shipped_file_is_found(repo):
    assert data_files.default_config() == repo / "configs" / "default.yaml"
    assert (data_files.energy_dir() / "ecp5.yaml").is_file()
    assert data_files.calibration_csv().is_file()
    assert data_files.tiny_checkpoint().is_file()
    assert [p.name for p in data_files.trace_files()] == [f"tiny-val-{i}.npz" for i in range(4)]
    with pytest.raises(data_files.DataFileError, match="configs/nope.yaml"):
        data_files.data_path("configs/nope.yaml")
    with pytest.raises(data_files.DataFileError, match="not a shipped data file"):
        data_files.data_path("elsewhere/x.yaml")


def test_resolve_prefers_the_users_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = data_files.resolve("configs/kv260.yaml")
    assert shipped.is_absolute() and shipped.name == "kv260.yaml"
    assert load_config("configs/kv260.yaml").name == "kv260"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "kv260.yaml").write_text("name: mine\n")
    assert data_files.resolve("configs/kv260.yaml") == Path("configs/kv260.yaml")
    # not shipped and absent: returned unchanged, so the error names what the user wrote
    assert str(data_files.resolve("configs/missing.yaml")) == os.path.join("configs", "missing.yaml")
    assert str(data_files.resolve("../configs/default.yaml")) == "../configs/default.yaml"


def test_cli_finds_shipped_config_from_another_folder(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(data_files.default_config().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    r = run_cli("config", "check", "configs/icebreaker.yaml", cwd=tmp_path, env=env)
    assert "valid (icebreaker" in r.stdout, r.stderr
