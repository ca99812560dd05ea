"""Verilator's runtime objects compiled once per option key (sim/cosim.py): which objects are kept (design-
independent ones only), seeding a new build folder, and the touch between the runner's Verilator and make
commands. Every co-simulation of the suite builds with them (a broken object fails those runs)."""

from pathlib import Path

from sim.cosim import (
    VerilatorOptions,
    _design_independent,
    _keep_runtime,
    _runtime_dir,
    _seed_runtime,
    _touch_after_verilation,
)


def _obj(d: Path, name: str, deps: list[str]) -> None:
    (d / f"{name}.o").write_bytes(b"\x7fELF" + name.encode())
    (d / f"{name}.d").write_text(f"{name}.o: \\\n " + " \\\n ".join(deps) + "\n")


def test_keep_and_seed_only_design_independent_objects(tmp_path):
    root = tmp_path / "cosim"
    b1 = root / "top-aaa"
    b1.mkdir(parents=True)
    _obj(b1, "verilated", ["/usr/share/verilator/include/verilated.cpp", "/usr/include/stdio.h"])
    _obj(b1, "verilated_vpi", ["/usr/share/verilator/include/verilated_vpi.cpp"])
    _obj(b1, "verilated_x", ["/usr/share/verilator/include/x.cpp", "Vtop.h"])  # a design header: not kept
    _obj(b1, "verilated_y", [str(b1 / "Vtop__Syms.h")])  # a file of the build folder: not kept
    (b1 / "verilated_z.o").write_bytes(b"no .d file")  # no dependency list: not kept
    assert _design_independent(b1 / "verilated.o", b1)
    assert not _design_independent(b1 / "verilated_x.o", b1)
    assert not _design_independent(b1 / "verilated_y.o", b1)
    assert not _design_independent(b1 / "verilated_z.o", b1)
    opts = VerilatorOptions()
    rt = _runtime_dir(root, opts)
    assert rt.parent == root and rt != _runtime_dir(root, VerilatorOptions(trace="fst"))
    _keep_runtime(rt, b1)
    assert sorted(p.name for p in rt.iterdir()) == [
        "verilated.d",
        "verilated.o",
        "verilated_vpi.d",
        "verilated_vpi.o",
    ]
    assert [p.name for p in root.iterdir() if p.name.startswith(rt.name + ".")] == []  # no temporary left
    # kept once: a later build does not replace them
    (b1 / "verilated.o").write_bytes(b"changed")
    _keep_runtime(rt, b1)
    assert (rt / "verilated.o").read_bytes() == b"\x7fELFverilated"
    # a new build folder gets copies with their modification times
    b2 = root / "top-bbb"
    b2.mkdir()
    (b2 / "verilated_vpi.o").write_bytes(b"already there")  # not overwritten
    names = _seed_runtime(rt, b2)
    assert names == ["verilated.d", "verilated.o", "verilated_vpi.d"]
    assert (b2 / "verilated.o").read_bytes() == b"\x7fELFverilated"
    assert (b2 / "verilated.o").stat().st_mtime_ns == (rt / "verilated.o").stat().st_mtime_ns
    assert (b2 / "verilated_vpi.o").read_bytes() == b"already there"
    assert _seed_runtime(tmp_path / "absent", b2) == []


def test_touch_goes_between_verilator_and_make(tmp_path):
    class Runner:
        def __init__(self, cmds):
            self.cmds = cmds

        def _build_command(self):
            return [list(c) for c in self.cmds]

    r = Runner([["verilator", "-cc", "x.v"], ["make", "-j", "2", "-f", "Vtop.mk"]])
    _touch_after_verilation(r, tmp_path, ["verilated.d", "verilated.o", "verilated_vpi.o"])
    assert r._build_command() == [
        ["verilator", "-cc", "x.v"],
        ["touch", "-c", str(tmp_path / "verilated.o"), str(tmp_path / "verilated_vpi.o")],
        ["make", "-j", "2", "-f", "Vtop.mk"],
    ]
    other = Runner([["verilator", "--binary", "x.v"]])  # another shape: left alone
    _touch_after_verilation(other, tmp_path, ["verilated.o"])
    assert other._build_command() == [["verilator", "--binary", "x.v"]]
