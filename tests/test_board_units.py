"""Unit tests of the deployable board's parts (hw/uart.py, hw/sdram.py, hw/hostlink.py, hw/deploy.py) in
amaranth.sim: UART loopback, the SDRAM controller against a behavioural SDRAM model that checks the
datasheet timing (written here), and the host-link protocol against that SDRAM. Seconds each."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("amaranth")

from amaranth import Module  # noqa: E402
from amaranth.lib import wiring  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from hw import board_protocol as bp  # noqa: E402
from hw.deploy import pll_params, uart_divisor  # noqa: E402
from hw.hostlink import HostLink  # noqa: E402
from hw.sdram import SdramController  # noqa: E402
from hw.sdram_timing import AS4C32M16SB_7, sdram_cycles  # noqa: E402
from hw.uart import UartRx, UartTx  # noqa: E402
from hw.uart import check_divisor as uart_check  # noqa: E402

# ---------------------------------------------------------------------------------------------- UART


@pytest.mark.parametrize("divisor", [4, 7])
def test_uart_loopback(divisor):
    m = Module()
    m.submodules.tx = tx = UartTx(divisor)
    m.submodules.rx = rx = UartRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    data = [0x00, 0xFF, 0x55, 0xA5, 0x01, 0x80, *random.Random(divisor).sample(range(256), 10)]
    got = []

    async def send(ctx):
        for b in data:
            ctx.set(tx.data.valid, 1)
            ctx.set(tx.data.payload, b)
            await ctx.tick().until(tx.data.ready)
        ctx.set(tx.data.valid, 0)
        for _ in range(12 * divisor):
            await ctx.tick()

    async def recv(ctx):
        async for _, _, valid, byte, ferr in ctx.tick().sample(rx.valid, rx.data, rx.frame_error):
            assert not ferr
            if valid:
                got.append(byte)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_process(recv)
    sim.run()
    assert got == data


def test_uart_divisor_checks():
    assert uart_divisor(50e6, 2_000_000) == 25
    with pytest.raises(ValueError, match="off by"):
        uart_divisor(50e6, 3_000_000)
    with pytest.raises(ValueError, match="divisor"):
        uart_check(3)


def test_pll_params_match_ecppll():
    # yowasp-ecppll -i 25 -o 50 --clkout1 50 --phase1 270: CLKI_DIV 1, CLKFB_DIV 2, CLKOP_DIV 12,
    # CLKOP_CPHASE 5, CLKOS_CPHASE 14, FPHASE 0, VCO 600 MHz
    p = pll_params(25, 50, 270)
    assert (p["CLKI_DIV"], p["CLKFB_DIV"], p["CLKOP_DIV"]) == (1, 2, 12)
    assert (p["CLKOP_CPHASE"], p["CLKOS_CPHASE"], p["CLKOS_FPHASE"]) == (5, 14, 0)
    assert p["f_out_mhz"] == 50 and 400 <= p["vco_mhz"] <= 800


# ---------------------------------------------------------------------------------------------- SDRAM model

NOP, ACT, READ, WRITE, PRE, REF, MRS = "nop", "act", "read", "write", "pre", "ref", "mrs"
_DECODE = {0b111: NOP, 0b011: ACT, 0b101: READ, 0b100: WRITE, 0b010: PRE, 0b001: REF, 0b000: MRS}


class SdramModel:
    """A behavioural SDR SDRAM with the timing checks of the datasheet (in cycles of the test clock): it
    samples the command pins at each rising edge, returns read data CL edges later (docs/board.md's
    convention) and raises AssertionError on any violated minimum, a command to a closed bank, a REFRESH
    with a bank open, or a refresh gap longer than tREFI."""

    def __init__(self, cycles, clock_mhz, part=AS4C32M16SB_7):
        self.c = cycles
        self.part = part
        self.refi_max = int(part.t_refi_us * clock_mhz)
        self.mem = {}
        self.open = {}  # bank -> row
        self.last = {}  # (what, bank) -> edge
        self.mode_cl = None
        self.first_cmd = None
        self.refresh_edges = []
        self.out = {}  # edge after which dq_i carries a word -> word
        self.driving = False
        self.commands = []

    def since(self, what, bank, edge):
        return edge - self.last.get((what, bank), -(10**9))

    def edge(self, e, cmd, ba, a, dq_o, dq_oe):
        c = self.c
        assert not (dq_oe and self.driving), f"edge {e}: DQ driven by both the controller and the SDRAM"
        if cmd != NOP:
            self.commands.append((e, cmd, ba, a))
            if self.first_cmd is None:
                self.first_cmd = e
                assert e >= c.init, f"first command at edge {e} before the {c.init}-cycle power-up wait"
            assert self.since(REF, None, e) >= c.rfc, f"edge {e}: {cmd} within tRFC of a REFRESH"
            assert self.since(MRS, None, e) >= c.mrd, f"edge {e}: {cmd} within tMRD of LOAD MODE"
        if cmd == MRS:
            assert not self.open
            self.mode_cl = (a >> 4) & 7
            assert a & 7 == 0, "burst length 1 expected"
            self.last[(MRS, None)] = e
        elif cmd == REF:
            assert not self.open, f"edge {e}: REFRESH with banks open {self.open}"
            for b in range(4):
                assert self.since(PRE, b, e) >= c.rp, f"edge {e}: REFRESH within tRP of a PRECHARGE"
            self.last[(REF, None)] = e
            self.refresh_edges.append(e)
        elif cmd == ACT:
            assert self.mode_cl is not None, "ACTIVE before LOAD MODE"
            assert ba not in self.open, f"edge {e}: ACTIVE to open bank {ba}"
            assert self.since(PRE, ba, e) >= c.rp, f"edge {e}: ACTIVE within tRP"
            assert self.since(ACT, ba, e) >= c.rc, f"edge {e}: ACTIVE within tRC"
            self.open[ba] = a
            self.last[(ACT, ba)] = e
        elif cmd == PRE:
            banks = range(4) if a & (1 << 10) else [ba]
            for b in banks:
                if b in self.open:
                    assert self.since(ACT, b, e) >= c.ras, f"edge {e}: PRECHARGE within tRAS"
                    assert self.since(WRITE, b, e) >= c.wr, f"edge {e}: PRECHARGE within tWR"
                    del self.open[b]
                self.last[(PRE, b)] = e
        elif cmd in (READ, WRITE):
            assert ba in self.open, f"edge {e}: {cmd} to closed bank {ba}"
            assert self.since(ACT, ba, e) >= c.rcd, f"edge {e}: {cmd} within tRCD"
            assert a & (1 << 10) == 0, "auto precharge not expected"
            key = (ba, self.open[ba], a & ((1 << self.part.col_bits) - 1))
            if cmd == WRITE:
                assert dq_oe, f"edge {e}: WRITE without dq_oe"
                self.mem[key] = dq_o
                self.last[(WRITE, ba)] = e
            else:
                self.out[e + self.mode_cl - 1] = self.mem.get(key, 0xDEAD)
        if self.refresh_edges and e - self.refresh_edges[-1] > self.refi_max:
            raise AssertionError(f"edge {e}: no REFRESH for {e - self.refresh_edges[-1]} cycles")
        word = self.out.pop(e, None)
        self.driving = word is not None
        return word


def attach_model(sim, pins, model):
    async def process(ctx):
        e = 0
        sigs = (pins.csn, pins.rasn, pins.casn, pins.wen, pins.ba, pins.a, pins.dq_o, pins.dq_oe)
        async for _, _rst, csn, rasn, casn, wen, ba, a, dq_o, dq_oe in ctx.tick().sample(*sigs):
            e += 1
            cmd = NOP if csn else _DECODE[(rasn << 2) | (casn << 1) | wen]
            word = model.edge(e, cmd, ba, a, dq_o, dq_oe)
            ctx.set(pins.dq_i, 0x5A5A if word is None else word)  # garbage when the SDRAM does not drive

    sim.add_process(process)


def simulate_with_sdram(m, pins, model, bench, process):
    """Simulate ``m`` at 1 MHz with ``model`` answering on its SDRAM ``pins``: the testbench ``bench`` beside
    the process ``process``, until the testbench returns."""
    sim = Simulator(m)
    sim.add_clock(1e-6)
    attach_model(sim, pins, model)
    sim.add_testbench(bench)
    sim.add_process(process)
    sim.run()


def word_of(beat_addr, i):
    return (beat_addr * 2654435761 + i * 40503) & 0xFFFF


@pytest.mark.parametrize("clock_mhz", [50, 125])
def test_sdram_controller(clock_mhz):
    """Init, writes (single beats), reads (bursts, one across a row end, with back-pressure), refreshes."""
    W, AB, MB = 4, 23, 8
    cyc = sdram_cycles(AS4C32M16SB_7, clock_mhz, init_cycles=20)
    dut = SdramController(bus_bytes=W, addr_bits=AB, max_burst=MB, part=AS4C32M16SB_7, cycles=cyc)
    model = SdramModel(cyc, clock_mhz)
    rng = random.Random(clock_mhz)
    # a row is 512 words = 256 beats: beats 250..260 cross from row 0 to row 1; others land in other banks
    bases = [0, 250, 256 * 5 + 3, (1 << 21) + 17, (3 << 21) + 8191 * 256 + 100]
    beats = sorted({b + i for b in bases for i in range(12)})
    data = {b: sum(word_of(b, i) << (16 * i) for i in range(W // 2)) for b in [*beats, 300]}
    reads = [(b, n) for b in bases for n in (8, 4)] + [(250, 8), (252, 8)]
    got = []

    async def bench(ctx):
        await ctx.tick().until(dut.ready)
        for b in beats:
            ctx.set(dut.wr.valid, 1)
            ctx.set(dut.wr.payload, {"addr": b, "data": data[b]})
            await ctx.tick().until(dut.wr.ready)
        ctx.set(dut.wr.valid, 0)
        for b, n in reads:
            ctx.set(dut.rreq.valid, 1)
            ctx.set(dut.rreq.payload, {"addr": b, "len_minus_one": n - 1})
            await ctx.tick().until(dut.rreq.ready)
        # a write to the open row right behind the reads (the controller must let their data leave the DQ bus first), then
        # its read-back
        ctx.set(dut.rreq.valid, 0)
        ctx.set(dut.wr.valid, 1)
        ctx.set(dut.wr.payload, {"addr": 300, "data": data[300]})
        await ctx.tick().until(dut.wr.ready)
        ctx.set(dut.wr.valid, 0)
        ctx.set(dut.rreq.valid, 1)
        ctx.set(dut.rreq.payload, {"addr": 300, "len_minus_one": 0})
        await ctx.tick().until(dut.rreq.ready)
        ctx.set(dut.rreq.valid, 0)
        want = sum(n for _, n in reads) + 1
        for _ in range(20000):
            if len(got) == want and len(model.refresh_edges) >= cyc.init_refreshes + 2:
                break
            await ctx.tick()
        assert len(got) == want

    async def reader(ctx):
        sigs = (dut.rdata.valid, dut.rdata.payload, dut.rdata.ready)
        async for _, _, valid, payload, was_ready in ctx.tick().sample(*sigs):
            ready = rng.random() < 0.7
            if valid and was_ready:
                got.append(payload)
            ctx.set(dut.rdata.ready, ready)

    simulate_with_sdram(dut, dut.pins, model, bench, reader)
    expect = [data[b + i] for b, n in reads for i in range(n)] + [data[300]]
    assert got == expect
    assert model.mode_cl == cyc.cl
    assert len(model.refresh_edges) >= cyc.init_refreshes + 2  # init refreshes and periodic ones
    assert [c for _, c, _, _ in model.commands[:2]] == [PRE, REF]


# ---------------------------------------------------------------------------------------------- host link


class _LinkBench:
    """HostLink + SdramController + the SDRAM model; bytes go straight into the link's rx stream."""

    def __init__(self, timeout_log2=12):
        W, AB, MB = 4, 23, 8
        self.W = W
        self.cyc = sdram_cycles(AS4C32M16SB_7, 50, init_cycles=20)
        m = Module()
        m.submodules.link = self.link = HostLink(
            bus_bytes=W, addr_bits=AB, max_burst=MB, divisor=8, clock_hz=50_000_000, timeout_log2=timeout_log2
        )
        m.submodules.sdram = self.sdram = SdramController(
            bus_bytes=W, addr_bits=AB, max_burst=MB, part=AS4C32M16SB_7, cycles=self.cyc
        )
        for name in ("rreq", "rdata", "wr"):
            wiring.connect(m, getattr(self.link.mem, name), getattr(self.sdram, name))
        self.m = m
        self.model = SdramModel(self.cyc, 50)
        self.words = []  # command words pushed
        self.host_done = 0
        self.clears = 0
        self.timeouts = 0

    def run(self, frames, status=None, cmd_ready_every=3):
        """Send each frame's bytes (waiting for its reply of the given length) and return the replies."""
        link = self.link
        replies = []
        tx_bytes = []

        async def bench(ctx):
            if status:
                for k, v in status.items():
                    ctx.set(getattr(link.status, k), v)
            await ctx.tick().until(self.sdram.ready)
            for frame, reply_len in frames:
                if frame is None:  # a pause of reply_len cycles
                    for _ in range(reply_len):
                        await ctx.tick()
                    continue
                for b in frame:
                    ctx.set(link.rx.valid, 1)
                    ctx.set(link.rx.payload, b)
                    await ctx.tick().until(link.rx.ready)
                    ctx.set(link.rx.valid, 0)
                    for _ in range(3):  # bytes arrive slower than the link takes them
                        await ctx.tick()
                while len(tx_bytes) < reply_len:
                    await ctx.tick()
                replies.append(bytes(tx_bytes[:reply_len]))
                del tx_bytes[:reply_len]

        async def sinks(ctx):
            n = 0
            ctx.set(link.tx.ready, 1)
            sigs = (
                link.cmd.valid,
                link.cmd.payload,
                link.host_done,
                link.clear,
                link.tx.valid,
                link.tx.payload,
            )
            async for _, _, cv, cw, hd, cl, tv, tb, cr, to in ctx.tick().sample(
                *sigs, link.cmd.ready, link.timeout
            ):
                self.timeouts += to
                n += 1
                if tv:
                    tx_bytes.append(tb)
                if cv and cr:
                    self.words.append(cw)
                ctx.set(link.cmd.ready, n % cmd_ready_every == 0)
                self.host_done += hd
                self.clears += cl

        simulate_with_sdram(self.m, self.sdram.pins, self.model, bench, sinks)
        return replies


