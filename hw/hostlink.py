"""The host-link protocol engine and the memory arbiter of the board top (docs/board.md).

:class:`HostLink` reads frames from the UART byte stream (``rx``) and answers on ``tx``: INFO, WRITE/READ of
memory beats through its own memory port (``rreq``/``rdata``/``wr``, the accelerator's port layout), PUSH of
command words into the command FIFO (``cmd``), POLL of the status inputs, HOST_DONE (a one-cycle
``host_done``) and CLEAR (a one-cycle ``clear``). The opcodes and sizes are hw/board_protocol.py's.
Every frame ends with the trailer ``opcode | 0x80, sum8``. A frame that stalls for 2^TIMEOUT_LOG2 cycles
while waiting for a byte is abandoned (``timeout`` pulses).

:class:`MemArbiter` gives the SDRAM controller's port to the host link while ``host_owns`` (the accelerator
is idle or waits at a host op: it cannot use memory until the PC acts), to the accelerator otherwise.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw import board_protocol as bp
from hw.mem_port import forward_mem_port

__all__ = ["HostLink", "MemArbiter", "mem_port_signature"]


def mem_port_signature(bus_bytes: int, addr_bits: int, max_burst: int) -> wiring.Signature:
    """The accelerator's memory port as seen from the side that issues requests (hw/top.py)."""
    lb = max(1, (max_burst - 1).bit_length())
    return wiring.Signature(
        {
            "rreq": Out(stream.Signature(data.StructLayout({"addr": addr_bits, "len_minus_one": lb}))),
            "rdata": In(stream.Signature(unsigned(8 * bus_bytes))),
            "wr": Out(stream.Signature(data.StructLayout({"addr": addr_bits, "data": 8 * bus_bytes}))),
        }
    )


class MemArbiter(wiring.Component):
    """Two request ports (``host``, ``acc``) onto one (``mem``), switched by ``host_owns``."""

    def __init__(self, bus_bytes: int, addr_bits: int, max_burst: int):
        sig = mem_port_signature(bus_bytes, addr_bits, max_burst)
        super().__init__({"host": In(sig), "acc": In(sig), "mem": Out(sig), "host_owns": In(1)})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.host_owns):
            m.d.comb += self._route(self.host)
        with m.Else():
            m.d.comb += self._route(self.acc)
        return m

    def _route(self, src):
        return forward_mem_port(src, self.mem)


_STATUS = data.StructLayout(
    {"flags": 8, "zero0": 8, "host_op": 16, "cmd_free": 16, "zero1": 16, "active_cycles": 32, "cmd_words": 32}
)


