"""KV retrieval in the loop (docs/design.md, "KV retrieval in the loop"): the KVR and GEMM_LIST encodings,
the KV engine's closed-form schedule against the stepped model, the retrieval geometry checks and the
estimate that charges retrieval (tritium/retrieval.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli, tiny_resv_config

from compiler.tiling import retrieval_geometry
from hw import isa
from hw.config import load_config
from hw.kv_numerics import TableLayout
from sim.kv_model import insert_cycles, kvr_cost, query_cycles, run_commands, table_dma_cycles


# ---------------------------------------------------------------- encodings
def test_kvr_and_gemm_list_round_trip():
    k = isa.KvrCommand(
        table=191,
        inserts=255,
        queries=15,
        win_tiles=2,
        win_tile=31,
        vec_base=7,
        list_base=1 << 31,
        tab_base=(1 << 32) - 1,
        page_tile=32,
    )
    g = isa.GemmListCommand(1, 3, 35, a_base=1, b_base=2, c_base=3, b_stride=4, list_base=5, mode=2)
    words = isa.encode_program([k, g, isa.HostCommand(9)])
    assert len(words) == 3 + 4 + 1
    assert words[0] & 0xFF == isa.OP_KVR and words[3] & 0xFF == isa.OP_GEMM_LIST
    assert isa.decode_program(words) == [k, g, isa.HostCommand(9)]
    # the list's count replaces k_tiles (mode 2) or n_tiles (mode 1); the field is the capacity
    assert g.with_count(7) == isa.GemmCommand(1, 3, 7, a_base=1, b_base=2, c_base=3, b_stride=4)
    with pytest.raises(ValueError, match="list entries=36 outside 1..35"):
        g.with_count(36)
    assert dict(isa.payload_fields(isa.OP_KVR)) == {
        "inserts": 8,
        "queries": 4,
        "win_tiles": 2,
        "table": 16,
        "win_tile": 16,
        "page_tile": 16,
    }


@pytest.mark.parametrize(
    ("word", "bit"),
    [(0, 22), (0, 31), (2, 48), (2, 63)],  # KVR reserved bits
)
def test_kvr_reserved_bits_rejected(word, bit):
    w = isa.KvrCommand(table=1, queries=1).words()
    w[word] |= 1 << bit
    with pytest.raises(ValueError, match=f"word {word}.*reserved bits must be 0"):
        isa.decode(w)


def test_gemm_list_mode_and_reserved_bits():
    w = isa.GemmListCommand(1, 1, 1, list_base=3, mode=1).words()
    bad = list(w)
    bad[3] |= 1 << 40
    with pytest.raises(ValueError, match="word 3.*reserved"):
        isa.decode(bad)
    zero_mode = list(w)
    zero_mode[3] &= ~(3 << 32)
    with pytest.raises(ValueError, match="mode=0 outside 1..2"):
        isa.decode(zero_mode)
    with pytest.raises(ValueError, match="would do nothing"):
        isa.KvrCommand(table=0)
    with pytest.raises(ValueError, match="win_tiles=3 outside 0..2"):
        isa.KvrCommand(table=0, queries=1, win_tiles=3)


# ---------------------------------------------------------------- the engine's schedule
@pytest.mark.parametrize("config", ["configs/default.yaml", "configs/kv-small.yaml"])
def test_closed_form_schedule_equals_stepped_model(repo, config):
    """insert_cycles / query_cycles (what the estimate charges) = the stepped model's command lengths."""
    kv = load_config(repo / config).kv
    rng = np.random.default_rng(5)
    cmds = []
    for i in range(3 * kv.max_clusters):
        cmds.append(("insert", rng.integers(-128, 128, kv.dim)))
        if i % 5 == 4:
            cmds.append(("query", rng.integers(-128, 128, kv.dim)))
    run = run_commands(kv, cmds)
    n, prev, checked = 0, -1, 0
    for c, res, end in zip(cmds, run.results, run.command_cycles, strict=True):
        took = end - prev  # the command is offered the cycle after the previous one's last output
        if c[0] == "insert":
            assert took == insert_cycles(kv, n), (n, took)
            n += res[1]
        else:
            assert took == query_cycles(kv, n, len(res)), (n, took)
            checked += 1
        prev = end
    assert checked >= 3 and n > 1


