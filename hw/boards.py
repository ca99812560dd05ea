"""Board capacities and flow facts: the amaranth-free contract the FPGA flow, the resource model and the DSE
fit check share (importing this does not import Amaranth)."""

from __future__ import annotations

from dataclasses import dataclass

from hw.lookup import lookup

__all__ = ["Board", "BOARD_SPECS", "BOARDS", "board"]


@dataclass(frozen=True)
class Board:
    """One target board: its device, flow arguments and resource capacities."""

    description: str
    family: str  # "ecp5", "ice40", or "xcup" (resource estimate only, no P&R)
    device: str  # human-readable device name for reports
    platform: str | None  # "module:Class" in amaranth_boards (imported lazily); None: no pins
    pnr_args: tuple[str, ...]  # nextpnr device/package flags
    capacity: dict[str, int]  # resource → available units (keys as in the report)
    #: the config ``tritium bitstream --board NAME`` (and ``make bitstream BOARD=NAME``) uses when no
    #: --config is given: the one table of board → default config
    default_config: str = "configs/default.yaml"


# Capacities from the device data sheets: ECP5-85F has 83,640 LUT4s (41,820 slices × 2) and as many
# FFs, 208 DP16KD (18 Kbit) block RAMs, 156 MULT18X18D; the iCE40 UP5K has 5,280 logic cells (one LUT4 +
# one FF each), 30 EBR (4 Kbit), 4 SPRAM (256 Kbit) and 8 SB_MAC16 DSPs.
BOARD_SPECS: dict[str, Board] = {
    "ulx3s": Board(
        description="Radiona ULX3S with Lattice ECP5 LFE5U-85F (CABGA381, speed 6), 25 MHz oscillator",
        family="ecp5",
        device="LFE5U-85F-6BG381",
        platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
        pnr_args=("--85k", "--package", "CABGA381", "--speed", "6"),
        capacity={"lut": 83640, "ff": 83640, "bram": 208, "dsp": 156},
    ),
    "icebreaker": Board(
        description="1BitSquared iCEBreaker with Lattice iCE40 UP5K (SG48), 12 MHz oscillator",
        family="ice40",
        device="iCE40UP5K-SG48",
        platform="amaranth_boards.icebreaker:ICEBreakerPlatform",
        pnr_args=("--up5k", "--package", "sg48"),
        capacity={"lut": 5280, "ff": 5280, "bram": 30, "spram": 4, "dsp": 8},
        default_config="configs/icebreaker.yaml",
    ),
    # K26 SOM (XCK26, Zynq UltraScale+): 117,120 CLB LUTs, 234,240 FFs, 144 RAMB36 (36 Kbit), 64 URAM288,
    # 1,248 DSP48E2 (K26 SOM data sheet DS987; the figures TeLLMe reports its utilization against); an
    # UltraScale+ slice has 8 LUTs, 4 MUXF7 and 2 MUXF8 (UG574), so 14,640 slices.
    # No open place-and-route exists for UltraScale+: Yosys synth_xilinx gives the resource estimate only.
    "kv260": Board(
        description="AMD Kria KV260 (K26 SOM, Zynq UltraScale+ XCK26): Yosys synth_xilinx resource estimate "
        "only, no place-and-route",
        family="xcup",
        device="XCK26 (Zynq UltraScale+)",
        platform=None,
        pnr_args=(),
        capacity={
            "lut": 117120,
            "ff": 234240,
            "bram": 144,
            "uram": 64,
            "dsp": 1248,
            # 14,640 slices × (4 MUXF7, 2 MUXF8): the wide-mux resources -widemux maps onto
            "muxf7": 58560,
            "muxf8": 29280,
        },
        default_config="configs/kv260.yaml",
    ),
}

#: Board name → one-line description (for CLIs listing the boards).
BOARDS: dict[str, str] = {name: board.description for name, board in BOARD_SPECS.items()}


def board(name: str) -> Board:
    """The board called ``name``; ValueError naming the available boards otherwise."""
    return lookup(BOARD_SPECS, name, "board")
