"""Prefill weight reuse (``tlmm.weight_buffer_beats``, the TLMM command's ``wbuf``): the compiler's slicing
and command order, the Program verifier's hazard checks, the executor's buffer, the top model's fill and
reuse cycles, the estimate's bytes, and one top-level co-simulation of the trained tiny model (Verilator)."""

import dataclasses

import numpy as np
import pytest
from conftest import REPO, top_one_layer

from compiler.tiling import tlmm_slices, tlmm_tiles
from hw.config import config_from_dict, load_config
from hw.isa import WBUF_FILL, WBUF_REUSE, WBUF_STREAM, TlmmCommand, decode, decode_program
from hw.program import ProgramError
from hw.ternary import tlmm_shape
from sim.tlmm_model import tlmm_cycles
from sim.top_model import FETCH_DISPATCH, command_cycles

PROMPT = b"x = 1"  # 5 tokens: token groups of 2, 2, 1 on the default config


def with_buffer(acfg, beats: int):
    d = acfg.to_dict()
    d["tlmm"]["weight_buffer_beats"] = beats
    return config_from_dict(d, "<test>")


@pytest.fixture(scope="module")
def small():
    return with_buffer(load_config(REPO / "configs" / "default.yaml"), 256)


@pytest.mark.torch
@pytest.mark.verilator
def test_top_cosim_with_weight_buffer(small):
    """One decoder layer of the tiny model through the RTL top level with a 256-beat weight buffer and overlap
    on: a 12-token prefill (6 token groups: fill, then 5 reuses per weight slice; host ops in row chunks of 8 +
    4 rows; the up projection's N slices 16, 168, 168 columns in that order, tests/test_slice_order.py) and a
    decode step; logits bit-exact against PyTorch int mode and the executor, every command's cycles and each
    step's cycles equal to sim/top_model.py."""
    acfg = dataclasses.replace(small, system=dataclasses.replace(small.system, overlap=True))
    rep = top_one_layer(acfg, b"import os, x", 2)
    assert rep.overlap and rep.rtl_step_cycles == rep.model_step_cycles
    assert len(rep.commands[0]) > len(rep.commands[1])


def test_isa_field_round_trip_and_range():
    for w in (WBUF_STREAM, WBUF_FILL, WBUF_REUSE):
        cmd = TlmmCommand(3, 5, 7, 11, 13, 17, wbuf=w)
        assert decode(cmd.words()) == cmd
        assert (cmd.words()[0] >> 48) & 3 == w
    # the engine never sees wbuf: its payload is the same for every source
    assert len({TlmmCommand(3, 5, 7, wbuf=w).engine_payload() for w in range(3)}) == 1
    bad = TlmmCommand(3, 5, 7).words()
    bad[0] |= 3 << 48
    with pytest.raises(ValueError, match="wbuf=3"):
        decode_program(bad)
    with pytest.raises(ValueError, match="wbuf"):
        TlmmCommand(1, 1, 1, wbuf=3)


