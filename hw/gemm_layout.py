"""GEMM memory layout and output numerics (contracts 2 and 3 for the temporal GEMM engine).

The engine computes ``C = A·B`` (A: M×K int8, B: K×N int8, C: M×N int32 or requantized int8) from packed
*panels* in external memory. Memory is an array of ``bus_bytes``-wide beats; addresses count beats.

- **A panels**: for each row tile ``mi`` (``gemm.rows`` = R rows) and K tile ``kt`` (``k_tile`` = TK), one
  *A tile* of TK k-rows × R bytes: byte ``k·R + r`` is ``A[mi·R + r, kt·TK + k]``. Tiles are stored in the
  order (mi, kt), each ``a_beats = TK·R / bus_bytes`` beats.
- **B panels**: for each column tile ``ni`` (R→C = ``gemm.cols``) and ``kt``: byte ``k·C + c`` is
  ``B[kt·TK + k, ni·C + c]``; order (ni, kt).
- **Output**: one R×C tile per (mi, ni) in the order (mi, ni), row-major inside the tile, little-endian
  int32 (4 bytes each) or int8 when requantized; ``out_beats`` beats per tile.
- Padding: M, N and K are padded with zeros to whole tiles; padded outputs are 0 (int32) and the host drops
  them.

Requantization (optional, per command): ``y = clamp(floor((acc + 2^(s-1)) / 2^s), -128, 127)`` for shift
``s > 0`` — round half up — and ``clamp(acc, -128, 127)`` for ``s = 0``; computed without overflow.
Accumulation is int32 two's complement, wrapping modulo 2^32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hw.config import AcceleratorConfig, GemmGeometry
from hw.isa import GemmCommand

__all__ = [
    "GemmShape",
    "gemm_shape",
    "pack_a",
    "pack_b",
    "unpack_c",
    "requantize",
    "GemmImage",
    "build_gemm_image",
]


@dataclass(frozen=True)
class GemmShape:
    m: int
    k: int
    n: int
    m_tiles: int
    n_tiles: int
    k_tiles: int

    @property
    def steps(self) -> int:
        return self.m_tiles * self.n_tiles * self.k_tiles

    def a_beats(self, geo: GemmGeometry) -> int:
        """Beats of A's packed panels (:func:`pack_a`)."""
        return self.m_tiles * self.k_tiles * geo.a_beats

    def c_beats(self, geo: GemmGeometry, requant: bool) -> int:
        """Beats of the output tiles (int32, or int8 requantized)."""
        return self.m_tiles * self.n_tiles * geo.out_beats(requant)


def gemm_shape(geo: GemmGeometry, m: int, k: int, n: int) -> GemmShape:
    for name, v in (("M", m), ("K", k), ("N", n)):
        if v < 1:
            raise ValueError(f"GEMM shape: {name}={v} must be >= 1")
    mt, nt, kt = -(-m // geo.rows), -(-n // geo.cols), -(-k // geo.k_tile)
    for name, v in (("M", mt), ("N", nt), ("K", kt)):
        if v >= 1 << 16:
            raise ValueError(f"GEMM shape: {name} needs {v} tiles; the command holds at most 65535")
    return GemmShape(m, k, n, mt, nt, kt)


def _pad(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), dtype=np.int8)
    out[: x.shape[0], : x.shape[1]] = x
    return out


def pack_a(a: np.ndarray, geo: GemmGeometry) -> np.ndarray:
    """A (M×K int8) → beats (MT·KT·a_beats, bus_bytes) uint8 in the A-panel order."""
    s = gemm_shape(geo, a.shape[0], a.shape[1], 1)
    R, TK = geo.rows, geo.k_tile
    p = _pad(a, s.m_tiles * R, s.k_tiles * TK).reshape(s.m_tiles, R, s.k_tiles, TK)
    tiles = p.transpose(0, 2, 3, 1)  # (mi, kt, k, r)
    return tiles.reshape(-1, geo.bus_bytes).view(np.uint8)


