"""The host driver of the ULX3S board (docs/board.md): a compiled model's Programs run on the board's
accelerator over its UART host link, with the host ops on this PC.

    tritium board run MODEL --port /dev/ttyUSB0 [--config configs/ulx3s.yaml] [--prompt TEXT] [--tokens N]
    tritium run PROGRAM_DIR --board ulx3s --port /dev/ttyUSB0 [--prompt TEXT | --tokens IDS]

Layers: the **transport** (:class:`SerialPort`: a tty or pseudo-terminal opened as a file descriptor in raw
mode, no pyserial needed; :class:`TcpPort` for ``tcp:HOST:PORT``), the **link** (:class:`BoardLink`: the
host-link protocol v1 of hw/board_protocol.py, every frame's trailer and checksum checked), and the
**runner** (:class:`BoardRunner`): it loads the first Program's memory image (packed weights, tables, zeroed
KV cache and buffers) into the board's SDRAM, then runs each step as docs/board.md's rule 3 says — WRITE the
step's input, PUSH its command words as the command FIFO has room, and at each HOST op run the op with
sim/runtime.py's host functions, exactly as the SoC's CPU would: the op's inputs are READ from board memory,
its outputs WRITTEN back, then HOST_DONE.

Which bytes move: the runner keeps a *shadow* of the board memory. Everything in board memory is written by
this driver except what the accelerator's commands write (TLMM result streams, GEMM output tiles); those
byte ranges are marked stale once the command has run (POLL's ``cmd_words`` says how far the decoder got).
A host op looks its tensors up by name (hw.program.Program.tensors); the lookup first READs the stale bytes
of that tensor from the board, so the op computes on the board's values. After the op, the bytes the op
changed in the shadow are WRITTEN to the board (runs closer than :data:`MERGE_GAP` bytes go in one frame).
The shadow is therefore equal to the board wherever a host op looks, and the transfers are the op's inputs
from the accelerator and its outputs: what the SoC's CPU would read and write.

Errors: a model that does not fit the board's SDRAM is refused before anything is sent (:class:`FitError`,
one line, exit 2); a broken line (bad trailer or checksum, no answer, a lost byte flagged by the board) is a
:class:`LinkError` (exit 1).
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field, replace

import numpy as np

from hw import board_protocol as bp
from hw.isa import GemmCommand, HostCommand, TlmmCommand, command_words
from hw.program import Program

__all__ = [
    "BOARD_SDRAM_BYTES",
    "MERGE_GAP",
    "LinkError",
    "FitError",
    "SerialPort",
    "TcpPort",
    "open_port",
    "BoardLink",
    "BoardRunner",
    "StepResult",
    "check_fit",
    "accelerator_writes",
]

#: The ULX3S-85F's SDRAM (docs/board.md, "Address map": 4 banks × 8192 rows × 512 columns × 2 B).
BOARD_SDRAM_BYTES = 32 << 20
#: Changed-byte runs closer than this are written in one WRITE frame (a frame costs 9 header/trailer bytes).
MERGE_GAP = 16
#: Beats per WRITE/READ frame (the count field allows 65535; smaller frames give progress and bound a retry).
FRAME_BEATS = 1024


class LinkError(RuntimeError):
    """The host link failed: no answer, a corrupted frame, or a byte the board lost."""


class FitError(ValueError):
    """A Program does not fit the board (memory size or bus width); one line."""


# ----------------------------------------------------------------------------------------------- transport
class SerialPort:
    """A serial device or pseudo-terminal as a raw file descriptor (8N1, no flow control, ``baud`` where the
    device has a rate; a pseudo-terminal ignores it)."""

    def __init__(self, path: str, baud: int | None = None, timeout_s: float = 10.0):
        import termios
        import tty

        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        except OSError as e:
            raise LinkError(f"cannot open serial port {path}: {e.strerror}") from None
        self.path, self.timeout_s = path, timeout_s
        tty.setraw(self.fd)
        attrs = termios.tcgetattr(self.fd)
        attrs[2] &= ~(termios.CRTSCTS | termios.PARENB | termios.CSTOPB)
        attrs[2] |= termios.CLOCAL | termios.CREAD | termios.CS8
        if baud is not None:
            const = getattr(termios, f"B{baud}", None)
            if const is None:
                os.close(self.fd)
                raise LinkError(f"{path}: baud rate {baud} is not one termios knows")
            attrs[4] = attrs[5] = const
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        termios.tcflush(self.fd, termios.TCIOFLUSH)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def read(self, n: int) -> bytes:
        out = bytearray()
        deadline = time.monotonic() + self.timeout_s
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise LinkError(
                    f"{self.path}: no answer from the board ({len(out)} of {n} bytes in {self.timeout_s:g} s)"
                )
            chunk = os.read(self.fd, n - len(out))
            if not chunk:
                raise LinkError(f"{self.path}: the port closed")
            out += chunk
        return bytes(out)

    def close(self) -> None:
        os.close(self.fd)


class TcpPort:
    """The link over a TCP socket (``tcp:HOST:PORT``: a serial-to-network bridge, or a simulator)."""

    def __init__(self, host: str, port: int, timeout_s: float = 10.0):
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as e:
            raise LinkError(f"cannot connect to tcp:{host}:{port}: {e}") from None
        self.path, self.timeout_s = f"tcp:{host}:{port}", timeout_s

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            try:
                chunk = self.sock.recv(n - len(out))
            except TimeoutError:
                raise LinkError(f"{self.path}: no answer from the board") from None
            if not chunk:
                raise LinkError(f"{self.path}: the connection closed")
            out += chunk
        return bytes(out)

    def close(self) -> None:
        self.sock.close()


def open_port(port: str, baud: int | None = None, timeout_s: float = 10.0):
    """``/dev/tty…`` (or a pseudo-terminal) → :class:`SerialPort`; ``tcp:HOST:PORT`` → :class:`TcpPort`."""
    if port.startswith("tcp:"):
        host, _, num = port[4:].rpartition(":")
        if not num.isdigit():
            raise ValueError(f"--port {port}: expected tcp:HOST:PORT")
        return TcpPort(host or "localhost", int(num), timeout_s)
    return SerialPort(port, baud, timeout_s)


# ----------------------------------------------------------------------------------------------- protocol
@dataclass
class LinkCounters:
    frames: int = 0
    sent: int = 0  # bytes PC → board
    received: int = 0  # bytes board → PC
    read_bytes: int = 0  # memory bytes READ
    write_bytes: int = 0  # memory bytes WRITTEN
    pushed_words: int = 0


class BoardLink:
    """The host-link protocol, version 1 (docs/board.md): one frame at a time, each answer checked."""

    def __init__(self, port):
        self.port = port
        self.count = LinkCounters()
        self.info = bp.parse_info(self._frame(bp.OP_INFO, reply=bp.INFO_BYTES))
        self.bus_bytes = self.info["bus_bytes"]

    def _frame(self, op: int, header: bytes = b"", payload: bytes = b"", reply: int = 0) -> bytes:
        sent = header + payload
        self.port.write(bytes([op]) + sent)
        data = self.port.read(reply + 2)
        body, tail = data[:reply], data[reply:]
        if tail[0] == bp.UNKNOWN_REPLY and reply == 0 and tail[1] == op:
            raise LinkError(f"the board does not know opcode {op:#04x}")
        if tail != bp.trailer(op, sent, body):
            raise LinkError(
                f"corrupted answer to opcode {op:#04x}: trailer {tail.hex()} (expected "
                f"{bp.trailer(op, sent, body).hex()}); the line lost or changed bytes"
            )
        c = self.count
        c.frames += 1
        c.sent += 1 + len(sent)
        c.received += len(data)
        return body

    def poll(self) -> dict:
        st = bp.parse_poll(self._frame(bp.OP_POLL, reply=bp.POLL_BYTES))
        if st["overrun"] or st["timeout"]:
            what = (
                "lost a received byte (RX FIFO overrun)" if st["overrun"] else "abandoned a frame (timeout)"
            )
            raise LinkError(f"the board {what}: the link is not reliable at this rate")
        return st

    def write(self, beat: int, data: bytes | np.ndarray, progress=None) -> None:
        """Write ``data`` (a whole number of beats) at beat address ``beat``."""
        data = (
            bytes(np.ascontiguousarray(data, np.uint8).reshape(-1)) if isinstance(data, np.ndarray) else data
        )
        W = self.bus_bytes
        if len(data) % W:
            raise ValueError(f"WRITE of {len(data)} bytes: not a whole number of {W}-byte beats")
        for off in range(0, len(data), FRAME_BEATS * W):
            chunk = data[off : off + FRAME_BEATS * W]
            self._frame(bp.OP_WRITE, struct.pack("<IH", beat + off // W, len(chunk) // W), chunk)
            self.count.write_bytes += len(chunk)
            if progress is not None:
                progress(len(chunk))

    def read(self, beat: int, beats: int) -> bytes:
        out = bytearray()
        W = self.bus_bytes
        for b in range(beat, beat + beats, FRAME_BEATS):
            n = min(FRAME_BEATS, beat + beats - b)
            out += self._frame(bp.OP_READ, struct.pack("<IH", b, n), reply=n * W)
        self.count.read_bytes += len(out)
        return bytes(out)

    def push(self, words) -> None:
        words = [int(w) for w in words]
        self._frame(bp.OP_PUSH, struct.pack("<H", len(words)), b"".join(struct.pack("<Q", w) for w in words))
        self.count.pushed_words += len(words)

    def host_done(self) -> bool:
        return self._frame(bp.OP_HOST_DONE, reply=1)[0] == 1

    def clear(self) -> None:
        self._frame(bp.OP_CLEAR)


# ----------------------------------------------------------------------------------------------- runner
def accelerator_writes(prog: Program) -> list[tuple[int, int, tuple[int, int]]]:
    """Per TLMM/GEMM command of ``prog``: (index of its first word, index after its last word, (first byte,
    end byte) it writes in memory, whole beats)."""
    acfg = prog.acfg
    W, t, geo = acfg.memory.bus_bytes, acfg.tlmm, acfg.gemm_geometry
    out, w = [], 0
    for cmd in prog.commands():
        n = command_words(cmd.OPCODE)
        if isinstance(cmd, TlmmCommand):
            nbytes = cmd.n_blocks * cmd.tokens * t.columns * 4
            out.append((w, w + n, (cmd.res_base * W, (cmd.res_base + -(-nbytes // W)) * W)))
        elif isinstance(cmd, GemmCommand):
            beats = cmd.m_tiles * cmd.n_tiles * geo.out_beats(cmd.requant)
            out.append((w, w + n, (cmd.c_base * W, (cmd.c_base + beats) * W)))
        w += n
    return out


def host_command_ends(prog: Program) -> list[tuple[int, int]]:
    """Per HOST command of ``prog``, in order: (its host-op index, index after its word)."""
    out, w = [], 0
    for cmd in prog.commands():
        w += command_words(cmd.OPCODE)
        if isinstance(cmd, HostCommand):
            out.append((cmd.op, w))
    return out


def check_fit(prog: Program, where: str, sdram_bytes: int = BOARD_SDRAM_BYTES, bus_bytes: int | None = None):
    """Raise :class:`FitError` (one line) if ``prog``'s memory does not fit the board's SDRAM or its bus."""
    W = prog.acfg.memory.bus_bytes
    need = prog.image.shape[0] * W
    if need > sdram_bytes:
        raise FitError(
            f"{where}: the model needs {need / 2**20:.1f} MB of accelerator memory (weights, KV cache, "
            f"buffers), the board's SDRAM holds {sdram_bytes / 2**20:.0f} MB: it does not fit"
        )
    if bus_bytes is not None and bus_bytes != W:
        raise FitError(
            f"{where}: compiled for a {W}-byte memory beat (config {prog.acfg.name}), the board's is "
            f"{bus_bytes} bytes: compile with the board's config (configs/ulx3s.yaml)"
        )


class _Fetching(dict):
    """A Program's tensor table whose lookups first bring the tensor's stale bytes from the board."""

    def __init__(self, tensors, runner):
        super().__init__(tensors)
        self.runner = runner
        self.used: set[str] = set()

    def __getitem__(self, name):
        ti = super().__getitem__(name)
        if ti.attrs.get("space") != "host":
            self.used.add(name)
            self.runner._refresh(ti.addr * self.runner.W, ti.addr * self.runner.W + ti.nbytes)
        return ti


@dataclass
class StepResult:
    logits: np.ndarray
    active_cycles: int  # the board's count (POLL), = sim/top_bench.py's for the same commands
    host_ops: int
    host_s: float  # PC time in host ops (compute only: the READs of their inputs not counted)
    wall_s: float
    link: dict = field(default_factory=dict)  # bytes and frames of this step


class BoardRunner:
    """Runs step Programs of one compiled model on the board (module docstring)."""

    def __init__(self, link: BoardLink, first: Program, progress=None, sdram_bytes: int = BOARD_SDRAM_BYTES):
        self.link, self.W = link, link.bus_bytes
        cap = min(sdram_bytes, (1 << link.info["addr_bits"]) * self.W)
        self.sdram_bytes = cap
        check_fit(first, "the model", cap, self.W)
        st = link.poll()
        deadline = time.monotonic() + 10
        while not st["sdram_ready"]:  # the controller's power-up wait (200 µs)
            if time.monotonic() > deadline:
                raise LinkError("the board's SDRAM did not become ready")
            st = link.poll()
        if not st["idle"] or st["host"]:
            raise LinkError("the board is busy (a previous run did not finish): reset it and try again")
        self.shadow = first.image.copy()
        self.stale: list[tuple[int, int]] = []
        self._before: np.ndarray | None = None  # the shadow before the running host op
        self._read_s = 0.0  # seconds spent in READs since the step began (inside host ops: not compute)
        link.write(0, self.shadow, progress)

    # ---- the shadow ----
    def _grow(self, beats: int) -> None:
        if self.shadow.shape[0] >= beats:
            return
        old = self.shadow.shape[0]
        grown = np.zeros((beats, self.W), np.uint8)
        grown[:old] = self.shadow
        self.shadow = grown
        self.link.write(old, grown[old:])  # step buffers grow with the context: zeroed as in sim.runtime

    def _refresh(self, lo: int, hi: int) -> None:
        """READ the stale bytes of [lo, hi) from the board into the shadow."""
        keep = []
        flat = self.shadow.reshape(-1)
        W = self.W
        for a, b in self.stale:
            s, e = max(a, lo), min(b, hi)
            if s >= e:
                keep.append((a, b))
                continue
            s0, e0 = s // W * W, -(-e // W) * W
            t0 = time.perf_counter()
            data = np.frombuffer(self.link.read(s0 // W, (e0 - s0) // W), np.uint8)
            self._read_s += time.perf_counter() - t0
            flat[s0:e0] = data
            if self._before is not None:  # fetched, not changed by the op: not to be written back
                self._before.reshape(-1)[s0:e0] = data
            if a < s0:
                keep.append((a, s0))
            if e0 < b:
                keep.append((e0, b))
        self.stale = keep

    def _write_changes(self, before: np.ndarray) -> None:
        """WRITE the beats whose bytes differ between ``before`` and the shadow."""
        W = self.W
        now = self.shadow.reshape(-1, W)
        n = min(len(before), len(now))
        diff = np.flatnonzero((before[:n] != now[:n]).any(axis=1))
        if not diff.size:
            return
        gap = max(1, MERGE_GAP // W)
        breaks = np.flatnonzero(np.diff(diff) > gap)
        starts = np.concatenate([[diff[0]], diff[breaks + 1]])
        ends = np.concatenate([diff[breaks], [diff[-1]]]) + 1
        for s, e in zip(starts, ends, strict=True):
            self.link.write(int(s), now[s:e])

    # ---- one step ----
    def run(self, prog: Program, tokens) -> StepResult:
        from sim.runtime import _Host, write_input

        t0 = time.perf_counter()
        check_fit(prog, "a step Program", self.sdram_bytes, self.W)
        c0 = replace(self.link.count)
        self._grow(prog.image.shape[0])
        tensors = _Fetching(prog.tensors, self)
        view = replace(prog, tensors=tensors)
        before = self.shadow.reshape(-1, self.W).copy()
        write_input(view, self.shadow, tokens)
        self._write_changes(before)
        host = _Host(view, self.shadow)
        words = [int(w) for w in prog.words]
        pending = accelerator_writes(prog)  # outputs not yet marked stale, in command order
        hosts, hk = host_command_ends(prog), 0  # HOST commands in order; the next one to come
        self.link.clear()
        pos, host_ops, host_s = 0, 0, 0.0
        st = self.link.poll()
        while True:
            if pos < len(words) and st["cmd_free"]:
                n = min(st["cmd_free"], len(words) - pos, 4096)
                self.link.push(words[pos : pos + n])
                pos += n
            st = self.link.poll()
            if st["host"]:
                # the decoder may already hold the words of the command after the host op (it fetches while it
                # waits), which has not run: only the commands up to this HOST command have finished
                while hk < len(hosts) and hosts[hk][0] != st["host_op"]:
                    hk += 1
                done_words = hosts[hk][1] if hk < len(hosts) else st["cmd_words"]
                hk += 1
                self._mark(pending, min(st["cmd_words"], done_words))
                op = prog.host_ops[st["host_op"]]
                self._before = self.shadow.reshape(-1, self.W).copy()
                h0, r0 = time.perf_counter(), self._read_s
                try:
                    host.run(op)
                finally:
                    before, self._before = self._before, None
                host_s += time.perf_counter() - h0 - (self._read_s - r0)
                self._write_changes(before)
                if not self.link.host_done():
                    raise LinkError("HOST_DONE: the board had no host op pending")
                host_ops += 1
                st = self.link.poll()
            elif st["idle"] and pos == len(words):
                break
        self._mark(pending, st["cmd_words"])
        if st["cmd_words"] != len(words):
            raise LinkError(f"the board took {st['cmd_words']} command words of {len(words)}")
        logits = host.f32(prog.meta["output"]).numpy()
        c1 = self.link.count
        link = {k: getattr(c1, k) - getattr(c0, k) for k in vars(c1)}
        return StepResult(logits, st["active_cycles"], host_ops, host_s, time.perf_counter() - t0, link)

    def _mark(self, pending: list, accepted: int) -> None:
        """Mark stale the outputs of the accelerator commands among the first ``accepted`` command words (the
        caller passes only words of finished commands: those up to the pending HOST command, or all when the
        board is idle)."""
        while pending and pending[0][1] <= accepted:
            self.stale.append(pending.pop(0)[2])


# ----------------------------------------------------------------------------------------------- commands
def prompt_tokens(text: str) -> list[int]:
    toks = list(text.encode("utf-8"))
    if not toks:
        raise ValueError("--prompt: empty (the prefill needs at least one token)")
    return toks


def compile_for_board(
    model, acfg, model_spec: str, lm_head: str | None = None, sdram_bytes=BOARD_SDRAM_BYTES
):
    """Compile ``model`` for the board; a model whose persistent memory (packed weights, KV cache) does not
    fit the board's SDRAM is refused with one :class:`FitError` line, before any Program is emitted."""
    from compiler import CompileError, compile_model

    lm_head = acfg.system.lm_head if lm_head is None else lm_head
    W = acfg.memory.bus_bytes
    space = min(sdram_bytes, (1 << acfg.memory.addr_bits) * W)
    try:
        cm = compile_model(model, acfg, lm_head=lm_head)
    except CompileError as e:
        if "memory exhausted" not in str(e):
            raise
        raise FitError(
            f"{model_spec}: does not fit the board's {space / 2**20:.0f} MB SDRAM (the compiler ran out of "
            f"memory placing {str(e).split(': memory exhausted', 1)[0].removeprefix('w:')})"
        ) from None
    need = cm.lowering.step_base * W
    if need > space:
        raise FitError(
            f"{model_spec}: needs {need / 2**20:.1f} MB for weights and KV cache, the board's SDRAM holds "
            f"{space / 2**20:.0f} MB: it does not fit"
        )
    return cm, lm_head


