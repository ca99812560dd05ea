"""KV retrieval in the RTL top level (issue 16): the tile-list GEMM (opcode 6, GEMM_LIST) on hw/top.py and
its cycle model in sim/top_model.py.

Checks: the decoder's field views carry GEMM_LIST's list_base and mode and its GEMM fields; the top model's
GEMM_LIST cycles are the list fetch (one request of the capacity's beats) plus the opcode-2 GEMM with the
list's count; a list count comes from the Program's image or from the caller; a capacity above the top's
list buffer and a list that does not fit one burst are refused; with Verilator, hand-made Programs (a W8A8
linear whose GEMM is a GEMM_LIST reading a list placed in the image: identity lists in both modes and in mode 2
with strided B panels, then a permuted list with a repeated tile and a shortened strided list) give the executor's output bit for bit (the
identity lists: the PyTorch int reference's) and every command's cycles equal the model's. The KVR command
(opcode 5) on the RTL top (kv_tables onchip): tests/test_kvr_top_engine.py."""

import dataclasses

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config import config_from_dict, load_config
from hw.isa import OP_GEMM_LIST, GemmCommand, GemmListCommand, encode_program
from hw.kv_numerics import list_buffer_beats
from hw.top import MAX_COMMAND_WORDS, AcceleratorTop, CommandFields
from sim.gemm_model import gemm_fast, list_fetch_beats
from sim.top_model import command_cycles, program_cycles, run_cycles, schedule


def _cfg(**kv):
    """configs/default.yaml with resv attention and a small retrieval table (a list of 11 entries)."""
    d = load_config("configs/default.yaml").to_dict()
    d["system"].update(attention="resv")
    d["kv"].update({"max_clusters": 8, **kv})
    return config_from_dict(d, "default-list")


