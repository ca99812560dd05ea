"""KVR (opcode 5) in the RTL top level with on-chip table slots (configs/top-resv.yaml: ``system.attention
resv``, ``kv_tables onchip``, ``kv.slots`` 8): the trained tiny model, cut to one layer, compiled with retrieval
— a 14-token prefill (insert-only KVRs) and four decode steps, three of them past ``kv_min_context`` 16 (KVRs with
two queries, GEMM_LISTs over the lists they write) — through the Verilator top: logits bit-exact against
PyTorch int mode with a RetrievalCache (restricted attention) and the executor, greedy tokens equal, every
command's cycles equal to sim/top_model.py (the KVR's from the executor's per-slot engine runs), and the per-kind
table has a ``kv`` row. Fast checks: the config compiles with KVRs on every step, the compiler refuses fewer
slots than streams, the top model needs a KVR's engine cycles, and the cosim refuses a ``kv_tables: dram``
table its DMA cannot move."""

import dataclasses

import pytest
from conftest import REPO, top_one_layer

from hw.config import load_config
from hw.isa import KvrCommand

CONFIG = REPO / "configs" / "top-resv.yaml"
PROMPT = b"def f(x): return"[:14]


def test_tiny_resv_config_compiles_kvr_commands():
    from compiler import CompileError, compile_model, load_model

    acfg = load_config(CONFIG)
    model = load_model("tiny", device="meta")
    cm = compile_model(model, acfg)
    prog = cm.program(1, 20)
    kvrs = [c for c in prog.commands() if isinstance(c, KvrCommand)]
    assert len(kvrs) == 8 and sorted(c.table for c in kvrs) == list(range(8))
    few = dataclasses.replace(acfg, kv=dataclasses.replace(acfg.kv, slots=7))
    with pytest.raises(
        CompileError, match="kv.slots=7 holds fewer tables than the model's 8 retrieval streams"
    ):
        compile_model(model, few)


def test_top_model_needs_the_kvr_engine_cycles():
    from sim.top_model import run_cycles

    acfg = load_config(CONFIG)
    cmd = KvrCommand(table=1, inserts=2, queries=1, vec_base=4, list_base=9, page_tile=4)
    with pytest.raises(ValueError, match="kvr_engine"):
        run_cycles(acfg, cmd)
    with pytest.raises(ValueError, match="kvr_engine"):
        run_cycles(acfg, cmd, kvr_engine=[10, 20])
    assert (
        run_cycles(acfg, cmd, kvr_engine=[12, 20, 20]) == run_cycles(acfg, cmd, kvr_engine=[10, 20, 20]) + 2
    )


def test_cosim_refuses_a_table_the_dma_cannot_move(tmp_path):
    """Tables in DRAM whose key-sum beat (kv.lanes × int32 with 256-key clusters = 128 bytes) is wider than a bus
    beat: one line, exit 2, before anything is built (the dram top itself: tests/test_kvr_top_dram.py)."""
    from conftest import assert_one_line_error, run_cli

    text = CONFIG.read_text().replace("kv_tables: onchip", "kv_tables: dram").replace("lanes: 8", "lanes: 32")
    text = text.replace("max_cluster_size: 64", "max_cluster_size: 256").replace(
        "max_clusters: 8 ", "max_clusters: 32 "
    )
    (tmp_path / "dram.yaml").write_text(text)
    r = run_cli("cosim", "top", "--config", tmp_path / "dram.yaml", "--tokens", 1, expect=2)
    assert_one_line_error(r, "system.kv_tables=dram", "multiple of a key-sum beat")


@pytest.mark.torch
@pytest.mark.verilator
def test_tiny_model_retrieval_through_the_rtl_top():
    check_retrieval_run(top_one_layer(load_config(CONFIG), PROMPT, 5), steps=5, retrieval_steps=3)


def check_retrieval_run(rep, steps: int, retrieval_steps: int) -> None:
    """One layer's two streams: a KVR per stream and step, all cycle-exact; a Q·Kᵀ and a P·V GEMM_LIST per
    stream and retrieval step (the logits and every command's cycles are checked by ``top_one_layer``)."""
    out = rep.to_json()
    kv = out["per_kind"]["kv"]
    assert kv["commands"] == 2 * steps and kv["rtl_cycles"] == kv["model_cycles"] > 0
    assert out["per_kind"]["gemm_list"]["commands"] == 2 * 2 * retrieval_steps


def test_command_fields_carry_the_kvr_fields():
    """The decoder's view of a KVR command (hw.top.CommandFields.kvr) holds every field the sequencer takes."""
    from amaranth.sim import Simulator

    from hw.top import MAX_COMMAND_WORDS, CommandFields

    cmd = KvrCommand(
        table=0x1234,
        inserts=201,
        queries=13,
        win_tiles=2,
        win_tile=0xBEEF,
        vec_base=0xDEADBEEF,
        list_base=0x76543210,
        tab_base=0x55,
        page_tile=0x4321,
    )
    dut = CommandFields()
    got = {}

    async def testbench(ctx):
        w = cmd.words()
        ctx.set(dut.words, w + [0] * (MAX_COMMAND_WORDS - len(w)))
        for name in (
            "table",
            "inserts",
            "queries",
            "win_tiles",
            "win_tile",
            "vec_base",
            "list_base",
            "page_tile",
            "tab_base",
        ):
            got[name] = ctx.get(getattr(dut.kvr, name))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    assert got == {name: getattr(cmd, name) for name in got} and len(got) == 9
