"""GEMM numerics, memory layout, command encoding, and the numba model: stepped model == reference,
fast path == stepped model (cycles and events) over random shapes and memory timings."""

import dataclasses

import numpy as np
import pytest

from hw.config import load_config
from hw.gemm_layout import build_gemm_image, gemm_shape, pack_a, pack_b, requantize, unpack_c
from hw.isa import GemmCommand, HostCommand, TlmmCommand, decode_program, encode_program
from sim.gemm_cases import directed_cases, random_cases
from sim.gemm_model import gemm_fast, reference, run_gemm, run_gemm_image

CONFIGS = ["default.yaml", "gemm-4x4-w8.yaml", "gemm-2x8-w16.yaml"]


def test_requantize_rounds_half_up_and_saturates():
    acc = np.array([0, 1, 2, 3, -1, -2, -3, 255, 256, -257, 2**31 - 1, -(2**31)], np.int64)
    # shift 1: floor((x + 1) / 2)
    assert requantize(acc, 1).tolist() == [0, 1, 1, 2, 0, -1, -1, 127, 127, -128, 127, -128]
    assert requantize(np.array([127, 128, -128, -129]), 0).tolist() == [127, 127, -128, -128]
    assert requantize(np.array([2**31 - 1, -(2**31)]), 31).tolist() == [1, -1]


@pytest.mark.parametrize("name", CONFIGS)
def test_layout_round_trip(repo, name):
    acfg = load_config(repo / "configs" / name)
    geo = acfg.gemm_geometry
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (2 * geo.rows + 1, geo.k_tile + 5)).astype(np.int8)
    b = rng.integers(-128, 128, (geo.k_tile + 5, geo.cols + 3)).astype(np.int8)
    shape = gemm_shape(geo, a.shape[0], a.shape[1], b.shape[1])
    pa, pb = pack_a(a, geo), pack_b(b, geo)
    assert pa.shape == (shape.m_tiles * shape.k_tiles * geo.a_beats, geo.bus_bytes)
    assert pb.shape == (shape.n_tiles * shape.k_tiles * geo.b_beats, geo.bus_bytes)
    # first k-row of the second A tile (kt = 1) holds A[0:R, TK]
    assert pa.view(np.int8)[geo.a_beats].tolist()[: geo.rows] == a[: geo.rows, geo.k_tile].tolist()
    c = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    tiles = np.zeros((shape.m_tiles * geo.rows, shape.n_tiles * geo.cols), np.int32)
    tiles[: c.shape[0], : c.shape[1]] = c
    beats = tiles.reshape(shape.m_tiles, geo.rows, shape.n_tiles, geo.cols).transpose(0, 2, 1, 3)
    beats = np.ascontiguousarray(beats).reshape(-1).view(np.uint8).reshape(-1, geo.bus_bytes)
    assert np.array_equal(unpack_c(beats, geo, shape, False), c)
    beats.view(np.int32).reshape(-1)[-1] = 5  # a padded output that is not zero
    with pytest.raises(ValueError, match="padded"):
        unpack_c(beats, geo, shape, False)


def test_command_words_round_trip():
    g = GemmCommand(3, 65535, 7, a_base=1, b_base=2**32 - 1, c_base=12345, requant=True, shift=31)
    t = TlmmCommand(2, 10, 20, act_base=5, wgt_base=2**32 - 1, res_base=7)
    h = HostCommand(65535)
    words = encode_program([g, t, h, g])
    assert len(g.words()) == 3 and g.words()[0] & 0xFF == 2 and len(h.words()) == 1
    assert decode_program(words) == [g, t, h, g]
    with pytest.raises(ValueError, match="reserved"):
        decode_program([g.words()[0] | 1 << 14, g.words()[1], g.words()[2]])  # word 0 bits 15:14
    with pytest.raises(ValueError, match="needs 3 words"):
        decode_program(g.words()[:2])
    with pytest.raises(ValueError, match="m_tiles"):
        GemmCommand(0, 1, 1)


@pytest.mark.parametrize("name", CONFIGS)
def test_stepped_model_matches_reference(repo, name):
    acfg = load_config(repo / "configs" / name)
    for c in directed_cases(acfg, seed=3) + random_cases(acfg, seed=4, count=6):
        ccfg = c.config(acfg)
        run = run_gemm(ccfg, c.a, c.b, c.requant, c.shift)
        assert np.array_equal(run.output, reference(c.a, c.b, c.requant, c.shift)), c.name
        # fast path from the tile counts alone (A/B/C placement does not change timing)
        sh = gemm_shape(ccfg.gemm_geometry, c.a.shape[0], c.a.shape[1], c.b.shape[1])
        fast = gemm_fast(ccfg, GemmCommand(sh.m_tiles, sh.n_tiles, sh.k_tiles, requant=c.requant))
        assert (fast.cycles, fast.events) == (run.cycles, run.events), c.name


