"""The host softmax of a causal prefill is costed over its Q·Kᵀ bands' scores (compiler.hostcost; the executor
reads each band's scores and writes its P over the keys the band's rows attend), not over the whole square:
at least every attended score, at most one key tile per row more; a single band (decode) costs as before."""

import pytest
from conftest import REPO, random_lm

from compiler.hostcost import HOST_COST, host_cost
from hw.config import load_config
from models.presets import bitnet_2b_layout

pytestmark = pytest.mark.torch

SMALL = bitnet_2b_layout(vocab=64, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, ffn=80, max_seq=96)


@pytest.mark.parametrize("overlap", [False, True])
def test_softmax_cost_counts_the_bands_scores(overlap):
    import dataclasses

    from compiler import compile_model

    acfg = load_config(REPO / "configs" / "kv260.yaml")
    acfg = dataclasses.replace(acfg, system=dataclasses.replace(acfg.system, overlap=overlap))
    cm = compile_model(random_lm(SMALL, 0), acfg)
    f_score, b_score = HOST_COST["attn_softmax"]
    for T, pos in ((90, 0), (40, 50), (1, 89)):
        prog = cm.program(T, pos, logits="last")
        sm = [h for h in prog.host_ops if h.kind == "attn_softmax"]
        assert sm
        banded = 0
        for h in sm:
            a = h.attrs
            rep, ctx = a["n_heads"] // a["n_kv_heads"], pos + T
            heads = a["n_heads"]
            if "group_lo" in a:
                heads = (a["group_hi"] - a["group_lo"]) * a["group"] * rep
            square = heads * T * ctx
            visible = heads * sum(pos + t + 1 for t in range(T))  # every score a causal row attends
            flops, nbytes = host_cost(prog.tensors, h)
            n = flops / f_score
            assert nbytes == pytest.approx(b_score * n) and n == int(n)
            if "qk_bands" in a:
                banded += 1
                kt = acfg.gemm_geometry.k_tile
                assert visible <= n < square and n <= visible + heads * T * kt
            else:
                assert n == square
        assert (banded > 0) == (T > 1 and T + pos > acfg.gemm_geometry.k_tile)
