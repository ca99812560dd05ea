"""UART receiver and transmitter, 8N1, one bit every ``divisor`` clock cycles (divisor = clock / baud).

:class:`UartRx` synchronizes the line (2 flip-flops), starts at a falling edge, checks the start bit half a
bit later and samples each data bit in its middle; a byte whose stop bit is not high is dropped. ``data`` is
valid for the one cycle ``valid`` is high (no back-pressure: the host link queues bytes in a FIFO).
:class:`UartTx` sends the byte of each ``data`` stream transfer; ``tx`` comes from a register and idles high.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UartRx", "UartTx", "MIN_DIVISOR", "check_divisor"]

#: the smallest bit time in cycles the receiver's mid-bit sampling handles
MIN_DIVISOR = 4


def check_divisor(divisor: int) -> int:
    if int(divisor) != divisor or divisor < MIN_DIVISOR:
        raise ValueError(
            f"UART divisor must be an integer >= {MIN_DIVISOR} clock cycles per bit, got {divisor}"
        )
    return int(divisor)


class UartRx(wiring.Component):
    """``rx`` the line; ``data`` valid while ``valid`` (one cycle); ``frame_error`` pulses when a byte with
    a low stop bit was dropped."""

    def __init__(self, divisor: int):
        self.divisor = check_divisor(divisor)
        super().__init__({"rx": In(1, init=1), "data": Out(8), "valid": Out(1), "frame_error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        sync1, line = Signal(init=1), Signal(init=1)
        m.d.sync += [sync1.eq(self.rx), line.eq(sync1)]
        count = Signal(range(d))
        bit = Signal(range(9))
        shift = Signal(8)
        m.d.sync += [self.valid.eq(0), self.frame_error.eq(0)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += count.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += count.eq(count - 1)
                with m.If(count == 0):
                    with m.If(line):  # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [count.eq(d - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += count.eq(count - 1)
                with m.If(count == 0):
                    m.d.sync += [shift.eq((shift >> 1) | (line << 7)), count.eq(d - 1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += count.eq(count - 1)
                with m.If(count == 0):
                    with m.If(line):
                        m.d.sync += [self.data.eq(shift), self.valid.eq(1)]
                    with m.Else():
                        m.d.sync += self.frame_error.eq(1)
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """Sends each byte taken from the ``data`` stream on ``tx``."""

    def __init__(self, divisor: int):
        self.divisor = check_divisor(divisor)
        super().__init__({"data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        shift = Signal(9)  # data bits then the stop bit, sent LSB first after the start bit
        bits = Signal(range(11))  # bits left to send, start bit included
        count = Signal(range(d))
        m.d.comb += self.data.ready.eq(bits == 0)
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [self.tx.eq(0), shift.eq(self.data.payload | (1 << 8)), bits.eq(10), count.eq(d - 1)]
        with m.Elif(bits != 0):
            m.d.sync += count.eq(count - 1)
            with m.If(count == 0):
                m.d.sync += [count.eq(d - 1), bits.eq(bits - 1)]
                with m.If(bits == 1):
                    m.d.sync += self.tx.eq(1)
                with m.Else():
                    m.d.sync += [self.tx.eq(shift[0]), shift.eq(shift >> 1)]
        return m