def test_int32_wraps_like_the_definition(repo):
    acfg = load_config(repo / "configs" / "gemm-4x4-w8.yaml")
    k = 1 << 17
    a = np.full((1, k), -128, np.int8)
    b = np.tile(np.array([[-128, 127]], np.int8), (k, 1))
    out = run_gemm(acfg, a, b).output
    assert out.tolist() == [[-(2**31), -128 * 127 * k]]


def test_fast_path_equals_stepped_on_random_memories(repo):
    base = load_config(repo / "configs" / "gemm-2x8-w16.yaml")
    rng = np.random.default_rng(7)
    for i in range(150):
        mem = dataclasses.replace(
            base.memory,
            latency=int(rng.integers(1, 60)),
            outstanding=int(rng.integers(1, 7)),
            beat_interval=int(rng.integers(1, 6)),
            max_burst=int(rng.integers(1, 20)),
        )
        acfg = dataclasses.replace(base, memory=mem)
        m, k, n = int(rng.integers(1, 9)), int(rng.integers(1, 200)), int(rng.integers(1, 30))
        img = build_gemm_image(acfg, np.zeros((m, k), np.int8), np.zeros((k, n), np.int8), bool(i % 2))
        run, fast = run_gemm_image(acfg, img), gemm_fast(acfg, img.command)
        assert (fast.cycles, fast.events) == (run.cycles, run.events), (mem, m, k, n)
        assert (
            sum(
                run.events[e]
                for e in ("issue_cycles", "load_stall_cycles", "drain_stall_cycles", "tail_cycles")
            )
            == run.cycles
        )


def test_utilization_with_enough_bandwidth(repo):
    """Issue acceptance: ≥ 95% MAC utilization on a 1024³ GEMM with the default (256-bit) memory."""
    acfg = load_config(repo / "configs" / "default.yaml")
    t = gemm_fast(acfg, GemmCommand(1024 // 8, 1024 // 8, 1024 // 64))
    assert t.utilization(acfg, 1024, 1024, 1024) >= 0.95
    assert t.events["macs"] == 1024**3
    # and the stepped model shows the same steady state on a smaller GEMM (one output row of tiles)
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (8, 1024)).astype(np.int8)
    b = rng.integers(-128, 128, (1024, 64)).astype(np.int8)
    run = run_gemm(acfg, a, b)
    assert run.cycles == gemm_fast(acfg, GemmCommand(1, 8, 16)).cycles
    assert 8 * 1024 * 64 / (64 * run.cycles) >= 0.95


def test_starved_memory_stalls(repo):
    acfg = load_config(repo / "configs" / "default.yaml")
    slow = dataclasses.replace(acfg, memory=dataclasses.replace(acfg.memory, beat_interval=4))
    cmd = GemmCommand(4, 4, 8)
    fast, starved = gemm_fast(acfg, cmd), gemm_fast(slow, cmd)
    assert starved.cycles > 1.5 * fast.cycles and starved.events["load_stall_cycles"] > 0


@pytest.mark.parametrize("latency,outstanding,interval", [(1, 1, 1), (20, 4, 1), (7, 2, 3)])
def test_bench_memory_follows_the_compiled_rules(latency, outstanding, interval):
    """sim.memory.BusMemory (the benches' memory, the rules' Python source) and the compiled sim.mem_kernel
    functions the models step offer the same handshakes cycle by cycle under random traffic."""
    from hw.config import MemoryConfig
    from sim import mem_kernel as mk
    from sim.memory import BusMemory

    mcfg = MemoryConfig(bus_bytes=8, latency=latency, outstanding=outstanding, beat_interval=interval)
    bus = BusMemory(np.zeros((256, 8), np.uint8), mcfg)
    ms, ring = mk.mem_new(mk.mem_timing(mcfg))
    rng = np.random.default_rng(latency)
    for t in range(400):
        beat = bus.read_beat(t)
        assert bus.request_ready(t) == mk.mem_request_ready(ms)
        assert (beat is not None) == mk.mem_read_valid(ms, ring, t)
        assert bus.write_ready(t) == mk.mem_write_ready(ms, t)
        req = (
            (int(rng.integers(0, 200)), int(rng.integers(1, 9)))
            if bus.request_ready(t) and rng.random() < 0.3
            else None
        )
        wr = (t % 256, t) if bus.write_ready(t) and rng.random() < 0.5 else None
        if beat is not None:
            assert beat == mk.mem_read_addr(ms, ring)
            ms, _ = mk.mem_deliver(ms, ring, t)
        if req is not None:
            ms = mk.mem_request(ms, ring, t, *req)
        if wr is not None:
            ms = mk.mem_write(ms, t)
        bus.commit(t, beat is not None, req, wr)
    assert (bus.read_beats, bus.write_beats) == (ms.read_beats, ms.write_beats) and ms.read_beats > 0