def generate_on_board(
    port,
    model_spec: str,
    config: str,
    prompt: list[int],
    new_tokens: int,
    lm_head: str | None = None,
    baud: int | None = None,
    quiet: bool = False,
) -> dict:
    """Compile ``model_spec`` for ``config``, check it fits, open ``port``, load the image and generate
    ``new_tokens`` greedy tokens (prefill of ``prompt`` + decode steps). Returns the report."""
    from compiler import load_model
    from hw.config import load_config
    from sim.progress import step

    acfg = load_config(config)
    step("compile")
    model = load_model(model_spec)
    if not getattr(model, "config", None) or getattr(model.config, "vocab", None) is None:
        raise ValueError(f"--model {model_spec}: the board driver generates with language models")
    cm, lm_head = compile_for_board(model, acfg, model_spec, lm_head)
    first = cm.program(len(prompt), 0, logits="last")
    check_fit(first, model_spec, BOARD_SDRAM_BYTES, acfg.memory.bus_bytes)
    if not first.meta.get("weights_materialized", True):
        raise ValueError(f"--model {model_spec}: a preset has no weights (compile a checkpoint)")
    t0 = time.perf_counter()
    link_port = open_port(port, baud)
    try:
        link = BoardLink(link_port)
        loaded = [0]
        step("load", lambda: f"{loaded[0] / 1024:.0f}/{first.image.size / 1024:.0f} KiB")

        def loading(n):
            loaded[0] += n

        runner = BoardRunner(link, first, progress=loading)
        load_s = time.perf_counter() - t0
        toks, steps = list(prompt), []
        for s in range(new_tokens):
            step("generate", f"step {s + 1}/{new_tokens}")
            prog = first if s == 0 else cm.program(1, len(toks) - 1, logits="last")
            res = runner.run(prog, toks if s == 0 else toks[-1:])
            toks.append(int(np.argmax(res.logits[-1])))
            steps.append(
                {
                    "active_cycles": res.active_cycles,
                    "host_ops": res.host_ops,
                    "wall_s": round(res.wall_s, 3),
                    "link": res.link,
                }
            )
    finally:
        link_port.close()
    return {
        "model": model_spec,
        "config": acfg.name,
        "board": link.info,
        "prompt": list(prompt),
        "tokens": toks[len(prompt) :],
        "load_bytes": int(first.image.size),
        "load_s": round(load_s, 2),
        "steps": steps,
    }