def _frame(op, header=b"", payload=b""):
    return bytes([op]) + header + payload


def _check_trailer(op, sent_after_op, reply, data_len):
    data, tr = reply[:data_len], reply[data_len:]
    assert tr == bp.trailer(op, sent_after_op, data), (op, reply.hex())
    return data


def test_hostlink_write_read_push_poll():
    tb = _LinkBench()
    W = tb.W
    rng = random.Random(7)
    n = 21  # more than two bursts of max_burst beats
    payload = bytes(rng.randrange(256) for _ in range(n * W))
    wr_hdr = (1000).to_bytes(4, "little") + n.to_bytes(2, "little")
    rd_hdr = (998).to_bytes(4, "little") + (n + 2).to_bytes(2, "little")
    words = [rng.getrandbits(64) for _ in range(5)]
    push_hdr = len(words).to_bytes(2, "little")
    push_payload = b"".join(w.to_bytes(8, "little") for w in words)
    status = {
        "flags": bp.FLAG_HOST | bp.FLAG_IDLE,
        "host_op": 0x1234,
        "cmd_free": 77,
        "active_cycles": 123456,
        "cmd_words": 42,
    }
    frames = [
        (_frame(bp.OP_INFO), bp.INFO_BYTES + 2),
        (_frame(bp.OP_WRITE, wr_hdr, payload), 2),
        (_frame(bp.OP_READ, rd_hdr), (n + 2) * W + 2),
        (_frame(bp.OP_PUSH, push_hdr, push_payload), 2),
        (_frame(bp.OP_POLL), bp.POLL_BYTES + 2),
        (_frame(bp.OP_HOST_DONE), 1 + 2),
        (_frame(bp.OP_CLEAR), 2),
        (bytes([0x42]), 2),
    ]
    r = tb.run(frames, status)
    info = bp.parse_info(_check_trailer(bp.OP_INFO, b"", r[0], bp.INFO_BYTES))
    assert info == {
        "version": 1,
        "bus_bytes": 4,
        "addr_bits": 23,
        "max_burst": 8,
        "divisor": 8,
        "clock_hz": 50_000_000,
    }
    _check_trailer(bp.OP_WRITE, wr_hdr + payload, r[1], 0)
    back = _check_trailer(bp.OP_READ, rd_hdr, r[2], (n + 2) * W)
    assert back[2 * W :] == payload  # the two beats before the written ones were never written
    _check_trailer(bp.OP_PUSH, push_hdr + push_payload, r[3], 0)
    assert tb.words == words
    poll = bp.parse_poll(_check_trailer(bp.OP_POLL, b"", r[4], bp.POLL_BYTES))
    assert poll["host"] and poll["idle"] and not poll["busy"]
    assert (poll["host_op"], poll["cmd_free"], poll["active_cycles"], poll["cmd_words"]) == (
        0x1234,
        77,
        123456,
        42,
    )
    assert _check_trailer(bp.OP_HOST_DONE, b"", r[5], 1) == b"\x01"
    assert tb.host_done == 1
    _check_trailer(bp.OP_CLEAR, b"", r[6], 0)
    assert tb.clears == 1
    assert r[7] == bytes([bp.UNKNOWN_REPLY, 0x42])


