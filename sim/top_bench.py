"""cocotb testbench of the accelerator top level (runs inside the simulator; started by :mod:`sim.cosim`).

The bench is the host of a Zynq-class SoC: it loads the weight image into a :class:`sim.memory.BusMemory`,
writes each step's input (token ids, or a general module's float rows), pushes the step Program's command words into ``cmd`` (always valid), serves
the memory port, and runs a HOST op (sim.runtime's host functions, on the same memory image) at each
``host`` handshake. After a step it reads the logits from memory; in greedy mode the next step's token is
the argmax of the last row. The host takes a HOST op at the handshake, runs it on the memory image at once and
raises ``host_done`` the op's modeled latency (``attrs["cycles"]``) later. The bench records the cycle of
every command's first word, of its done (the top's ``retire`` pulse of its class; a class finishes in order)
and of the end of each step, so per-command and whole-step cycles can be compared with sim/top_model.py.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from hw.config import config_from_dict
from hw.isa import OP_GEMM, OP_GEMM_LIST, OP_HOST, OP_KVR, OP_SYNC, OP_TLMM, command_words
from hw.program import Program
from sim.bench_common import MemoryPort, load_cases, start
from sim.memory import BusMemory
from sim.runtime import _Host, write_input

# the top's ``retire`` bit of each opcode's class
_CLASS_BIT = {OP_TLMM: 1, OP_GEMM: 2, OP_GEMM_LIST: 2, OP_KVR: 2, OP_HOST: 4, OP_SYNC: 8}


@cocotb.test()
async def top_run(dut):
    arrays, meta = load_cases()
    acfg = config_from_dict(meta["config"], "<cosim>")
    image = arrays["image"].copy()
    memory = BusMemory(image, acfg.memory)
    port = MemoryPort(dut, memory, acfg.memory.addr_bits)

    await start(
        dut,
        (dut.cmd__valid, dut.rreq__ready, dut.rdata__valid, dut.wr__ready, dut.host__ready, dut.host_done),
    )
    dut.host__ready.value = 1

    steps_out, logits_out = [], {}
    tokens = list(meta["prompt"])
    t = 0
    t0 = time.perf_counter()
    hung = None
    # how far the run is, for the parent's progress bar (sim/cosim.py): "<step> <commands started>" lines
    progress_path = os.environ.get("TRITIUM_PROGRESS_FILE")
    progress = open(progress_path, "a", buffering=1) if progress_path else None
    for s, step in enumerate(meta["steps"]):
        prog = Program.load(step["program"])
        if "input" in step:  # a general module's float input (sim.cosim.run_program_cosim)
            write_input(prog, image, arrays[step["input"]])
        else:  # the LM's tokens: the prompt, then the previous step's greedy token
            write_input(prog, image, tokens if s == 0 else tokens[-1:])
        host = _Host(prog, image)
        words = [int(w) for w in prog.words]
        starts, pos, need = [], 0, 0  # cycle of each command's first word
        done_at: list = []  # cycle of each command's done (the top's retire pulse of its class)
        waiting: dict = {}  # class bit → indices of fetched commands of that class not yet done, in order
        host_due = None  # the cycle the host reports the op in hand done
        last_word_t = -1
        shown = None
        shown_done = 0
        step_start, guard = t, int(step.get("guard", 1 << 62))
        while True:
            if t - step_start > guard:  # the RTL hangs: report what finished, the caller sees a mismatch
                hung = {"step": s, "cycle": t, "commands_started": len(starts), "guard": guard}
                break
            await RisingEdge(dut.clk)
            valid = pos < len(words)
            if valid != shown:
                dut.cmd__valid.value = int(valid)
                shown = valid
            if valid:
                dut.cmd__payload.value = words[pos]
            hd = int(host_due == t)
            if hd != shown_done:
                dut.host_done.value = hd
                shown_done = hd
            port.drive(t)
            await ReadOnly()
            if valid and int(dut.cmd__ready.value):
                if need == 0:
                    starts.append(t)
                    done_at.append(None)
                    op = words[pos] & 0xFF
                    waiting.setdefault(_CLASS_BIT[op], []).append(len(starts) - 1)
                    if progress is not None:
                        progress.write(f"{s} {len(starts)}\n")
                    need = command_words(op)
                need -= 1
                pos += 1
                last_word_t = t
            if int(dut.host__valid.value):  # the handshake (ready is always high): run the op, answer later
                op = prog.host_ops[int(dut.host__payload.value)]
                host.run(op)
                host_due = t + int(op.attrs["cycles"])
            retire = int(dut.retire.value)
            for bit in (1, 2, 4, 8):
                if retire & bit:
                    done_at[waiting[bit].pop(0)] = t
            port.sample(t)
            done = pos == len(words) and not int(dut.busy.value) and t > last_word_t
            t += 1
            if done:
                break
        if hung is not None:
            break
        end = t - 1  # first idle cycle after the step
        logits = host.f32(prog.meta["output"]).numpy()
        tokens.append(int(np.argmax(logits[-1])))
        per_cmd = [-1 if d is None else d - a + 1 for a, d in zip(starts, done_at, strict=True)]
        steps_out.append({"per_command": per_cmd, "cycles": end - starts[0]})
        logits_out[f"logits{s}"] = logits
    wall = time.perf_counter() - t0
    if progress is not None:
        progress.close()
    np.savez(os.environ["TRITIUM_RESULTS"] + ".npz", **logits_out)
    with open(os.environ["TRITIUM_RESULTS"], "w") as f:
        json.dump(
            {
                "steps": steps_out,
                "tokens": tokens,
                "wall_s": wall,
                "cycles": t,
                "read_beats": memory.read_beats,
                "write_beats": memory.write_beats,
                "hung": hung,
            },
            f,
        )
