"""Hostile inputs: every YAML a user gives is read by the bounded reader (hw/yaml_safe.py), so each case
below must end in a one-line ConfigError naming the file — in process, and through `tritium config check`
(exit 2, one line on stderr, no traceback) within 1 GiB of address space and 30 s."""

import os
import resource
import time

import pytest
from conftest import run_cli

from hw import yaml_safe
from hw.config import ConfigError, load_config

GOOD = "name: t\ntlmm:\n  group_size: 3\n  tables: 8\n  columns: 8\n"


def _alias_bomb() -> str:
    """'billion laughs': 10 levels of 9 aliases each expand to 9^9 (387 M) strings from ~330 bytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _list_of(n_per_level: int, levels: int) -> str:
    """A list of n_per_level^levels zeros built with aliases (25M items from 5 levels of 30)."""
    lines = ["l0: &l0 [" + ",".join(["0"] * n_per_level) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * n_per_level) + "]")
    return "\n".join(lines) + "\n"


# name -> (file contents or a callable making the file, words the message must hold)
CASES = {
    "alias_bomb": (_alias_bomb(), "aliases are expanded"),
    "huge_list_by_aliases": (_list_of(30, 5), "aliases are expanded"),
    "huge_flow_list": ("tlmm: [" + "0," * 400_000 + "0]\n", "aliases are expanded"),
    "recursive_alias": ("tlmm: &a [1, *a]\n", "recursive alias"),
    "deep_flow_nesting": ("tlmm: " + "[" * 1024 + "]" * 1024 + "\n", "nest"),
    "deep_unclosed_nesting": ("tlmm: " + "[" * 1024 + "\n", "nest"),
    "deep_block_nesting": ("".join("  " * i + f"k{i}:\n" for i in range(200)), "nested deeper"),
    "duplicate_key": (GOOD + "  tables: 4\n", "duplicate key 'tables' (first at line 4)"),
    "duplicate_section": (GOOD + "tlmm: {}\n", "duplicate key 'tlmm'"),
    "non_utf8": (b"tlmm:\n  tables: \xff\xfe8\n", "not UTF-8"),
    "huge_int": (GOOD.replace("tables: 8", "tables: " + "9" * 5000), "integer of 5000 characters"),
    "large_int": (GOOD.replace("tables: 8", "tables: " + "9" * 99), "tlmm.tables: <"),
    "1e9_dims": (GOOD + "  max_k: 1000000000\n", "tlmm.max_k: 1000000000 is out of range"),
    "1e9_float_dims": (GOOD + "  max_n: 1.0e9\n", "tlmm.max_n: expected an integer"),
    "oversized_file": ("# padding\n" * 200_000 + GOOD, "larger than 1048576"),
    "python_tag": ("tlmm: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
    "long_unknown_key": (GOOD + "  ? " + "k" * 5000 + "\n  : 1\n", "unknown field"),
    "long_bad_value": (GOOD.replace("tables: 8", "tables: " + "x" * 100_000), "expected an integer"),
    "empty_file": ("", "top level: expected a mapping"),
    "fifo": ("FIFO", "not a regular file"),
    "dev_zero": ("/dev/zero", "not a regular file"),
    "directory": ("DIR", "a directory"),
}


def make(tmp_path, name: str) -> str:
    content, _ = CASES[name]
    if content == "/dev/zero":
        return content
    path = tmp_path / f"{name}.yaml"
    if content == "FIFO":
        os.mkfifo(path)
    elif content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def check_line(msg: str, path: str, words: str, prefix: str = "") -> None:
    assert "\n" not in msg and msg.startswith(prefix + path + ":"), msg[:300]
    assert words in msg, msg[:300]
    assert len(msg) < 300, f"{len(msg)}-character error line: {msg[:300]}"


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_config_is_a_one_line_config_error(tmp_path, name):
    path = make(tmp_path, name)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert time.monotonic() - t0 < 30
    check_line(str(e.value), path, CASES[name][1])


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_config_cli_exits_2_in_bounded_memory_and_time(tmp_path, repo, name):
    path = make(tmp_path, name)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    r = run_cli("config", "check", path, expect=None, timeout=30, preexec_fn=_limit_memory, env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    check_line(lines[0], path, CASES[name][1], prefix="tritium: error: ")


def test_energy_tables_use_the_bounded_reader(tmp_path, monkeypatch):
    import sim.energy as energy

    monkeypatch.setattr(energy, "ENERGY_DIR", tmp_path)
    (tmp_path / "ecp5.yaml").write_text(_alias_bomb())
    with pytest.raises(ConfigError, match="ecp5.yaml: line .*aliases are expanded"):
        energy.load_energy("ecp5")
    (tmp_path / "ecp5.yaml").write_text("pj: {lookup: 1}\npj: {lookup: 2}\n")
    with pytest.raises(ConfigError, match="ecp5.yaml: line 2: duplicate key 'pj'"):
        energy.load_energy("ecp5")
    os.unlink(tmp_path / "ecp5.yaml")
    os.mkfifo(tmp_path / "ecp5.yaml")
    with pytest.raises(ConfigError, match="ecp5.yaml: not a regular file"):
        energy.load_energy("ecp5")


def test_reader_keeps_plain_yaml_features(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\nl: [*b, *b]\nbom: 1\n")
    assert yaml_safe.load_yaml(p) == {
        "base": {"x": 1, "y": 2},
        "d": {"x": 3, "y": 2},
        "l": [{"x": 1, "y": 2}] * 2,
        "bom": 1,
    }
    p.write_bytes(b"\xef\xbb\xbfa: 1\n")  # a UTF-8 byte-order mark is fine
    assert yaml_safe.load_yaml(p) == {"a": 1}


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("d_model", 10**9, "d_model: 1000000000 is out of range"),
        ("d_model", 1e9, "d_model: expected an integer"),
        ("max_seq", 10**12, "max_seq: 1000000000000 is out of range"),
        ("vocab", 10**40, "vocab: a huge number is out of range"),
        ("max_seq", 1 << 20, "max_seq: 1048576 × head_dim 32 exceeds"),
    ],
)
def test_checkpoint_dims_are_bounded_before_allocating(tmp_path, field, value, words):
    torch = pytest.importorskip("torch")
    from models.checkpoint import FORMAT, VERSION, CheckpointError, load_checkpoint
    from models.presets import get_config

    cfg = {**get_config("tiny").to_dict(), field: value}
    path = tmp_path / "bad.pt"
    torch.save({"format": FORMAT, "version": VERSION, "config": cfg, "state_dict": {}, "meta": {}}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    check_line(str(e.value), str(path), words)