def test_hostlink_timeout_abandons_a_stalled_frame():
    """A WRITE whose payload stops coming is abandoned after 2^timeout_log2 quiet cycles (not counting the
    cycles in which bytes do come: a long frame at line rate never times out); the next frame works."""
    tb = _LinkBench(timeout_log2=9)
    n = 40  # 160 payload bytes, 4 cycles apart: far longer than 2^9 cycles in all
    hdr = (0).to_bytes(4, "little") + n.to_bytes(2, "little")
    body = bytes(range(4 * n))
    stalled = (7).to_bytes(4, "little") + (2).to_bytes(2, "little") + bytes([1, 2, 3])
    r = tb.run(
        [
            (_frame(bp.OP_WRITE, hdr, body), 2),
            (_frame(bp.OP_WRITE, stalled), 0),
            (None, 1200),
            (_frame(bp.OP_INFO), bp.INFO_BYTES + 2),
        ]
    )
    _check_trailer(bp.OP_WRITE, hdr + body, r[0], 0)
    assert r[1] == b"" and tb.timeouts == 1
    bp.parse_info(_check_trailer(bp.OP_INFO, b"", r[2], bp.INFO_BYTES))


def test_hostlink_checksum_detects_corruption():
    """The trailer's sum covers the payload: a corrupted WRITE byte gives a trailer the PC rejects."""
    tb = _LinkBench()
    hdr = (5).to_bytes(4, "little") + (1).to_bytes(2, "little")
    payload = bytes([1, 2, 3, 4])
    sent = bytes([1, 2, 3, 0x84])  # the line flipped a bit
    r = tb.run([(_frame(bp.OP_WRITE, hdr, sent), 2)])
    assert r[0] != bp.trailer(bp.OP_WRITE, hdr + payload, b"")
    assert r[0] == bp.trailer(bp.OP_WRITE, hdr + sent, b"")


