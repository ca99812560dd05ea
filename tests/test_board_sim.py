"""The board host driver (tritium/board.py) and the board-level simulation (tritium/board_sim.py).

Unit tests run the driver against :class:`FakeBoard`, an in-process transport that speaks the host-link
protocol (hw/board_protocol.py) over its own memory and runs engine commands on the numba models: they check
the framing, the checksums, the shadow-memory bookkeeping and that a generation on the fake equals the
executor bit for bit. The acceptance is the Verilator test at the end: the same driver through a
pseudo-terminal to the simulated board top (UART, host link, SDRAM controller, SDRAM chip model).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

pytest.importorskip("torch")

from hw import board_protocol as bp  # noqa: E402
from hw.isa import GemmCommand, HostCommand, TlmmCommand, command_words, decode_program  # noqa: E402
from tests.conftest import REPO, assert_one_line_error, run_cli  # noqa: E402

ULX3S = REPO / "configs" / "ulx3s.yaml"
TINY = REPO / "models" / "checkpoints" / "tiny.pt"


class FakeBoard:
    """A transport that is a board: frames in, answers out; memory starts as noise (nothing reads zeros by
    luck); TLMM and GEMM commands run on the numba models when the decoder reaches them, a HOST command
    waits for HOST_DONE. ``corrupt`` flips a bit of the next answer's last byte."""

    def __init__(self, acfg, beats: int = 1 << 18, seed: int = 0):
        self.acfg = acfg
        self.W = acfg.memory.bus_bytes
        self.mem = np.random.default_rng(seed).integers(0, 256, (beats, self.W), dtype=np.uint8)
        self.inbuf = bytearray()
        self.out = bytearray()
        self.fifo: list[int] = []
        self.host_op: int | None = None
        self.cmd_words = 0
        self.corrupt = False
        self.frames: list[int] = []
        self.path = "fake"

    # ---- transport ----
    def write(self, data: bytes) -> None:
        self.inbuf += data
        while self.inbuf:
            op = self.inbuf[0]
            if op not in bp.HEADER_BYTES:
                self.out += bytes([bp.UNKNOWN_REPLY, op])
                del self.inbuf[:1]
                continue
            h = bp.HEADER_BYTES[op]
            if len(self.inbuf) < 1 + h:
                return
            header = bytes(self.inbuf[1 : 1 + h])
            payload_n = 0
            if op == bp.OP_WRITE:
                payload_n = struct.unpack("<IH", header)[1] * self.W
            elif op == bp.OP_PUSH:
                payload_n = struct.unpack("<H", header)[0] * 8
            if len(self.inbuf) < 1 + h + payload_n:
                return
            payload = bytes(self.inbuf[1 + h : 1 + h + payload_n])
            del self.inbuf[: 1 + h + payload_n]
            reply = self._handle(op, header, payload)
            answer = bytearray(reply + bp.trailer(op, header + payload, reply))
            if self.corrupt:
                answer[-1] ^= 1
                self.corrupt = False
            self.frames.append(op)
            self.out += answer

    def read(self, n: int) -> bytes:
        if len(self.out) < n:
            from tritium.board import LinkError

            raise LinkError(f"fake: {n} bytes wanted, {len(self.out)} there")
        data = bytes(self.out[:n])
        del self.out[:n]
        return data

    def close(self) -> None:
        pass

    # ---- the board ----
    def _handle(self, op: int, header: bytes, payload: bytes) -> bytes:
        if op == bp.OP_INFO:
            return (
                bp.MAGIC
                + bytes([bp.PROTOCOL_VERSION, self.W, self.acfg.memory.addr_bits, 8])
                + struct.pack("<HI", 8, 50_000_000)
            )
        if op == bp.OP_WRITE:
            addr, count = struct.unpack("<IH", header)
            assert self._idle(), "WRITE while the accelerator owns the memory"
            self.mem[addr : addr + count] = np.frombuffer(payload, np.uint8).reshape(count, self.W)
            return b""
        if op == bp.OP_READ:
            addr, count = struct.unpack("<IH", header)
            assert self._idle(), "READ while the accelerator owns the memory"
            return self.mem[addr : addr + count].tobytes()
        if op == bp.OP_PUSH:
            (count,) = struct.unpack("<H", header)
            assert count <= bp.CMD_FIFO_DEPTH - len(self.fifo), "PUSH beyond the free count"
            self.fifo += list(struct.unpack(f"<{count}Q", payload))
            self._run()
            return b""
        if op == bp.OP_POLL:
            flags = bp.FLAG_SDRAM_READY | (bp.FLAG_IDLE if self._idle() else 0)
            taken = self.cmd_words
            if self.host_op is not None:
                flags |= bp.FLAG_HOST | bp.FLAG_BUSY
                # as the RTL decoder: while a host op is pending it has already taken the next command's words
                if self.fifo and len(self.fifo) >= command_words(self.fifo[0] & 0xFF):
                    taken += command_words(self.fifo[0] & 0xFF)
            return (
                bytes([flags, 0])
                + struct.pack("<HHH", self.host_op or 0, bp.CMD_FIFO_DEPTH - len(self.fifo), 0)
                + struct.pack("<II", 0, taken)
            )
        if op == bp.OP_HOST_DONE:
            had = self.host_op is not None
            self.host_op = None
            self._run()
            return bytes([int(had)])
        if op == bp.OP_CLEAR:
            self.cmd_words = 0
            return b""
        raise AssertionError(op)

    def _idle(self) -> bool:
        return self.host_op is not None or not self.fifo

    def _run(self) -> None:
        """Run whole commands from the FIFO until a HOST op or the FIFO runs dry."""
        from hw.program import unpack_tlmm_weights
        from hw.ternary import TlmmShape
        from sim.gemm_model import run_gemm_on_image
        from sim.tlmm_model import run_tlmm_streams

        t = self.acfg.tlmm
        while self.host_op is None and self.fifo:
            n = command_words(self.fifo[0] & 0xFF)
            if len(self.fifo) < n:
                return
            (cmd,) = decode_program(self.fifo[:n])
            del self.fifo[:n]
            self.cmd_words += n
            flat = self.mem.reshape(-1)
            W = self.W
            if isinstance(cmd, HostCommand):
                self.host_op = cmd.op
            elif isinstance(cmd, TlmmCommand):
                m, kc, nb = cmd.tokens, cmd.k_chunks, cmd.n_blocks
                a0 = cmd.act_base * W
                act = flat[a0 : a0 + kc * m * t.chunk_k].view(np.int8).reshape(kc, m, t.chunk_k)
                wgt = unpack_tlmm_weights(flat[cmd.wgt_base * W :], t, kc, nb)
                run = run_tlmm_streams(t, TlmmShape(m, kc * t.chunk_k, nb * t.columns, kc, nb), act, wgt)
                res = np.ascontiguousarray(run.y.astype("<i4").reshape(m, nb, t.columns).transpose(1, 0, 2))
                r0 = cmd.res_base * W
                flat[r0 : r0 + res.nbytes] = res.view(np.uint8).reshape(-1)
            elif isinstance(cmd, GemmCommand):
                run_gemm_on_image(self.acfg, self.mem, cmd)


