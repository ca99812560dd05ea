import subprocess
import sys

import pytest
from conftest import run_cli

from hw.config import ConfigError, load_config

GOOD = """name: t
clock_mhz: 100
tlmm:
  group_size: 3
  tables: 8
  columns: 8
"""


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_default_config_loads_and_derives():
    cfg = load_config().tlmm
    assert (cfg.group_size, cfg.table_entries, cfg.zero_index, cfg.index_bits) == (3, 27, 13, 5)
    assert cfg.chunk_k == cfg.group_size * cfg.tables
    assert cfg.acc_depth == cfg.tokens * -(-cfg.max_n // cfg.columns)


def test_group2_half_derivations(repo):
    cfg = load_config(repo / "configs" / "small-g2-half.yaml").tlmm
    assert (cfg.table_entries, cfg.zero_index, cfg.stored_entries, cfg.index_bits) == (9, 4, 5, 4)


@pytest.mark.parametrize(
    "text, field, words",
    [
        (GOOD + "  colums: 4\n", "tlmm.colums", "unknown field"),
        (GOOD.replace("tables: 8", "tables: eight"), "tlmm.tables", "expected an integer"),
        (GOOD.replace("tables: 8", "tables: true"), "tlmm.tables", "expected an integer"),
        (GOOD.replace("group_size: 3", "group_size: 4"), "tlmm.group_size", "out of range"),
        (GOOD + "  table_mode: quarter\n", "tlmm.table_mode", "expected one of full, half"),
        (GOOD + "  max_n: 1048576\n  columns: 1\n".replace("  columns: 1\n", ""), "tlmm.max_n", "65535"),
        (GOOD.replace("clock_mhz: 100", "clock_mhz: fast"), "clock_mhz", "expected a number"),
        ("name: t\n", "tlmm", "required field is missing"),
        ("- 1\n- 2\n", "top level", "expected a mapping"),
        ("tlmm: [1, 2\n", "line", "not valid YAML"),
        (GOOD + "extra: 1\n", "extra", "unknown field"),
        (GOOD + "gemm: {rows: 6}\n", "gemm.rows", "power of two"),
        (
            GOOD + "gemm: {rows: 8, cols: 8}\nmemory: {bus_bytes: 4}\n",
            "gemm.rows",
            "must divide memory.bus_bytes",
        ),
        (
            GOOD + "gemm: {rows: 2, cols: 2, k_tile: 4}\nmemory: {bus_bytes: 16}\n",
            "gemm.k_tile",
            "smaller than one",
        ),
        (GOOD + "gemm: {k_tile: 2}\n", "gemm.k_tile", "out of range"),
        (GOOD + "memory: {latency: 0}\n", "memory.latency", "out of range"),
        (GOOD + "memory: {bus_bytes: 24}\n", "memory.bus_bytes", "power of two"),
        (GOOD + "memory: {burst: 4}\n", "memory.burst", "unknown field"),
        (GOOD + "gemm: 3\n", "gemm", "expected a mapping"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, text, field, words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and field in msg and words in msg and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    p = write(tmp_path, GOOD.replace("tables: 8", "tables: -1"))
    r = run_cli("config", "check", p, expect=2)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "tlmm.tables" in lines[0] and str(p) in lines[0]


def test_cli_config_check_ok(repo):
    assert "lookups_per_cycle" in run_cli("config", "check", repo / "configs" / "default.yaml").stdout


def test_docs_config_md_is_generated_from_the_schema(repo):
    from hw.config import config_reference_markdown

    text = config_reference_markdown()
    assert (repo / "docs" / "config.md").read_text() == text, (
        "docs/config.md is stale: run `python -m hw.config --markdown > docs/config.md`"
    )
    for section in ("tlmm", "gemm", "kv", "memory", "device"):
        assert f"## `{section}`" in text
    assert "| `tlmm.group_size` | integer | 2..3 | `3` |" in text


def test_markdown_command_prints_the_reference(repo):
    from hw.config import config_reference_markdown

    r = subprocess.run(
        [sys.executable, "-m", "hw.config", "--markdown"], capture_output=True, text=True, cwd=repo
    )
    assert r.returncode == 0 and r.stdout == config_reference_markdown()


def test_config_objects_keep_their_dataclass_api():
    import dataclasses

    from hw.config import AcceleratorConfig, config_from_dict

    acfg = load_config()
    again = config_from_dict(acfg.to_dict(), acfg.source)
    assert again == acfg and hash(again) == hash(acfg) and again.fingerprint() == acfg.fingerprint()
    slow = dataclasses.replace(acfg, memory=dataclasses.replace(acfg.memory, beat_interval=4))
    assert slow.memory.beat_interval == 4 and slow.source == acfg.source and slow.tlmm is acfg.tlmm
    assert isinstance(acfg.clock_mhz, float) and isinstance(acfg.kv.alpha, float)
    assert AcceleratorConfig().source == "<defaults>" and AcceleratorConfig().tlmm.table_entries == 27


@pytest.mark.parametrize(
    "text, words",
    [
        (GOOD + "  tables: 4\n", "line 7: duplicate key 'tables' (first at line 5)"),
        (GOOD + "kv: {alpha: 1.5}\n", "kv.alpha: 1.5 is out of range, allowed 0.0..1.0"),
        (GOOD + "kv: {hamming: 40}\n", "kv.hamming: 40 is out of range, allowed 0..32"),
        (GOOD + "kv: {dim: 30}\n", "kv.dim: 30 must be a multiple of kv.lanes (8)"),
        (
            GOOD + "device: {family: xilinx}\n",
            "device.family: expected one of ecp5, ice40, ultrascale_plus, edge_soc",
        ),
        (GOOD + "device: {name: '  '}\n", "device.name: expected a non-empty string, got '  '"),
        (GOOD + "source: x\n", "source: unknown field"),
        (GOOD.replace("tables: 8", "tables: " + "x" * 500), "expected an integer in 1..64, got 'xxxx"),
    ],
)
def test_more_config_errors(tmp_path, text, words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and words in msg and "\n" not in msg and len(msg) < 300