# ---------------------------------------------------------------------------------------------- the board core


class _CoreSession:
    """BoardCore (accelerator top included) with a PC-side UART and the SDRAM model: ``run(script)`` runs the
    async ``script(x)``, where ``await x(frame, reply_len)`` sends a frame and returns the reply."""

    def __init__(self, acfg, div=4):
        from hw.deploy import BoardCore

        self.acfg, self.div = acfg, div
        m = Module()
        m.submodules.core = self.core = BoardCore(
            acfg, divisor=div, clock_mhz=50, init_cycles=20, timeout_log2=14
        )
        m.submodules.pc_tx = self.pc_tx = UartTx(div)
        m.submodules.pc_rx = self.pc_rx = UartRx(div)
        m.d.comb += [self.core.uart_rx.eq(self.pc_tx.tx), self.pc_rx.rx.eq(self.core.uart_tx)]
        self.m = m
        self.model = SdramModel(self.core.cycles, 50)

    def run(self, script):
        received = []
        pc_tx, pc_rx = self.pc_tx, self.pc_rx

        async def bench(ctx):
            async def xfer(frame, n):
                for b in frame:
                    ctx.set(pc_tx.data.valid, 1)
                    ctx.set(pc_tx.data.payload, b)
                    await ctx.tick().until(pc_tx.data.ready)
                ctx.set(pc_tx.data.valid, 0)
                for _ in range(200000):
                    if len(received) >= n:
                        break
                    await ctx.tick()
                reply = bytes(received[:n])
                del received[:n]
                return reply

            await script(xfer)

        async def listen(ctx):
            async for _, _, valid, byte in ctx.tick().sample(pc_rx.valid, pc_rx.data):
                if valid:
                    received.append(byte)

        simulate_with_sdram(self.m, self.core.sdram, self.model, bench, listen)