@pytest.fixture(scope="module")
def tiny_ulx3s():
    """The tiny model compiled for the ULX3S config: (acfg, compiled model, model)."""
    from compiler import compile_model, load_model
    from hw.config import load_config

    acfg = load_config(ULX3S)
    model = load_model(str(TINY))
    return acfg, compile_model(model, acfg), model


def _link(acfg):
    from tritium.board import BoardLink

    fake = FakeBoard(acfg)
    return fake, BoardLink(fake)


def test_link_frames_and_checksums(tiny_ulx3s):
    from tritium.board import LinkError

    acfg = tiny_ulx3s[0]
    fake, link = _link(acfg)
    assert link.info["bus_bytes"] == 4 and link.info["version"] == bp.PROTOCOL_VERSION
    data = bytes(range(256)) * 40  # 10240 bytes = 2560 beats: three WRITE frames
    link.write(100, data)
    assert fake.mem[100 : 100 + 2560].tobytes() == data
    assert link.read(100, 2560) == data
    assert fake.frames.count(bp.OP_WRITE) == 3 and fake.frames.count(bp.OP_READ) == 3
    with pytest.raises(ValueError, match="whole number"):
        link.write(0, b"abc")
    fake.corrupt = True
    with pytest.raises(LinkError, match="corrupted answer"):
        link.poll()
    with pytest.raises(LinkError, match="does not know opcode"):
        link._frame(0x42)


def test_info_of_another_device_is_refused(tiny_ulx3s):
    from tritium.board import BoardLink

    class Echo(FakeBoard):
        def _handle(self, op, header, payload):
            return b"XX" + bytes(10) if op == bp.OP_INFO else super()._handle(op, header, payload)

    with pytest.raises(ValueError, match="not a Tritium board"):
        BoardLink(Echo(tiny_ulx3s[0]))


