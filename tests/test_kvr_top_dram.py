"""KVR (opcode 5) in the RTL top level with the cluster tables in DRAM (configs/top-resv-dram.yaml:
configs/top-resv.yaml with ``system.kv_tables: dram``; docs/design.md, "The RTL top"): the trained tiny model cut
to one layer, a 14-token prefill (insert-only KVRs: each loads its stream's empty table from ``tab_base`` and
writes it back) and three decode steps, two past ``kv_min_context`` 16 (KVRs with two queries on the tables the
earlier steps wrote, GEMM_LISTs over their lists), through the Verilator top: logits bit-exact against PyTorch
int mode with a RetrievalCache and the executor (whose tables are the same bytes in its image), tokens equal,
every command's cycles equal to sim/top_model.py (kvr_run_cycles with the table DMA), a ``kv`` row in the
per-kind table. A separate build from the onchip top (the sequencer differs)."""

import pytest
from conftest import REPO, top_one_layer

from hw.config import load_config

CONFIG = REPO / "configs" / "top-resv-dram.yaml"
PROMPT = b"def f(x): return"[:14]


def test_dram_config_compiles_table_regions():
    from compiler import compile_model, load_model
    from hw.isa import KvrCommand
    from hw.kv_numerics import TableLayout

    acfg = load_config(CONFIG)
    cm = compile_model(load_model("tiny", device="meta"), acfg)
    prog = cm.program(1, 20)
    tl = TableLayout(acfg.kv, acfg.memory.bus_bytes)
    regions = {ti.addr: ti for name, ti in prog.tensors.items() if ".table" in name}
    kvrs = [c for c in prog.commands() if isinstance(c, KvrCommand)]
    assert len(kvrs) == len(regions) == 8
    assert all(c.tab_base in regions and regions[c.tab_base].nbytes == tl.nbytes for c in kvrs)


@pytest.mark.torch
@pytest.mark.verilator
def test_tiny_model_retrieval_with_dram_tables_through_the_rtl_top():
    from test_kvr_top_engine import check_retrieval_run

    check_retrieval_run(top_one_layer(load_config(CONFIG), PROMPT, 4), steps=4, retrieval_steps=2)