def pack_b(b: np.ndarray, geo: GemmGeometry) -> np.ndarray:
    """B (K×N int8) → beats (NT·KT·b_beats, bus_bytes) uint8 in the B-panel order."""
    s = gemm_shape(geo, 1, b.shape[0], b.shape[1])
    C, TK = geo.cols, geo.k_tile
    p = _pad(b, s.k_tiles * TK, s.n_tiles * C).reshape(s.k_tiles, TK, s.n_tiles, C)
    tiles = p.transpose(2, 0, 1, 3)  # (ni, kt, k, c)
    return tiles.reshape(-1, geo.bus_bytes).view(np.uint8)


def unpack_c(
    beats: np.ndarray, geo: GemmGeometry, shape: GemmShape, requant: bool, check_padding: bool = True
) -> np.ndarray:
    """Output beats → C (M×N; int32, or int8 when requantized); by default checks that padded outputs are
    zero (``check_padding=False`` when the padding holds don't-care values, e.g. KV-cache slots not yet
    written)."""
    R, C = geo.rows, geo.cols
    dt = np.dtype("<i1") if requant else np.dtype("<i4")
    flat = np.ascontiguousarray(beats, dtype=np.uint8).reshape(-1).view(dt)
    full = flat.reshape(shape.m_tiles, shape.n_tiles, R, C).transpose(0, 2, 1, 3)
    full = full.reshape(shape.m_tiles * R, shape.n_tiles * C)
    if check_padding:
        pad = full.copy()
        pad[: shape.m, : shape.n] = 0
        if pad.any():
            raise ValueError("GEMM output: a padded output position is not zero")
    return full[: shape.m, : shape.n].astype(np.int8 if requant else np.int32)


def requantize(acc: np.ndarray, shift: int) -> np.ndarray:
    """int32 accumulators → int8: round half up by ``shift`` bits, then saturate (see module doc)."""
    x = np.asarray(acc, dtype=np.int64)
    if shift:
        x = (x + (1 << (shift - 1))) >> shift
    return np.clip(x, -128, 127).astype(np.int8)


@dataclass
class GemmImage:
    """A memory image holding A and B panels and room for C, and the command that multiplies them."""

    image: np.ndarray  # (beats, bus_bytes) uint8
    command: GemmCommand
    shape: GemmShape


def build_gemm_image(
    acfg: AcceleratorConfig,
    a: np.ndarray,
    b: np.ndarray,
    requant: bool = False,
    shift: int = 0,
    base: int = 0,
    b_gap: int = 0,
) -> GemmImage:
    """Place A's panels at beat ``base``, B's right after, then the output area; zero-filled image.
    ``b_gap`` > 0 leaves that many beats between B's column panels (a B laid out for a longer K, as the
    KV cache is), and the command says so with ``b_stride``."""
    geo = acfg.gemm_geometry
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"GEMM: A {a.shape} and B {b.shape} do not multiply")
    if b_gap < 0:
        raise ValueError(f"GEMM: b_gap={b_gap} must be >= 0")
    shape = gemm_shape(geo, a.shape[0], a.shape[1], b.shape[1])
    pa, pb = pack_a(a, geo), pack_b(b, geo)
    panel = shape.k_tiles * geo.b_beats  # beats of one column tile's B panels
    stride = panel + b_gap
    out_beats = shape.c_beats(geo, requant)
    a_base, b_base = base, base + len(pa)
    c_base = b_base + shape.n_tiles * stride
    total = c_base + out_beats
    if total > 1 << acfg.memory.addr_bits:
        raise ValueError(
            f"GEMM: image needs {total} beats; memory.addr_bits={acfg.memory.addr_bits} "
            f"addresses {1 << acfg.memory.addr_bits}"
        )
    image = np.zeros((total, geo.bus_bytes), dtype=np.uint8)
    image[a_base:b_base] = pa
    for ni in range(shape.n_tiles):
        image[b_base + ni * stride : b_base + ni * stride + panel] = pb[ni * panel : (ni + 1) * panel]
    cmd = GemmCommand(
        shape.m_tiles,
        shape.n_tiles,
        shape.k_tiles,
        a_base,
        b_base,
        c_base,
        requant,
        shift,
        stride if b_gap else 0,
    )
    return GemmImage(image, cmd, shape)