def test_generation_on_the_fake_board_equals_the_executor(tiny_ulx3s):
    """Prefill + one decode step through the driver on the fake board: logits bit-identical to sim.runtime
    (which equals PyTorch's int mode, tests/test_compiler.py); reads are only accelerator outputs."""
    from sim.runtime import Runtime
    from tritium.board import BoardRunner, accelerator_writes

    acfg, cm, _ = tiny_ulx3s
    prompt = list(b"def ")
    progs = [cm.program(len(prompt), 0, logits="last"), cm.program(1, len(prompt), logits="last")]
    fake, link = _link(acfg)
    runner = BoardRunner(link, progs[0])
    assert link.count.write_bytes == progs[0].image.size  # the whole image, once
    rt = Runtime(progs[0])
    toks = list(prompt)
    for s, p in enumerate(progs):
        inp = toks if s == 0 else toks[-1:]
        ref, _ = rt.run(p, inp)
        got = runner.run(p, inp)
        assert np.array_equal(got.logits, ref.numpy()), f"step {s}: logits differ"
        assert got.host_ops == sum(isinstance(c, HostCommand) for c in p.commands())
        outputs = sum(hi - lo for _, _, (lo, hi) in accelerator_writes(p))
        assert 0 < got.link["read_bytes"] <= outputs  # only what the engines wrote, at most once
        toks.append(int(ref.numpy()[-1].argmax()))
    # the board's memory ends equal to the executor's image, byte for byte
    n = rt.image.shape[0]
    assert np.array_equal(fake.mem[:n], rt.image)


def test_fit_is_checked_before_anything_is_sent(tiny_ulx3s):
    from tritium.board import BOARD_SDRAM_BYTES, FitError, check_fit

    acfg, cm, _ = tiny_ulx3s
    p = cm.program(1, 0, logits="last")
    check_fit(p, "tiny", BOARD_SDRAM_BYTES, 4)
    with pytest.raises(FitError, match=r"needs 0\.3 MB .* holds 0 MB: it does not fit"):
        check_fit(p, "tiny", 1 << 18, 4)
    with pytest.raises(FitError, match="4-byte memory beat"):
        check_fit(p, "tiny", BOARD_SDRAM_BYTES, 8)


def test_cli_refuses_a_model_that_does_not_fit(tmp_path):
    """bitnet-0.7b's ternary weights alone are ~150 MB: one line, exit 2, before the port is opened."""
    r = run_cli("board", "run", "--model", "bitnet-0.7b", "--port", str(tmp_path / "no-such-port"), expect=2)
    assert_one_line_error(r, "does not fit", "32 MB")


# ---------------------------------------------------------------------------------- Verilator (acceptance)
@pytest.mark.verilator
def test_board_simulation_generates_pytorch_tokens():
    """The acceptance run: the tiny model (all 4 layers) generates 2 tokens (prefill of 'def ' + 1 decode
    step) on the Verilator board top — the driver over a pseudo-terminal, the simulated UART at 4 cycles per
    bit, the SDRAM controller against the chip model — equal to PyTorch's int mode bit for bit, with no SDRAM
    timing violation and no UART framing error."""
    from tritium.board_sim import run_board_sim

    rep = run_board_sim(str(TINY), str(ULX3S), list(b"def "), 2, quiet=True)
    assert rep.board_tokens == rep.torch_tokens, (rep.board_tokens, rep.torch_tokens)
    assert rep.logits_equal_torch == [True, True]
    sd = rep.sim["sdram"]
    assert sd["violations"] == {} and rep.sim["framing_errors"] == 0, rep.sim
    assert min(sd["commands"].get(k, 0) for k in ("ACTIVE", "READ", "WRITE", "REFRESH", "MODE")) > 0
    assert rep.sim["host_to_board_bytes"] > rep.load["bytes"]  # the image went over the simulated line
    for s in rep.steps:  # the board counts cycles; the cycle model with row hits only is a lower bound
        assert s["modeled_row_hit"] <= s["active_cycles"], s
    assert rep.ok


@pytest.mark.verilator
def test_sdram_model_flags_a_timing_violation():
    """The chip model checks the pins, not the controller's arithmetic: with tRCD raised to 45 ns (2 cycles
    at the default 40 MHz; the controller waits the datasheet's 21 ns = 1) the accesses through the link, alternating
    between two rows, are flagged as tRCD violations (and the data still comes back: the model does not
    corrupt it)."""
    from hw.deploy import DEFAULT_CLOCK_MHZ
    from tritium.board import BoardLink, open_port
    from tritium.board_sim import DEFAULT_DIVISOR, BoardSim, board_verilog, build_board_sim

    exe = build_board_sim(board_verilog(str(ULX3S), DEFAULT_DIVISOR, DEFAULT_CLOCK_MHZ), quiet=True)
    with BoardSim(exe, DEFAULT_DIVISOR, DEFAULT_CLOCK_MHZ, timing={"rcd": 45}) as sim:
        port = open_port(sim.pty, timeout_s=60)
        try:
            link = BoardLink(port)
            while not link.poll()["sdram_ready"]:
                pass
            a, b = 1 << 20, (1 << 20) + (1 << 12)  # two rows: each access opens its row (ACTIVE → tRCD)
            link.write(a, bytes(range(64)))
            link.write(b, bytes(range(64, 128)))
            assert link.read(a, 16) == bytes(range(64)) and link.read(b, 16) == bytes(range(64, 128))
        finally:
            port.close()
    assert sim.stats["sdram"]["violations"].get("tRCD", 0) >= 2, sim.stats