RUN_STAGES = ("compile", "load", "generate")


def cmd_board_run(args) -> int:
    import json
    import sys

    from sim.progress import progress

    try:
        prompt = prompt_tokens(args.prompt)
        with progress(desc="board run", stages=RUN_STAGES):
            rep = generate_on_board(
                args.port, args.model, args.config, prompt, args.tokens, args.lm_head, args.baud, args.json
            )
    except (FitError, ValueError) as e:
        print(f"tritium: error: {e}", file=sys.stderr)
        return 2
    except LinkError as e:
        print(f"tritium: error: board link: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    text = bytes(rep["tokens"]).decode("latin-1") if all(t < 256 for t in rep["tokens"]) else ""
    info = rep["board"]
    print(
        f"board: protocol v{info['version']}, {info['clock_hz'] / 1e6:g} MHz, UART divisor {info['divisor']}"
    )
    print(f"loaded {rep['load_bytes']:,} bytes in {rep['load_s']} s")
    print(f"prompt {bytes(rep['prompt'])!r} → tokens {rep['tokens']} {text!r}")
    for i, s in enumerate(rep["steps"]):
        print(
            f"  step {i}: {s['active_cycles']:,} accelerator cycles, {s['host_ops']} host ops, {s['wall_s']} s"
        )
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``board run`` and ``board sim`` to the ``tritium`` subparsers."""
    from tritium import board_sim

    b = subparsers.add_parser("board", help="run a model on the ULX3S board, or on its Verilator simulation")
    sub = b.add_subparsers(dest="board_command", required=True)
    r = sub.add_parser(
        "run", help="generate tokens on a ULX3S over its USB-serial UART (host ops on this PC)"
    )
    r.add_argument("--model", default="models/checkpoints/tiny.pt", help="MODEL: a checkpoint (default tiny)")
    r.add_argument(
        "--config", default="configs/ulx3s.yaml", help="accelerator config (default configs/ulx3s.yaml)"
    )
    r.add_argument(
        "--port", required=True, help="the serial port (/dev/ttyUSB0), a pseudo-terminal, or tcp:HOST:PORT"
    )
    r.add_argument("--baud", type=int, default=None, help="the line rate (default: leave the port's setting)")
    r.add_argument("--prompt", default="def ", help="the prompt's UTF-8 bytes as tokens (default 'def ')")
    r.add_argument("--tokens", type=int, default=4, help="tokens to generate (default 4)")
    r.add_argument("--lm-head", default=None, choices=("host_fp32", "host_fp16", "acc_int8"))
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.set_defaults(func=cmd_board_run)
    s = sub.add_parser(
        "sim",
        help="the board top under Verilator (SDRAM and UART models) driven by the same driver; "
        "tokens checked against PyTorch",
    )
    board_sim.add_sim_arguments(s)
    s.set_defaults(func=board_sim.cmd_board_sim)
    return b