async def _poll(x):
    return bp.parse_poll(
        _check_trailer(bp.OP_POLL, b"", await x(_frame(bp.OP_POLL), bp.POLL_BYTES + 2), bp.POLL_BYTES)
    )


def test_board_core_host_op_flow():
    """BoardCore over its UART: INFO, WRITE/READ through the arbiter and the SDRAM, PUSH of a HOST command,
    POLL sees the pending op, HOST_DONE releases it, the counters count."""
    from hw.config import load_config
    from hw.isa import OP_HOST

    acfg = load_config("configs/ulx3s.yaml")
    s = _CoreSession(acfg)
    W = acfg.memory.bus_bytes
    payload = bytes(range(7, 7 + 3 * W))
    wr_hdr = (64).to_bytes(4, "little") + (3).to_bytes(2, "little")
    host_word = OP_HOST | (513 << 16)
    out = {}

    async def script(x):
        out["info"] = await x(_frame(bp.OP_INFO), bp.INFO_BYTES + 2)
        out["p0"] = await _poll(x)
        out["write"] = await x(_frame(bp.OP_WRITE, wr_hdr, payload), 2)
        out["read"] = await x(_frame(bp.OP_READ, wr_hdr), 3 * W + 2)
        await x(_frame(bp.OP_PUSH, (1).to_bytes(2, "little"), host_word.to_bytes(8, "little")), 2)
        out["p1"] = await _poll(x)
        out["done1"] = await x(_frame(bp.OP_HOST_DONE), 3)
        out["p2"] = await _poll(x)
        out["done2"] = await x(_frame(bp.OP_HOST_DONE), 3)

    s.run(script)
    info = bp.parse_info(_check_trailer(bp.OP_INFO, b"", out["info"], bp.INFO_BYTES))
    assert (info["bus_bytes"], info["addr_bits"], info["divisor"]) == (W, acfg.memory.addr_bits, s.div)
    p0 = out["p0"]
    assert p0["idle"] and not p0["busy"] and not p0["host"] and p0["cmd_free"] == bp.CMD_FIFO_DEPTH
    _check_trailer(bp.OP_WRITE, wr_hdr + payload, out["write"], 0)
    assert _check_trailer(bp.OP_READ, wr_hdr, out["read"], 3 * W) == payload
    p1 = out["p1"]
    assert p1["host"] and p1["busy"] and p1["idle"] and p1["host_op"] == 513 and p1["cmd_words"] == 1
    assert _check_trailer(bp.OP_HOST_DONE, b"", out["done1"], 1) == b"\x01"
    p2 = out["p2"]
    assert p2["idle"] and not p2["host"] and not p2["busy"] and p2["sdram_ready"]
    assert not p2["overrun"] and not p2["timeout"]
    # fetch (1 word) + dispatch + the host handshake cycle: what sim/top_bench.py counts for a HOST command
    assert p2["active_cycles"] == 3
    assert _check_trailer(bp.OP_HOST_DONE, b"", out["done2"], 1) == b"\x00"  # nothing pending any more


