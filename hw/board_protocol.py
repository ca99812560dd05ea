"""The board's host-link protocol (docs/board.md, "The host-link protocol"): opcodes, header and reply sizes,
POLL fields and flag bits, the trailer checksum. Amaranth-free: the RTL (hw/hostlink.py) and the host
driver both read it, so the two sides cannot disagree on a number."""

from __future__ import annotations

__all__ = [
    "PROTOCOL_VERSION",
    "MAGIC",
    "OP_INFO",
    "OP_WRITE",
    "OP_READ",
    "OP_PUSH",
    "OP_POLL",
    "OP_HOST_DONE",
    "OP_CLEAR",
    "HEADER_BYTES",
    "REPLY_BYTES",
    "INFO_BYTES",
    "POLL_BYTES",
    "UNKNOWN_REPLY",
    "FLAG_BUSY",
    "FLAG_HOST",
    "FLAG_IDLE",
    "FLAG_SDRAM_READY",
    "FLAG_OVERRUN",
    "FLAG_TIMEOUT",
    "TIMEOUT_LOG2",
    "CMD_FIFO_DEPTH",
    "trailer",
    "sum8",
    "parse_poll",
    "parse_info",
]

PROTOCOL_VERSION = 1
MAGIC = b"TR"

OP_INFO = 0x01
OP_WRITE = 0x02
OP_READ = 0x03
OP_PUSH = 0x04
OP_POLL = 0x05
OP_HOST_DONE = 0x06
OP_CLEAR = 0x07

#: header bytes after the opcode (WRITE/READ: addr u32 + count u16; PUSH: count u16)
HEADER_BYTES = {OP_INFO: 0, OP_WRITE: 6, OP_READ: 6, OP_PUSH: 2, OP_POLL: 0, OP_HOST_DONE: 0, OP_CLEAR: 0}
INFO_BYTES = 12
POLL_BYTES = 16
#: fixed reply data bytes before the trailer (READ: count · bus_bytes, not listed)
REPLY_BYTES = {
    OP_INFO: INFO_BYTES,
    OP_WRITE: 0,
    OP_PUSH: 0,
    OP_POLL: POLL_BYTES,
    OP_HOST_DONE: 1,
    OP_CLEAR: 0,
}
#: the first byte of the answer to an unknown opcode (then the opcode; no trailer)
UNKNOWN_REPLY = 0xEE

FLAG_BUSY = 1 << 0
FLAG_HOST = 1 << 1
FLAG_IDLE = 1 << 2
FLAG_SDRAM_READY = 1 << 3
FLAG_OVERRUN = 1 << 4
FLAG_TIMEOUT = 1 << 5

#: a frame is abandoned when no byte arrives for 2**TIMEOUT_LOG2 cycles mid-frame
TIMEOUT_LOG2 = 22
#: command words the board queues ahead of the decoder
CMD_FIFO_DEPTH = 1024


def sum8(*chunks: bytes) -> int:
    """The trailer checksum: the sum of the bytes mod 256."""
    return sum(sum(c) for c in chunks) & 0xFF


def trailer(opcode: int, sent_after_opcode: bytes, reply_data: bytes) -> bytes:
    """The 2 bytes the board sends after a frame's reply data."""
    return bytes([opcode | 0x80, sum8(sent_after_opcode, reply_data)])


def parse_info(data: bytes) -> dict:
    """INFO's 12 reply bytes as a dict; ValueError when the magic or the version is not ours."""
    if len(data) != INFO_BYTES or data[:2] != MAGIC:
        raise ValueError(f"INFO reply {data.hex()} does not start with {MAGIC!r}: not a Tritium board")
    if data[2] != PROTOCOL_VERSION:
        raise ValueError(f"board speaks host-link protocol {data[2]}, this driver {PROTOCOL_VERSION}")
    return {
        "version": data[2],
        "bus_bytes": data[3],
        "addr_bits": data[4],
        "max_burst": data[5],
        "divisor": int.from_bytes(data[6:8], "little"),
        "clock_hz": int.from_bytes(data[8:12], "little"),
    }


def parse_poll(data: bytes) -> dict:
    """POLL's 16 reply bytes as a dict of named fields and flags."""
    if len(data) != POLL_BYTES:
        raise ValueError(f"POLL reply has {len(data)} bytes, expected {POLL_BYTES}")
    f = data[0]
    return {
        "busy": bool(f & FLAG_BUSY),
        "host": bool(f & FLAG_HOST),
        "idle": bool(f & FLAG_IDLE),
        "sdram_ready": bool(f & FLAG_SDRAM_READY),
        "overrun": bool(f & FLAG_OVERRUN),
        "timeout": bool(f & FLAG_TIMEOUT),
        "host_op": int.from_bytes(data[2:4], "little"),
        "cmd_free": int.from_bytes(data[4:6], "little"),
        "active_cycles": int.from_bytes(data[8:12], "little"),
        "cmd_words": int.from_bytes(data[12:16], "little"),
    }