def _list_rows(tiles: list[int], W: int) -> np.ndarray:
    """A list block (models/retrieval.py format: n, three reserved words, ``tile | valid << 16``) in beats."""
    blk = np.zeros(4 + len(tiles), "<u4")
    blk[0] = len(tiles)
    blk[4:] = [t | (64 << 16) for t in tiles]
    b = np.frombuffer(blk.tobytes(), np.uint8)
    rows = np.zeros((-(-b.size // W), W), np.uint8)
    rows.reshape(-1)[: b.size] = b
    return rows


def _crafted(acfg, lists):
    """A W8A8 linear (160 → 4·gemm.cols: 4 column tiles, 3 k-tiles) compiled for ``acfg``, and one
    Program per (mode, tiles, strided) of ``lists`` in which its GEMM is a GEMM_LIST of that list; the lists
    are appended to the image, which all the Programs share. ``strided``: B is read from a copy whose column
    panels are 3 beats further apart than packed (``b_stride``)."""
    torch = pytest.importorskip("torch")
    from compiler import compile_model
    from models.w8a8 import Int8Linear

    torch.manual_seed(0)
    m = torch.nn.Sequential(Int8Linear(160, 4 * acfg.gemm.cols)).eval()
    x = torch.randn(3, 160)
    prog = compile_model(m, acfg, example_inputs=x).program()
    (gemm,) = [c for c in prog.commands() if type(c) is GemmCommand]
    W, panel = acfg.memory.bus_bytes, gemm.k_tiles * acfg.gemm_geometry.b_beats
    stride, base = panel + 3, prog.image.shape[0]
    copy = np.zeros((gemm.n_tiles * stride, W), np.uint8)  # B's column panels, strided
    for ni in range(gemm.n_tiles):
        copy[ni * stride : ni * stride + panel] = prog.image[gemm.b_base + ni * panel :][:panel]
    blocks, addr = [], base + copy.shape[0]
    for _, tiles, _ in lists:
        blocks.append((addr, _list_rows(tiles, W)))
        addr += blocks[-1][1].shape[0]
    image = np.concatenate([prog.image, copy] + [r for _, r in blocks])
    progs, meta = [], {**prog.meta, "memory_beats": image.shape[0]}
    for (mode, _, strided), (lbase, _) in zip(lists, blocks, strict=True):
        f = {k.name: getattr(gemm, k.name) for k in dataclasses.fields(GemmCommand)}
        if strided:
            f.update(b_base=base, b_stride=stride)
        lst = GemmListCommand(**f, list_base=lbase, mode=mode)
        cmds = [lst if type(c) is GemmCommand else c for c in prog.commands()]
        progs.append(
            dataclasses.replace(prog, words=np.array(encode_program(cmds), np.uint64), image=image, meta=meta)
        )
    return m, x, progs


def test_command_fields_carry_the_list_fields():
    dut = CommandFields()
    cmd = GemmListCommand(3, 5, 7, 0x1234, 0xABCDE, 0x777, True, 9, 0x40, list_base=0xDEADBEEF, mode=2)
    plain = GemmCommand(3, 5, 7, 0x1234, 0xABCDE, 0x777, True, 9, 0x40)
    got = {}

    async def testbench(ctx):
        for c in (cmd, plain):
            w = c.words()
            ctx.set(dut.words, w + [0] * (MAX_COMMAND_WORDS - len(w)))
            got[type(c)] = (
                ctx.get(dut.opcode),
                ctx.get(dut.gemm.as_value()),
                ctx.get(dut.glist.list_base),
                ctx.get(dut.glist.mode),
            )

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    op, payload, base, mode = got[GemmListCommand]
    assert MAX_COMMAND_WORDS == 4 and op == OP_GEMM_LIST and (base, mode) == (0xDEADBEEF, 2)
    assert payload == got[GemmCommand][1]  # the GEMM fields are opcode 2's


def test_gemm_list_cycles_are_the_fetch_plus_the_counted_gemm():
    acfg = _cfg()
    mem = acfg.memory
    for mode, field, count in ((1, dict(n_tiles=9, k_tiles=3), 4), (2, dict(n_tiles=2, k_tiles=11), 7)):
        c = GemmListCommand(m_tiles=1, **field, list_base=0, mode=mode)
        dense = c.with_count(count)
        b = list_fetch_beats(9 if mode == 1 else 11, mem.bus_bytes)
        fetch = 2 + mem.latency + (b - 1) * mem.beat_interval
        # the plain GEMM runs G + 1 cycles from its dispatch; the list GEMM adds the fetch
        assert run_cycles(acfg, c, list_count=count) == run_cycles(acfg, dense) + fetch
        assert run_cycles(acfg, dense) == gemm_fast(acfg, dense).cycles + 1
        assert command_cycles(acfg, dense) + 1 + fetch == 4 + run_cycles(acfg, c, list_count=count)
    with pytest.raises(ValueError, match="list_count"):
        run_cycles(acfg, GemmListCommand(1, 2, 1, list_base=0, mode=1))
    with pytest.raises(ValueError, match="exceeds the top's tile-list buffer"):
        run_cycles(acfg, GemmListCommand(1, 12, 1, list_base=0, mode=1), list_count=2)
    # a GEMM_LIST is a GEMM-class command: it waits for the port like a GEMM and holds it until done
    g, gl = GemmCommand(1, 1, 1), GemmListCommand(1, 4, 1, list_base=0, mode=1)
    sch = schedule([g, gl, g], [10, 50, 10], overlap=True)
    assert sch.dispatch[1] == sch.done[0] + 1 and sch.dispatch[2] == sch.done[1] + 1


@pytest.mark.torch
def test_program_list_counts_from_the_image_or_the_caller():
    acfg = _cfg()
    _, _, (p1, p2) = _crafted(acfg, [(1, [0, 1, 2, 3], False), (1, [3, 0], False)])
    i = [k for k, c in enumerate(p1.commands()) if isinstance(c, GemmListCommand)]
    assert len(i) == 1
    assert program_cycles(p1) == program_cycles(p2, list_counts=[4])
    assert program_cycles(p2) == program_cycles(p1, list_counts=[2])
    assert program_cycles(p2)[i[0]] < program_cycles(p1)[i[0]]
    with pytest.raises(ValueError, match="1 GEMM_LIST"):
        program_cycles(p1, list_counts=[])


def test_list_buffer_must_fit_one_burst():
    from amaranth.back import rtlil

    assert list_buffer_beats(_cfg().kv, 32) == 2  # 16 + 4·11 bytes on a 32-byte port
    with pytest.raises(ValueError, match="must fit one read burst"):
        rtlil.convert(AcceleratorTop(_cfg(max_clusters=256)))


@pytest.mark.torch
@pytest.mark.verilator
def test_top_runs_gemm_list_bit_and_cycle_exact(repo):
    from models.intref import int_reference
    from sim.cosim import run_program_cosim

    # configs/top-resv.yaml: the top build tests/test_kvr_top_engine.py co-simulates (one Verilator build for
    # both; its KVR hardware idles here)
    acfg = load_config(repo / "configs" / "top-resv.yaml")
    # the short mode-1 list first: it writes 3 of C's 4 column tiles, and the RTL's image carries from Program
    # to Program while the executor runs each on its own image (a later one would see the previous C there)
    lists = [
        (1, [3, 0, 3], False),
        (1, [0, 1, 2, 3], False),
        (2, [0, 1, 2], False),
        (2, [0, 1, 2], True),
        (2, [2, 0], True),
    ]
    m, x, progs = _crafted(acfg, lists)
    ref = int_reference(m, x)
    rep = run_program_cosim(progs, [x] * len(progs), acfg, build_root=repo / "build" / "cosim", quiet=True)
    assert rep.rtl_equals_model == [True] * len(progs)
    assert rep.rtl_cycles == rep.model_cycles and rep.rtl_step_cycles == rep.model_step_cycles
    assert all(k.count("gemm_list") == 1 for k in rep.commands)
    # the identity lists read exactly the dense GEMM's tiles: the PyTorch int reference
    from sim.runtime import execute

    for p in progs[1:4]:
        assert np.array_equal(execute(p, x.numpy())[0].numpy().reshape(-1), ref.numpy().reshape(-1))