def test_board_core_runs_a_gemm():
    """A GEMM command through the whole board: the image written over the UART into the SDRAM, the command
    pushed, the engine reading and writing the SDRAM through the controller (every access checked against
    the datasheet timing by the model), C read back over the UART and compared with numpy."""
    import numpy as np

    from hw.config import load_config
    from hw.gemm_layout import build_gemm_image, unpack_c
    from hw.isa import encode_program

    acfg = load_config("configs/ulx3s.yaml")
    geo = acfg.gemm_geometry
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (4, 16), dtype=np.int8)  # one 4×4 tile, one k tile: small for the UART
    b = rng.integers(-128, 128, (16, 4), dtype=np.int8)
    img = build_gemm_image(acfg, a, b, base=100)
    cmd = img.command
    image = img.image
    words = encode_program([cmd])
    s = _CoreSession(acfg)
    W = acfg.memory.bus_bytes
    nout = img.shape.c_beats(geo, False)
    out = {}

    async def script(x):
        body = image[100 : cmd.c_base].tobytes()
        hdr = (100).to_bytes(4, "little") + (cmd.c_base - 100).to_bytes(2, "little")
        _check_trailer(bp.OP_WRITE, hdr + body, await x(_frame(bp.OP_WRITE, hdr, body), 2), 0)
        pw = b"".join(w.to_bytes(8, "little") for w in words)
        hdr = len(words).to_bytes(2, "little")
        _check_trailer(bp.OP_PUSH, hdr + pw, await x(_frame(bp.OP_PUSH, hdr, pw), 2), 0)
        for _ in range(50):
            p = await _poll(x)
            if p["idle"] and not p["host"]:
                break
        out["poll"] = p
        hdr = cmd.c_base.to_bytes(4, "little") + nout.to_bytes(2, "little")
        out["c"] = _check_trailer(bp.OP_READ, hdr, await x(_frame(bp.OP_READ, hdr), nout * W + 2), nout * W)

    s.run(script)
    assert out["poll"]["idle"] and out["poll"]["cmd_words"] == len(words)
    c_beats = np.frombuffer(out["c"], dtype=np.uint8).reshape(nout, W)
    c = unpack_c(c_beats, geo, img.shape, False)
    np.testing.assert_array_equal(c, a.astype(np.int64) @ b.astype(np.int64))
    assert out["poll"]["active_cycles"] > 0


def test_deploy_top_elaborates(tmp_path):
    """The ULX3S top elaborates with the board's platform: a PLL at the target clock, the SDRAM clock through
    an ODDR, every SDRAM and UART pin placed; the flow times the design clock, not the SDRAM clock."""
    from hw.boards import board
    from hw.config import load_config
    from hw.deploy import DeployTop
    from hw.fpga import _make_platform, platform_clock_hz

    b = board("ulx3s")
    top = DeployTop(load_config("configs/ulx3s.yaml"))
    # 2 MBd from the 40 MHz PLL
    assert top.clock_mhz == 40 and top.divisor == 20 and top.timing_clock == "clk"
    plan = _make_platform(b, platform_clock_hz(b)).prepare(top, name="top")
    plan.extract(str(tmp_path))
    il = (tmp_path / "top.il").read_text()
    lpf = (tmp_path / "top.lpf").read_text()
    assert "EHXPLLL" in il and "ODDRX1F" in il
    for pin in (
        "F19",
        "F20",
        "P20",
        "T20",
        "T19",
        "R20",
        "U19",
        "E20",
        "J16",
        "J17",
        "M20",
        "G19",
        "M1",
        "L4",
    ):
        assert f'"{pin}"' in lpf, pin
