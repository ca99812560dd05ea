"""The top level's command field extraction (hw.top.CommandFields, views of hw.isa's field tables) in
amaranth.sim: for encoded TLMM, GEMM and HOST commands the engine payloads equal hw.isa's engine_payload()
and the DMA addresses and HOST op equal the encoded values."""

import numpy as np
from amaranth.sim import Simulator

from hw.isa import OP_GEMM, OP_HOST, OP_TLMM, GemmCommand, HostCommand, TlmmCommand
from hw.top import MAX_COMMAND_WORDS, CommandFields, command_layout


def _commands() -> list:
    rng = np.random.default_rng(0)
    top = (1 << 32) - 1
    cmds = [
        TlmmCommand(1, 1, 1),
        TlmmCommand(256, (1 << 16) - 1, (1 << 16) - 1, top, top, top),
        GemmCommand(1, 1, 1),
        GemmCommand((1 << 16) - 1, (1 << 16) - 1, (1 << 16) - 1, top, top, top, True, 31),
        HostCommand(0),
        HostCommand((1 << 16) - 1),
    ]
    for _ in range(6):
        a, b, c = (int(x) for x in rng.integers(0, 1 << 32, 3, dtype=np.uint64))
        k = [int(x) for x in rng.integers(1, 1 << 16, 3)]
        cmds += [
            TlmmCommand(int(rng.integers(1, 257)), k[0], k[1], a, b, c),
            GemmCommand(*k, a, b, c, bool(rng.integers(0, 2)), int(rng.integers(0, 32))),
            HostCommand(int(rng.integers(0, 1 << 16))),
        ]
    return cmds


def test_command_layout_covers_the_isa_fields():
    assert command_layout(OP_TLMM).size == 64 * MAX_COMMAND_WORDS
    assert command_layout(OP_GEMM)["shift"].offset == 9 and command_layout(OP_TLMM)["res_base"].offset == 128
    assert command_layout(OP_HOST)["op"].offset == 16


def test_command_fields_extract_every_field():
    dut = CommandFields()
    cmds = _commands()
    got = []

    async def testbench(ctx):
        for cmd in cmds:
            words = cmd.words()
            ctx.set(dut.words, words + [0] * (MAX_COMMAND_WORDS - len(words)))
            got.append(
                (
                    ctx.get(dut.opcode),
                    ctx.get(dut.tlmm.as_value()),
                    ctx.get(dut.gemm.as_value()),
                    tuple(ctx.get(dut.tlmm_dma[f]) for f in ("act_base", "wgt_base", "res_base")),
                    ctx.get(dut.host_op),
                )
            )

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    for cmd, (opcode, tl, gm, dma, host_op) in zip(cmds, got, strict=True):
        if isinstance(cmd, TlmmCommand):
            assert (opcode, tl, dma) == (
                OP_TLMM,
                cmd.engine_payload(),
                (cmd.act_base, cmd.wgt_base, cmd.res_base),
            )
        elif isinstance(cmd, GemmCommand):
            assert (opcode, gm) == (OP_GEMM, cmd.engine_payload())
        else:
            assert (opcode, host_op) == (OP_HOST, cmd.op)