class HostLink(wiring.Component):
    """The protocol engine (module docstring)."""

    def __init__(
        self,
        *,
        bus_bytes: int,
        addr_bits: int,
        max_burst: int,
        divisor: int,
        clock_hz: int,
        timeout_log2: int = bp.TIMEOUT_LOG2,
    ):
        self.timeout_log2 = timeout_log2
        self.bus_bytes, self.addr_bits, self.max_burst = bus_bytes, addr_bits, max_burst
        self.divisor, self.clock_hz = divisor, int(clock_hz)
        super().__init__(
            {
                "rx": In(stream.Signature(8)),
                "tx": Out(stream.Signature(8)),
                "mem": Out(mem_port_signature(bus_bytes, addr_bits, max_burst)),
                "cmd": Out(stream.Signature(64)),
                "status": In(_STATUS),
                "host_done": Out(1),
                "clear": Out(1),
                "timeout": Out(1),
            }
        )

    def info_bytes(self) -> bytes:
        return (
            bp.MAGIC
            + bytes([bp.PROTOCOL_VERSION, self.bus_bytes, self.addr_bits, self.max_burst])
            + self.divisor.to_bytes(2, "little")
            + self.clock_hz.to_bytes(4, "little")
        )

    def elaborate(self, platform):
        m = Module()
        W, MB = self.bus_bytes, self.max_burst
        rx, tx = self.rx, self.tx
        OBUF = max(16, W, 8)  # bytes the send buffer holds (POLL is the longest fixed reply)

        opcode = Signal(8)
        sum8 = Signal(8)
        hdr = Signal(48)  # header bytes, little-endian (addr u32 + count u16, or count u16)
        nbytes = Signal(range(max(OBUF, 8, 6) + 1))  # bytes left to receive or send in this step
        obuf = Signal(8 * OBUF)
        osum = Signal()  # the bytes being sent count in sum8
        IB = 8 * max(8, W)
        ibuf = Signal(IB)  # payload bytes of one beat / word being received (shifted in from the top)
        addr = Signal(32)
        count = Signal(17)
        burst_left = Signal(range(MB + 1))
        after = Signal(2)  # where SEND goes when done: 0 trailer, 1 next READ beat, 2 new frame
        timer = Signal(self.timeout_log2 + 1)

        rx_take = Signal()
        m.d.comb += rx_take.eq(rx.valid & rx.ready)

        def recv_state(nxt_when_done, on_byte=()):
            """Receive ``nbytes`` bytes into ibuf/hdr (shifted in from the top), adding them to sum8."""
            m.d.comb += rx.ready.eq(1)
            m.d.sync += timer.eq(timer + 1)
            with m.If(rx_take):  # (after the increment: this assignment wins)
                m.d.sync += [timer.eq(0), sum8.eq(sum8 + rx.payload), nbytes.eq(nbytes - 1), *on_byte]
                with m.If(nbytes == 1):
                    m.next = nxt_when_done
            with m.If(timer[-1]):
                m.d.comb += self.timeout.eq(1)
                m.next = "OPCODE"

        def send(nbytes_v, payload, add, after_v):
            m.d.sync += [nbytes.eq(nbytes_v), obuf.eq(payload), osum.eq(add), after.eq(after_v)]
            m.next = "SEND"

        status_bytes = self.status.as_value()
        info = Const(int.from_bytes(self.info_bytes(), "little"), 8 * bp.INFO_BYTES)
        count_hdr = hdr[32:48]

        with m.FSM():
            with m.State("OPCODE"):
                m.d.comb += rx.ready.eq(1)
                m.d.sync += timer.eq(0)
                with m.If(rx.valid):
                    m.d.sync += [opcode.eq(rx.payload), sum8.eq(0)]
                    with m.Switch(rx.payload):
                        with m.Case(bp.OP_WRITE, bp.OP_READ):
                            m.d.sync += nbytes.eq(6)
                            m.next = "HEADER"
                        with m.Case(bp.OP_PUSH):
                            m.d.sync += [nbytes.eq(2), hdr.eq(0)]
                            m.next = "HEADER"
                        with m.Case(bp.OP_INFO):
                            send(bp.INFO_BYTES, info, 1, 0)
                        with m.Case(bp.OP_POLL):
                            send(bp.POLL_BYTES, status_bytes, 1, 0)
                        with m.Case(bp.OP_HOST_DONE):
                            m.d.comb += self.host_done.eq(1)
                            send(1, self.status.flags[1], 1, 0)  # FLAG_HOST: the op was pending
                        with m.Case(bp.OP_CLEAR):
                            m.d.comb += self.clear.eq(1)
                            send(0, 0, 0, 0)
                        with m.Default():
                            send(2, Cat(Const(bp.UNKNOWN_REPLY, 8), rx.payload), 0, 2)
            with m.State("HEADER"):
                # shift in from the top: after 6 bytes hdr = addr | count << 32; after 2 (PUSH) count is
                # in hdr[32:48] as well
                recv_state("DISPATCH", [hdr.eq(Cat(hdr[8:], rx.payload))])
            with m.State("DISPATCH"):
                m.d.sync += [addr.eq(hdr[:32]), count.eq(count_hdr)]
                with m.If(count_hdr == 0):  # nothing to move: answer at once
                    send(0, 0, 0, 0)
                with m.Elif(opcode == bp.OP_WRITE):
                    m.d.sync += nbytes.eq(W)
                    m.next = "WRITE_DATA"
                with m.Elif(opcode == bp.OP_READ):
                    m.next = "READ_REQ"
                with m.Else():
                    m.d.sync += nbytes.eq(8)
                    m.next = "PUSH_DATA"
            with m.State("WRITE_DATA"):
                recv_state("WRITE_BEAT", [ibuf.eq(Cat(ibuf[8:], rx.payload))])
            with m.State("WRITE_BEAT"):
                wr = self.mem.wr
                m.d.comb += [wr.valid.eq(1), wr.payload.addr.eq(addr), wr.payload.data.eq(ibuf[IB - 8 * W :])]
                with m.If(wr.ready):
                    m.d.sync += [addr.eq(addr + 1), count.eq(count - 1), nbytes.eq(W)]
                    with m.If(count == 1):
                        send(0, 0, 0, 0)
                    with m.Else():
                        m.next = "WRITE_DATA"
            with m.State("READ_REQ"):
                rq = self.mem.rreq
                blen = Mux(count > MB, MB, count)
                m.d.comb += [rq.valid.eq(1), rq.payload.addr.eq(addr), rq.payload.len_minus_one.eq(blen - 1)]
                with m.If(rq.ready):
                    m.d.sync += [addr.eq(addr + blen), count.eq(count - blen), burst_left.eq(blen)]
                    m.next = "READ_BEAT"
            with m.State("READ_BEAT"):
                rd = self.mem.rdata
                m.d.comb += rd.ready.eq(1)
                with m.If(rd.valid):
                    m.d.sync += burst_left.eq(burst_left - 1)
                    send(W, rd.payload, 1, 1)
            with m.State("PUSH_DATA"):
                recv_state("PUSH_WORD", [ibuf.eq(Cat(ibuf[8:], rx.payload))])
            with m.State("PUSH_WORD"):
                m.d.comb += [self.cmd.valid.eq(1), self.cmd.payload.eq(ibuf[IB - 64 :])]
                with m.If(self.cmd.ready):
                    m.d.sync += [count.eq(count - 1), nbytes.eq(8)]
                    with m.If(count == 1):
                        send(0, 0, 0, 0)
                    with m.Else():
                        m.next = "PUSH_DATA"
            with m.State("SEND"):
                with m.If(nbytes == 0):
                    with m.Switch(after):
                        with m.Case(0):
                            m.d.sync += nbytes.eq(2)
                            m.next = "TRAILER"
                        with m.Case(1):  # a READ beat went out: the next beat, burst or the trailer
                            with m.If(burst_left != 0):
                                m.next = "READ_BEAT"
                            with m.Elif(count != 0):
                                m.next = "READ_REQ"
                            with m.Else():
                                m.d.sync += nbytes.eq(2)
                                m.next = "TRAILER"
                        with m.Default():
                            m.next = "OPCODE"
                with m.Else():
                    m.d.comb += [tx.valid.eq(1), tx.payload.eq(obuf[:8])]
                    with m.If(tx.ready):
                        m.d.sync += [obuf.eq(obuf >> 8), nbytes.eq(nbytes - 1)]
                        with m.If(osum):
                            m.d.sync += sum8.eq(sum8 + obuf[:8])
            with m.State("TRAILER"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(Mux(nbytes == 2, opcode | 0x80, sum8))]
                with m.If(tx.ready):
                    m.d.sync += nbytes.eq(nbytes - 1)
                    with m.If(nbytes == 1):
                        m.next = "OPCODE"
        return m
