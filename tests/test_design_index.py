"""The design index (sim/cosim.py): an engine and config whose Verilator build exists are not elaborated
again; any change to what the Verilog depends on (the config, the RTL source, the build options) or a build
folder that no longer holds the recorded build elaborates as before. Also: the simulator rewrites only the
benches' asserts, and conversions run with the garbage collector paused (hw/netlist.py). The builds here are stand-ins (no Verilator): ``build_verilator`` is replaced by a
function that counts the elaborations and writes a finished-looking build folder; every co-simulation of
the suite runs through the real one."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

import sim.cosim as cosim
from hw.config import load_config
from sim.engines import ENGINES, engine
from tests.conftest import REPO, config_variant


@pytest.fixture
def fake_builds(monkeypatch):
    """Replace build_verilator: each call stands for one elaboration and writes a new finished-looking
    build folder; the list holds the engine of each call."""
    calls: list[str] = []

    def fake(top, elaboratable, label, build_root, quiet, opts):
        calls.append(top)
        bdir = Path(build_root) / f"{top}-{len(calls)}"
        bdir.mkdir(parents=True, exist_ok=True)
        (bdir / "build.json").write_text(json.dumps({"top": top, "n": len(calls), "trace": opts.trace}))
        (bdir / top).write_text("executable")
        return bdir, 0.0

    monkeypatch.setattr(cosim, "build_verilator", fake)
    return calls


def test_second_build_of_a_design_is_not_elaborated(tmp_path, fake_builds):
    acfg = load_config(REPO / "configs" / "default.yaml")
    b1, _ = cosim.build_engine("tlmm", acfg, tmp_path, quiet=True)
    b2, _ = cosim.build_engine("tlmm", acfg, tmp_path, quiet=True)
    assert fake_builds == ["tlmm"] and b1 == b2
    # the same config loaded again (a new object) hits too; another engine does not
    assert (
        cosim.build_engine("tlmm", load_config(REPO / "configs" / "default.yaml"), tmp_path, quiet=True)[0]
        == b1
    )
    cosim.build_engine("gemm", acfg, tmp_path, quiet=True)
    assert fake_builds == ["tlmm", "gemm"]
    assert not list((tmp_path / "designs").glob(".*"))  # no temporary file left beside the entries


def test_any_change_elaborates_again(tmp_path, fake_builds, monkeypatch):
    acfg = load_config(REPO / "configs" / "default.yaml")
    cosim.build_engine("tlmm", acfg, tmp_path, quiet=True)
    # a hardware field of the config
    cosim.build_engine(
        "tlmm", config_variant(acfg, tlmm={"columns": acfg.tlmm.columns * 2}), tmp_path, quiet=True
    )
    assert len(fake_builds) == 2
    # a traced build is another design
    cosim.build_engine("tlmm", acfg, tmp_path, quiet=True, waves="vcd")
    assert len(fake_builds) == 3
    # the RTL source changed
    monkeypatch.setattr(cosim, "_rtl_sources_digest", lambda: "0" * 64)
    cosim.build_engine("tlmm", acfg, tmp_path, quiet=True)
    assert len(fake_builds) == 4


def test_a_folder_that_lost_its_build_is_not_trusted(tmp_path, fake_builds):
    acfg = load_config(REPO / "configs" / "default.yaml")
    b1, _ = cosim.build_engine("kv", acfg, tmp_path, quiet=True)
    (b1 / "kv").unlink()  # the executable is gone
    b2, _ = cosim.build_engine("kv", acfg, tmp_path, quiet=True)
    assert len(fake_builds) == 2 and b2 != b1
    (b2 / "build.json").write_text("{}")  # rebuilt since with other options: the stamp differs
    cosim.build_engine("kv", acfg, tmp_path, quiet=True)
    assert len(fake_builds) == 3
    rtl = cosim._indexed_rtl(engine("kv"))
    idx = cosim.design_index_path(tmp_path, "kv", acfg, cosim.VerilatorOptions(), rtl)
    assert idx.is_file()
    idx.write_text("not json")  # a damaged entry is a miss, not an error
    cosim.build_engine("kv", acfg, tmp_path, quiet=True)
    assert len(fake_builds) == 4


def test_an_engine_with_its_own_rtl_is_always_elaborated(tmp_path, fake_builds):
    """A descriptor whose ``rtl`` is overridden (a user's engine, tests/test_engines.py's silent TLMM) under
    a registered name is neither served from the index nor recorded in it."""
    import dataclasses

    from sim import engines

    class Other(engines.Engine):
        def rtl(self, acfg):
            return object()

    tlmm = engines.engine("tlmm")
    other = Other(**{f.name: getattr(tlmm, f.name) for f in dataclasses.fields(tlmm)})
    acfg = load_config(REPO / "configs" / "default.yaml")
    b1, _ = cosim.build_engine(other, acfg, tmp_path, quiet=True)
    cosim.build_engine(other, acfg, tmp_path, quiet=True)
    assert len(fake_builds) == 2
    b3, _ = cosim.build_engine("tlmm", acfg, tmp_path, quiet=True)
    b4, _ = cosim.build_engine("tlmm", acfg, tmp_path, quiet=True)
    assert len(fake_builds) == 3 and b3 == b4 and b3 != b1
    assert cosim._indexed_rtl(other) is None and cosim._indexed_rtl(tlmm).startswith("hw.tlmm:")
    for name in ("gemm", "kv", "top"):
        assert cosim._indexed_rtl(engines.engine(name)).startswith("hw.")


def test_rtl_digest_covers_every_hw_module():
    files = sorted((REPO / "hw").rglob("*.py"))
    assert len(files) > 10 and (REPO / "hw" / "top.py") in files
    assert len(cosim._rtl_sources_digest()) == 64


def test_simulator_rewrites_the_bench_asserts_only():
    pats = cosim.BENCH_FILES.split()
    benches = [e.bench for e in ENGINES.values() if e.bench]
    assert benches
    for mod in benches + ["sim.bench_common"]:
        name = mod.rsplit(".", 1)[-1] + ".py"
        assert any(fnmatch.fnmatch(name, p) for p in pats), name
    for other in ("runtime.py", "__init__.py", "functional.py", "tlmm_model.py"):
        assert not any(fnmatch.fnmatch(other, p) for p in pats), other


def test_gc_paused_restores_the_collector():
    import gc

    from hw.netlist import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("conversion failed")
    assert gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