def test_slices_fit_the_buffer():
    base = load_config()
    for beats in (1, 7, 64, 256, 1000):
        t = with_buffer(base, beats).tlmm
        for k, n in ((128, 128), (352, 128), (128, 352), (4096, 24), (24, 4096)):
            kss, nss = tlmm_slices(t, k, n)
            assert kss[0][0] == 0 and kss[-1][1] == k and nss[0][0] == 0 and nss[-1][1] == n
            for k0, k1 in kss:
                for n0, n1 in nss:
                    assert -(-(k1 - k0) // t.chunk_k) * -(-(n1 - n0) // t.columns) <= beats
    assert tlmm_slices(base.tlmm, 352, 128) == ([(0, 352)], [(0, 128)])  # no buffer: unchanged


def test_tile_order_fill_then_reuse(small):
    t = small.tlmm
    slices = tlmm_slices(t, 352, 128)
    tiles = list(tlmm_tiles(t, 5, slices))
    assert len(tiles) == 3 * len(slices[0]) * len(slices[1])
    for i in range(0, len(tiles), 3):  # slice-outer, token-group-inner
        group = tiles[i : i + 3]
        assert [x.wbuf for x in group] == [WBUF_FILL, WBUF_REUSE, WBUF_REUSE]
        assert {(x.si, x.ni) for x in group} == {(group[0].si, group[0].ni)}
        assert [x.m for x in group] == [2, 2, 1]
    # one token group (decode): weights from DRAM, no fill
    assert {x.wbuf for x in tlmm_tiles(t, 1, slices)} == {WBUF_STREAM}
    assert {x.wbuf for x in tlmm_tiles(t, 2, slices)} == {WBUF_STREAM}


def test_fill_costs_a_stream_reuse_costs_the_engine():
    """A fill times exactly like a stream (the buffer write is beside the engine's wgt handshake); a reuse
    reads no weights from DRAM: it waits only for the first activation run, then the engine runs unstalled."""
    acfg = with_buffer(load_config(REPO / "configs" / "kv260.yaml"), 4096)
    t = acfg.tlmm
    for m, kc, nb in ((4, 19, 96), (4, 19, 215), (1, 3, 5), (3, 2, 1)):
        cyc = [command_cycles(acfg, TlmmCommand(m, kc, nb, 40, 1000, 9000, wbuf=w)) for w in range(3)]
        engine = FETCH_DISPATCH + tlmm_cycles(t, tlmm_shape(t, m, kc * t.chunk_k, nb * t.columns))
        assert cyc[0] == cyc[1]
        assert engine <= cyc[2] <= engine + acfg.memory.latency + 16, (m, kc, nb, cyc, engine)
        assert cyc[2] < cyc[0]
    # a slower memory (latency +40, a beat every 3 cycles) slows a reuse only by its first activation run
    # and its result writes (M·NB beats, 2 more cycles each), a stream by its weights too
    slow = dataclasses.replace(acfg, memory=dataclasses.replace(acfg.memory, latency=90, beat_interval=3))
    reuse, stream = (TlmmCommand(4, 19, 96, 40, 1000, 9000, wbuf=w) for w in (WBUF_REUSE, WBUF_STREAM))
    d_reuse = command_cycles(slow, reuse) - command_cycles(acfg, reuse)
    assert d_reuse <= 40 + 2 * 4 * 96 + 64
    assert command_cycles(slow, stream) - command_cycles(acfg, stream) > 5 * d_reuse


@pytest.fixture(scope="module")
def programs(small):
    pytest.importorskip("torch")
    from compiler import compile_model, load_model
    from sim.cosim import truncated_model

    model = truncated_model(load_model(str(REPO / "models" / "checkpoints" / "tiny.pt")), 1)
    base = load_config(REPO / "configs" / "default.yaml")
    return {
        name: compile_model(model, a).program(len(PROMPT), 0) for name, a in (("base", base), ("wbuf", small))
    }


@pytest.mark.torch
def test_compiled_prefill_reuses_every_slice_and_matches(programs, small):
    import torch

    from sim.runtime import execute

    cmds = [c for c in programs["wbuf"].commands() if isinstance(c, TlmmCommand)]
    assert all(c.k_chunks * c.n_blocks <= small.tlmm.weight_buffer_beats for c in cmds)
    fills = [c for c in cmds if c.wbuf == WBUF_FILL]
    reuses = [c for c in cmds if c.wbuf == WBUF_REUSE]
    assert len(reuses) == 2 * len(fills) and not [c for c in cmds if c.wbuf == WBUF_STREAM]
    # each weight slice is read from DRAM once in the prefill (the base config reads it per token group)
    assert len({c.wgt_base for c in fills}) == len(fills)
    base_cmds = [c for c in programs["base"].commands() if isinstance(c, TlmmCommand)]
    assert {c.wbuf for c in base_cmds} == {WBUF_STREAM}
    la, _ = execute(programs["base"], list(PROMPT))
    lb, _ = execute(programs["wbuf"], list(PROMPT))
    assert torch.equal(la, lb)


def _with_words(prog, commands):
    p = dataclasses.replace(prog, words=np.array([w for c in commands for w in c.words()], dtype=np.uint64))
    return p


@pytest.mark.torch
def test_verifier_refuses_reuse_hazards(programs, small):
    prog = programs["wbuf"]
    cmds = prog.commands()
    prog.validate()
    i_fill = next(i for i, c in enumerate(cmds) if getattr(c, "wbuf", 0) == WBUF_FILL)
    i_second = next(i for i, c in enumerate(cmds) if getattr(c, "wbuf", 0) == WBUF_FILL and i > i_fill)
    # a reuse after a different fill: move a later slice's fill in front of the first slice's reuses
    bad = list(cmds)
    bad.insert(i_fill + 1, cmds[i_second])
    with pytest.raises(ProgramError, match="weight buffer holds"):
        _with_words(prog, bad).validate()
    # a reuse with no fill before it in the Program
    bad = [c for i, c in enumerate(cmds) if i != i_fill]
    with pytest.raises(ProgramError, match="holds nothing"):
        _with_words(prog, bad).validate()
    # a fill larger than the buffer
    c = cmds[i_fill]
    big = dataclasses.replace(c, n_blocks=small.tlmm.weight_buffer_beats // c.k_chunks + 1)
    with pytest.raises(ProgramError, match="weight_buffer_beats"):
        _with_words(prog, [*cmds[:i_fill], big]).validate()
    # no buffer configured: any fill is refused
    nobuf = dataclasses.replace(prog, config=load_config().to_dict())
    with pytest.raises(ProgramError, match="weight_buffer_beats is 0"):
        nobuf.validate()


def test_estimate_reuse_reads_no_weights():
    from tritium.estimate import cost_program

    class _P:  # the estimate reads commands only for TLMM/GEMM
        def __init__(self, cmds):
            self._c = cmds
            self.host_ops = []

        def commands(self):
            return self._c

    acfg = with_buffer(load_config(REPO / "configs" / "kv260.yaml"), 4096)
    t = acfg.tlmm
    stream, reuse = (cost_program(_P([TlmmCommand(4, 19, 96, wbuf=w)]), acfg) for w in (0, 2))
    wbytes = 19 * 96 * -(-t.columns * t.tables * t.index_bits // 8)
    assert stream.dram_bytes - reuse.dram_bytes == wbytes
    assert reuse.seconds < stream.seconds


@pytest.mark.torch
@pytest.mark.parametrize("beats", [7, 64])
def test_fast_evaluator_equals_estimate_with_buffer(beats):
    """The DSE's fast evaluator counts the same fill/reuse commands as the compiled Programs (7 beats also
    slices K: the FFN's down projection has 15 chunks)."""
    from tritium.dse import FastEvaluator, build_workload
    from tritium.estimate import estimate

    base = load_config(REPO / "configs" / "default.yaml")
    acfg = with_buffer(base, beats)
    ev = FastEvaluator(build_workload("tiny", 16, 40, base))
    ref, fast = estimate("tiny", acfg, 16, 40), ev.estimate(acfg)
    for rs, fs in zip(ref["_steps"], fast["_steps"], strict=True):
        assert rs.engine_cycles == fs.engine_cycles and rs.dram_bytes == fs.dram_bytes
        assert rs.commands == fs.commands and rs.busy_issue == fs.busy_issue
    if beats == 64:  # the prefill reads each weight once; a 7-beat buffer's many N slices re-read activations
        no = estimate("tiny", base, 16, 40)
        assert ref["_steps"][0].dram_bytes < no["_steps"][0].dram_bytes


def test_resources_count_the_buffer():
    """The weight buffer in the resource model (tritium.resources.weight_buffer_resources): kv260's 4096 ×
    2240 bits = 32 URAM288 and one LUT per weight bit on the K26; the DSE's fit check (engine "top") sees it."""
    from tritium.resources import load_model, top_overhead, weight_buffer_resources

    acfg = load_config(REPO / "configs" / "kv260.yaml")
    assert acfg.tlmm.weight_buffer_beats == 4096
    none = with_buffer(acfg, 0)
    wb = weight_buffer_resources(acfg, "xcup")
    assert wb["uram"] == 32 and wb["bram"] == 0 and 2240 <= wb["lut"] < 2400 and wb["dsp"] == 1
    assert weight_buffer_resources(with_buffer(acfg, 8192), "xcup")["uram"] == 64
    assert weight_buffer_resources(with_buffer(acfg, 1024), "xcup")["bram"] > 0  # small: block RAM
    assert weight_buffer_resources(none, "xcup") == {r: 0.0 for r in ("lut", "ff", "bram", "uram", "dsp")}
    m = load_model()
    top, top0 = m.predict(acfg, "xcup", "top"), m.predict(none, "xcup", "top")
    for r in ("lut", "uram", "dsp"):
        assert top[r] == pytest.approx(top0[r] + wb[r])
    assert top_overhead(acfg, "ecp5")["bram"] > 0  # ECP5: 18 Kbit blocks
    assert top["lut"] < 117_120 and top["uram"] <= 64  # fits the K26 (modeled)