def test_kvr_cost_counts_bytes_and_cycles(repo):
    acfg = load_config(repo / "configs" / "kv260.yaml")
    kv, mem = acfg.kv, acfg.memory
    row = 4 + 1 + 2 * kv.dim
    d = kvr_cost(kv, mem, 32, [9], 1, row, 11, tables_in_dram=True)
    o = kvr_cost(kv, mem, 32, [9], 1, row, 11, tables_in_dram=False)
    assert d["compute_cycles"] == o["compute_cycles"] == query_cycles(kv, 32, 9) + insert_cycles(kv, 32)
    tab = TableLayout(kv, mem.bus_bytes).nbytes  # 201 beats: header, 8 of entries, 192 of key sums
    assert tab == (1 + 32 * 16 // 64 + 32 * kv.dim * 2 // 64) * 64
    assert d["read_bytes"] - o["read_bytes"] == tab  # the whole table loaded
    assert (
        d["write_bytes"] - o["write_bytes"] == (1 + 1 + 6) * 64
    )  # the header, the insert's cluster: entry, sums
    assert o["read_bytes"] == 2 * 3 * 64  # the key and the query: 192 bytes = 3 beats each
    assert d["cycles"] == o["cycles"] + sum(table_dma_cycles(kv, mem, [0]))
    assert kvr_cost(kv, mem, 32, [9], 0, row, 11)["cycles"] == (
        kvr_cost(kv, mem, 32, [9], 0, row, 11, tables_in_dram=False)["cycles"] + table_dma_cycles(kv, mem)[0]
    )  # no inserts: no write-back
    assert d["events"]["score_macs"] == 32 * kv.dim and d["events"]["inserts"] == 1


# ---------------------------------------------------------------- geometry
def test_geometry_checks_name_the_field():
    acfg = tiny_resv_config()
    geo = retrieval_geometry(acfg, 4, 2, 32, 256)
    assert (geo.group, geo.dim, geo.queries, geo.page, geo.page_tile, geo.cap) == (1, 32, 2, 64, 4, 768)
    with pytest.raises(ValueError, match="kv.dim must be 64"):
        retrieval_geometry(acfg, 8, 4, 64, 256)
    with pytest.raises(ValueError, match=r"kv.max_clusters=8: .* \(keys would be dropped\)"):
        retrieval_geometry(acfg, 4, 2, 32, 1024)
    with pytest.raises(ValueError, match="system.kv_window=100: at most one page"):
        retrieval_geometry(tiny_resv_config(kv_window=100), 4, 2, 32, 256)


def test_plan_counts_tiles(repo):
    from tritium.retrieval import plan_decode

    acfg = load_config(repo / "configs" / "kv260.yaml")
    geo = retrieval_geometry(acfg, 16, 16, 96, 2048)
    p = plan_decode(acfg, geo, 2048, 2048)
    # 2,043 keys inserted before the step: 32 clusters; 13 = ceil(0.377 · 32) selected; window 1984..2047 = tile 31
    assert acfg.system.kv_selected_share == 0.377
    assert (p.active, p.clusters, p.selected, p.window_tiles, p.tiles, p.l_eff) == (True, 32, 13, 1, 15, 960)
    assert acfg.system.kv_min_context == 1024
    assert not plan_decode(acfg, geo, 1023, 2048).active  # below system.kv_min_context: dense
    early = dataclasses.replace(acfg, system=dataclasses.replace(acfg.system, kv_min_context=1))
    w = plan_decode(early, geo, 600, 2048)  # window 536..599 straddles tiles 8 and 9
    assert w.active and w.window_tiles == 2
    full = dataclasses.replace(acfg, system=dataclasses.replace(acfg.system, kv_selected_share=1.0))
    f = plan_decode(full, geo, 2048, 2048)
    assert f.selected == 32 and f.capped and f.l_eff == 2048


# ---------------------------------------------------------------- the estimate
@pytest.fixture(scope="module")
def tiny_estimates():
    from tritium.estimate import estimate

    acfg = tiny_resv_config()
    out = {}
    for ctx in (32, 256):
        for att in ("dense", "resv"):
            r = estimate("tiny", acfg, 8, ctx, breakdown=True, attention=att)
            r.pop("_steps")
            out[att, ctx] = r
    return out


def test_estimate_charges_retrieval(tiny_estimates):
    dense, resv = tiny_estimates["dense", 256], tiny_estimates["resv", 256]
    x = resv["retrieval"]
    assert resv["attention"] == "resv" and "retrieval" not in dense
    assert x["plan"]["active"] and x["kv_cycles_per_token"] > 0 and x["kv_energy_j_per_token"] > 0
    # 4 layers × 2 streams of 32 values; 1 + 1 window tile + ceil(0.265 · 8 clusters) = 5 tiles of 64 keys,
    # K and V: more than the 4 tiles of dense attention at 256 tokens, so retrieval does not pay here
    assert x["plan"]["tiles"] == 5 and x["streams"] == 8
    assert x["kv_bytes_read_per_token"] == 8 * 32 * 2 * 5 * 64
    assert x["kv_bytes_dense_per_token"] == 8 * 32 * 2 * 256
    assert resv["decode_s_per_token"] > dense["decode_s_per_token"]
    assert resv["time_share"]["decode"]["kv"] > 0
    # the breakdown's rows still add up to the step, retrieval's own rows included
    b = resv["breakdown"]["decode"]
    kinds = {r["name"] for r in b["by_op_kind"]}
    assert {"KVR", "GEMM tile-list fetch", "HOST kv pages"} <= kinds
    # the commands add up too: 8 KVR commands (one per stream); the fetches and page writes are parts of
    # the step's GEMM and HOST commands
    assert {r["name"]: r["commands"] for r in b["by_op_kind"]}["KVR"] == 8
    assert sum(r["commands"] for r in b["by_op_kind"]) == b["totals"]["commands"]
    assert sum(r["time_s"] for r in b["by_layer"]) == pytest.approx(resv["decode_s_per_token"])
    assert sum(r["dram_bytes"] for r in b["by_layer"]) == pytest.approx(resv["dram_bytes_per_token"])
    assert any(
        a["name"] == "system.kv_selected_share" and a["kind"] == "assumption" for a in resv["assumptions"]
    )
    # prefill inserts its tokens ≥ sinks into the tables: charged, never free
    assert resv["ttft_s"] > dense["ttft_s"]


def test_below_the_threshold_retrieval_only_adds(tiny_estimates):
    """Below kv_min_context attention is dense; keeping the tables current costs, and nothing is saved."""
    dense, resv = tiny_estimates["dense", 32], tiny_estimates["resv", 32]
    assert not resv["retrieval"]["plan"]["active"]
    assert resv["decode_s_per_token"] > dense["decode_s_per_token"]
    assert resv["dram_bytes_per_token"] > dense["dram_bytes_per_token"]


def test_bad_stream_dim_is_one_line(repo):
    r = run_cli(
        "estimate", "--model", "tiny", "--config", "configs/kv260.yaml", "--attention", "resv", expect=2
    )
    assert_one_line_error(r, "kv.dim=192", "must be 32")


# ---------------------------------------------------------------- the KVR command on the stepped model
def test_kvr_executor_writes_the_reference_list_block(repo):
    """KVR commands on the numba model over a memory image write exactly the list block of the reference
    (models/retrieval.py on models/resv.py): selected pages in union order with their counts, window tiles,
    insert results; the command's engine cycles follow the closed-form schedule."""
    from models.retrieval import StreamState, list_block, list_capacity, window_tiles
    from sim.kv_model import KvrExecutor

    kv = load_config(repo / "configs" / "kv-small.yaml").kv
    kv = dataclasses.replace(kv, max_clusters=8, max_cluster_size=16, alpha=0.5)
    w, S, W, P = 16, 2, 6, kv.max_cluster_size
    rb = -(-kv.dim // w)
    page_tile = 7
    image = np.zeros((64, w), np.uint8)
    ex = KvrExecutor(kv, w)
    rng = np.random.default_rng(3)
    states = {s: StreamState(kv, S, W) for s in (0, 1)}
    n_words = 4 + list_capacity(kv) + 40

    def put_rows(rows):
        for i, r in enumerate(rows):
            image.reshape(-1)[i * rb * w : i * rb * w + kv.dim] = np.asarray(r, np.int8).view(np.uint8)

    def block():
        return image.reshape(-1)[32 * w : 32 * w + 4 * n_words].view("<u4")

    prompt = 12
    for s, st in states.items():  # prefill: tokens S..prompt-1 inserted by one insert-only command
        keys = rng.integers(-128, 128, (prompt, kv.dim))
        put_rows(keys[S:])
        cyc = ex.run(isa.KvrCommand(table=s, inserts=prompt - S, list_base=32, page_tile=page_tile), image)
        ins = [st.insert(t, keys[t]) for t in range(S, prompt)]
        want = list_block(kv, [], [], [], page_tile, ins)
        assert (block()[: want.size] == want).all()
        assert cyc > 0
    sel_total = 0
    for p in range(prompt, prompt + 10):
        for s, st in states.items():
            qs = rng.integers(-128, 128, (2, kv.dim))
            key = rng.integers(-128, 128, kv.dim)
            wt = window_tiles(p, W, P)
            put_rows([key, *qs])
            n_before = st.table.n
            cmd = isa.KvrCommand(
                table=s,
                inserts=1,
                queries=2,
                win_tiles=len(wt),
                win_tile=wt[0] if wt else 0,
                list_base=32,
                page_tile=page_tile,
            )
            cyc = ex.run(cmd, image)
            selected = st.select(qs)
            per_query = [len(st.table.select(q).clusters) for q in qs]
            counts = [len(st.pages[c]) for c in selected]
            ins = st.insert(p, key)
            want = list_block(kv, [0, *wt], selected, counts, page_tile, [ins])
            assert (block()[: want.size] == want).all(), (p, s)
            sel_total += len(selected)
            assert cyc == sum(query_cycles(kv, n_before, k) for k in per_query) + insert_cycles(kv, n_before)
    assert sel_total > 0


def test_reference_row_reads_no_token_twice(repo):
    """The step's row: every valid slot a distinct token ≤ p; sinks and the window always in; a selected
    cluster's members all in."""
    from models.retrieval import StreamState

    kv = dataclasses.replace(
        load_config(repo / "configs" / "kv-small.yaml").kv, max_cluster_size=16, alpha=0.6
    )
    st = StreamState(kv, 3, 5)
    rng = np.random.default_rng(0)
    for t in range(60):
        st.insert(t, rng.integers(-128, 128, kv.dim))
    for p in (60, 70, 79):
        q = rng.integers(-128, 128, (2, kv.dim))
        row, sel, _ = st.step(p, q, rng.integers(-128, 128, kv.dim))
        toks = row[row >= 0]
        assert len(set(toks.tolist())) == len(toks) and toks.max() <= p
        need = {0, 1, 2} | set(range(p - 4, p + 1)) | {t for c in sel for t in st.pages[c] if t < p}
        assert need <= set(toks.tolist())
        assert row.size % 16 == 0


# ---------------------------------------------------------------- the restricted-attention reference
@pytest.mark.torch
def test_reference_restricted_attention_matches_masked_attention(repo):
    """The trained tiny model decoding with a RetrievalCache (models/retrieval.py in models/lm.py int mode):
    below kv_min_context the logits are bit-identical to dense attention; from there on each step attends to
    exactly its row's tokens — the full-sequence int forward masked to the same token sets
    (models.kvpolicy.restrict_attention) gives the same logits up to the softmax's summation order."""
    torch = pytest.importorskip("torch")
    from models.checkpoint import load_checkpoint
    from models.kvpolicy import restrict_attention
    from models.retrieval import RetrievalCache

    model = load_checkpoint(repo / "models" / "checkpoints" / "tiny.pt")
    cfg = model.config
    kv = dataclasses.replace(
        load_config(repo / "configs" / "default.yaml").kv,
        dim=32,
        max_clusters=8,
        max_cluster_size=64,
        alpha=0.3,
    )
    prompt, n, min_ctx = 20, 44, 40
    rng = np.random.default_rng(1)
    toks = torch.as_tensor(rng.integers(32, 127, prompt + n)).reshape(1, -1)
    cache, dense_cache = model.new_cache(), model.new_cache()
    cache.retrieval = RetrievalCache(kv, 2, 8, min_ctx, 1, cfg.n_layers)
    with torch.no_grad():
        got = [model(toks[:, :prompt], cache=cache, mode="int")[0]]
        dense = [model(toks[:, :prompt], cache=dense_cache, mode="int")[0]]
        for i in range(prompt, prompt + n):
            got.append(model(toks[:, i : i + 1], cache=cache, mode="int")[0])
            dense.append(model(toks[:, i : i + 1], cache=dense_cache, mode="int")[0])
    got, dense = torch.cat(got), torch.cat(dense)
    assert torch.equal(got[: min_ctx - 1], dense[: min_ctx - 1])  # dense steps: the same bits
    assert not torch.equal(got, dense)  # retrieval changed something
    s = prompt + n
    masks = np.broadcast_to(np.tril(np.ones((s, s), bool)), (cfg.n_layers, cfg.n_kv_heads, s, s)).copy()
    rows = cache.retrieval.rows
    assert len(rows) == cfg.n_layers * cfg.n_kv_heads * (s - min_ctx + 1)
    fractions = []
    for layer, j, p, row, _sel in rows:
        masks[layer, j, p] = False
        masks[layer, j, p, row[row >= 0]] = True
        fractions.append((row >= 0).sum() / (p + 1))
    assert 0 < np.mean(fractions) < 1  # a restricted set, not every token
    with torch.no_grad(), restrict_attention(masks, cfg.n_heads):
        masked = model(toks, mode="int")[0]
    assert torch.allclose(got, masked, rtol=0, atol=1e-4), float(  # measured: 3.8e-6 of |logits| ≤ 17.6
        (got - masked).abs().max()
    )


def test_resv_refuses_dense_plots(tmp_path):
    out = tmp_path / "plots"
    r = run_cli(
        "estimate",
        "--model",
        "tiny",
        "--config",
        "configs/kv260.yaml",
        "--attention",
        "resv",
        "--out",
        out,
        expect=2,
    )
    assert_one_line_error(r, "--out plots dense attention only")
    assert not out.exists()


@pytest.mark.parametrize("opcode", [isa.OP_KVR, isa.OP_GEMM_LIST])
def test_program_holding_retrieval_commands_is_checked(tiny_estimates, opcode):
    """Opcodes 5 and 6 load (sim/runtime.py runs them); their memory blocks must lie inside the image."""
    from hw.program import ProgramError
    from tritium.estimate import _compiled

    prog = _compiled("tiny", tiny_resv_config(), "acc_int8").program(1, 9)
    prog.validate()
    far = prog.meta["memory_beats"] + 5  # (a meta-compiled Program: its image is not materialized)

    def with_cmd(c):
        return dataclasses.replace(prog, words=np.concatenate([prog.words, np.array(c.words(), np.uint64)]))

    if opcode == isa.OP_KVR:
        with_cmd(isa.KvrCommand(table=0, queries=1)).validate()
        bad = with_cmd(isa.KvrCommand(table=0, queries=1, list_base=far))
        msg = "KVR command .*: list_base block outside"
    else:
        with_cmd(isa.GemmListCommand(1, 1, 1, mode=1)).validate()
        bad = with_cmd(isa.GemmListCommand(1, 1, 1, mode=1, list_base=far))
        msg = "GEMM_LIST command .*: list_base outside"
    with pytest.raises(ProgramError, match=msg):
        bad.validate()


def test_dse_costs_resv_with_retrieval():
    """The DSE's fast evaluator costs a resv config with retrieval, not as dense (equality with estimate():
    tests/test_dse_retrieval.py)."""
    import dataclasses

    from tritium.dse import FastEvaluator, build_workload

    acfg = tiny_resv_config()
    ev = FastEvaluator(build_workload("tiny", 16, 200, acfg))
    resv = ev.estimate(acfg)
    dense = ev.estimate(dataclasses.replace(acfg, system=dataclasses.replace(acfg.system, attention="dense")))
    assert resv["retrieval"]["plan"]["active"] and "retrieval" not in dense
    assert resv["decode_tokens_per_s"] != dense["decode_tokens_per_s"]
