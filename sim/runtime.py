"""Execute a Program on the numba cycle models (engines) and the host-op functions (host).

Commands run in order on one memory image: TLMM commands read their activation stream and packed weights
from memory, run on :func:`sim.tlmm_model.run_tlmm_streams` (cycle-stepped) and write their result
stream; GEMM commands run :func:`sim.gemm_model.run_gemm_on_image` on the image itself; HOST commands run
the host operation they index; KVR commands (opcode 5) run on :class:`sim.kv_model.KvrExecutor` (its tables
persist across the steps of a :class:`Runtime`) and GEMM_LIST commands (opcode 6) on the stepped GEMM model
over the tiles their list names (:func:`sim.gemm_model.run_gemm_list_on_image`); HOST commands run
the host operation they index, built from :mod:`models.hostops` and ``quantize_act`` — the same
functions the model's ``mode="int"`` forward calls, so logits agree bit for bit when the compiler placed,
tiled and packed everything correctly (tests/test_compiler.py checks it on the trained model). A host op
``dequant+<kind>`` (compiler.passes.fuse_dequant) dequantizes its int32 inputs in memory with the ``dequant``
op's definition, then runs ``<kind>`` (:meth:`_Host.run`).

Every activation stream a TLMM command reads is checked against ``tlmm.act_bits`` before it reaches the
engine model: a value the engine cannot hold raises :class:`hw.program.ProgramError` naming the command,
instead of the silent truncation the RTL's DMA would do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from compiler.chunks import row_attention, token_tensors
from hw.gemm_layout import gemm_shape, pack_a, unpack_c
from hw.isa import WBUF_FILL, WBUF_REUSE, GemmCommand, GemmListCommand, HostCommand, KvrCommand, TlmmCommand
from hw.program import DEQUANT_PREFIX, Program, ProgramError, tlmm_wgt_beat_bytes, unpack_tlmm_weights
from hw.ternary import TlmmShape
from models import hostops
from models.bitlinear import add_bias, quantize_act
from models.lm_head import dequant_logits
from sim.gemm_model import run_gemm_list_on_image, run_gemm_on_image
from sim.kv_model import KvrExecutor
from sim.progress import step
from sim.tlmm_model import run_tlmm_streams

__all__ = ["ExecStats", "execute", "write_input", "Runtime", "check_act_range"]


@dataclass
class ExecStats:
    cycles: dict[str, int] = field(default_factory=lambda: {"tlmm": 0, "gemm": 0})
    commands: dict[str, int] = field(default_factory=lambda: {"tlmm": 0, "gemm": 0, "host": 0})
    per_command: list[tuple[str, int]] = field(default_factory=list)
    # the data the top level's cycle model needs (sim.top_model.program_cycles), in Program order: each
    # GEMM_LIST's list count, each KVR's engine cycles per engine command (queries, then inserts) and the
    # clusters its inserts touched (the dram table's write-back)
    list_counts: list[int] = field(default_factory=list)
    kvr_engine: list[list[int]] = field(default_factory=list)
    kvr_touched: list[list[int]] = field(default_factory=list)


class _Host:
    """Host operations of a Program on one memory image."""

    def __init__(self, prog: Program, image: np.ndarray):
        self.p, self.img = prog, image
        self.acfg = prog.acfg
        self.geo = self.acfg.gemm_geometry
        self.t = self.acfg.tlmm
        self.dequantized: dict[str, torch.Tensor] = {}  # the running op's dequantized inputs (run)
        self.window: tuple[int, int, set] | None = None  # a row chunk's rows and per-token tensors (run)

    # ---- tensor access ----
    def f32(self, name: str) -> torch.Tensor:
        if name in self.dequantized:  # an int32 TLMM result the running op reads dequantized
            return self.dequantized[name]
        x = torch.from_numpy(np.array(self.p.read(self.img, name), dtype=np.float32))
        return self._rows(name, x)

    def _rows(self, name: str, x):
        """A row chunk's rows of per-token tensor ``name`` (the whole value outside a row chunk)."""
        w = self.window
        return x[w[0] : w[1]] if w is not None and name in w[2] else x

    def put(self, name: str, value: torch.Tensor) -> None:
        w = self.window
        if w is not None and name in w[2]:  # a row chunk writes its rows only
            full = np.array(self.p.read(self.img, name))
            full[w[0] : w[1]] = value.detach().numpy().reshape(full[w[0] : w[1]].shape)
            self.p.write(self.img, name, full)
            return
        self.p.write(self.img, name, value.detach().numpy())

    def raw(self, name: str) -> np.ndarray:
        return self.p.read(self.img, name)

    def put_raw(self, name: str, data: np.ndarray) -> None:
        ti = self.p.tensors[name]
        flat = self.img.reshape(-1)
        a = ti.addr * self.img.shape[1]
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        flat[a : a + data.size] = data

    def write_quant(self, outs: list[str], xq: torch.Tensor, sx: torch.Tensor) -> None:
        """The int8 activations into every TLMM activation-stream slice, the scales into their rows tensor."""
        x = xq.reshape(-1, xq.shape[-1]).numpy()
        r0 = self.window[0] if self.window is not None else 0  # x holds rows r0.. (a row chunk's)
        for name in outs:
            ti = self.p.tensors[name]
            if ti.layout == "tlmm_act":
                m0, m, (k0, k1) = ti.attrs["m0"] - r0, ti.attrs["m"], ti.attrs["k"]
                if m0 < 0 or m0 + m > x.shape[0]:
                    raise ValueError(f"host op: activation stream {name} is outside the op's rows")
                kc, gt = ti.shape[0], ti.shape[2]
                xp = np.zeros((m, kc * gt), np.int8)
                xp[:, : k1 - k0] = x[m0 : m0 + m, k0:k1]
                self.put_raw(name, xp.reshape(m, kc, gt).transpose(1, 0, 2))
            else:
                self.put(name, sx.reshape(-1, 1))

    def tlmm_int(self, name: str) -> torch.Tensor:
        """Sum the K-slice parts of a TLMM result into (T, N) int32 (exact, wrapping like int32)."""
        ti = self.p.tensors[name]
        T, N = ti.shape
        y = np.zeros((T, N), np.int64)
        for part in ti.attrs["parts"]:
            pi = self.p.tensors[part]
            nb, m, q = pi.shape
            r = (
                self.raw(part)[: pi.nbytes]
                .view("<i4")
                .reshape(nb, m, q)
                .transpose(1, 0, 2)
                .reshape(m, nb * q)
            )
            (n0, n1), m0 = pi.attrs["n"], pi.attrs["m0"]
            y[m0 : m0 + m, n0:n1] += r[:, : n1 - n0]
        return torch.from_numpy(((y + 2**31) % 2**32 - 2**31).astype(np.int32))

    def gemm_out(self, name: str, rows: int, cols: int) -> torch.Tensor:
        """A GEMM's int32 output (rows × cols) from its output tiles; the padding holds KV-cache slots
        not yet written, so it is not checked."""
        shape = gemm_shape(self.geo, rows, 1, cols)
        nbytes = shape.m_tiles * shape.n_tiles * self.geo.rows * self.geo.cols * 4
        out = unpack_c(self.raw(name)[:nbytes], self.geo, shape, requant=False, check_padding=False)
        return torch.from_numpy(np.ascontiguousarray(out))

    # ---- ops ----
    def run(self, op) -> None:
        """Run host op ``op``. A ``dequant+<kind>`` op (compiler.passes.fuse_dequant) first dequantizes the
        int32 TLMM results its ``attrs["dequant"]`` names, in memory (:meth:`dequant_value`, the ``dequant``
        op's definition), then runs ``<kind>`` reading those values in their place: the same float32 values
        as the dequant op followed by ``<kind>``, without the float tensor in between."""
        rows = op.attrs.get("row_chunk")
        if rows:  # a row chunk (compiler.chunks): the op on rows r0..r1-1 of its per-token tensors
            t = self.p.tensors
            if row_attention(op.kind):  # its tokens' entries (op_attn_*)
                names = token_tensors(op, t)
            else:
                names = {
                    v
                    for v in (*op.inputs, *op.outputs)
                    if t[v].layout == "rows" and t[v].attrs.get("space") != "host"
                }
            self.window = (rows[0], rows[1], names)
        try:
            if op.kind.startswith(DEQUANT_PREFIX):
                self.dequantized = {
                    e["input"]: self.dequant_value(e["input"], e["sx"], e) for e in op.attrs["dequant"]
                }
                op = replace(op, kind=op.kind.removeprefix(DEQUANT_PREFIX))
            getattr(self, "op_" + op.kind.replace("+", "_"))(op)
        finally:
            self.dequantized = {}
            self.window = None

    def op_embed(self, op):
        tok = torch.from_numpy(np.array(self.p.read(self.img, "tokens"), dtype=np.int64))
        w = torch.from_numpy(self.p.host_data[op.attrs["weight"]])
        self.put(op.outputs[0], torch.nn.functional.embedding(tok, w))

    def op_rmsnorm(self, op):
        self.put(
            op.outputs[0],
            hostops.rmsnorm(self.f32(op.inputs[0]), self.f32(op.attrs["weight"]), op.attrs["eps"]),
        )

    def op_rmsnorm_quant(self, op):
        y = hostops.rmsnorm(self.f32(op.inputs[0]), self.f32(op.attrs["weight"]), op.attrs["eps"])
        self.write_quant(op.outputs, *quantize_act(y))

    def _gated(self, op):
        g, u = self.f32(op.inputs[0]), self.f32(op.inputs[1])
        return hostops.relu2(g, u) if op.kind.startswith("relu2") else hostops.swiglu(g, u)

    def op_relu2(self, op):
        self.put(op.outputs[0], self._gated(op))

    op_swiglu = op_relu2

    def op_relu2_quant(self, op):
        self.write_quant(op.outputs, *quantize_act(self._gated(op)))

    op_swiglu_quant = op_relu2_quant

    # ---- general modules (models/intref.py: the same functions) ----
    def _elementwise(self, op) -> torch.Tensor:
        kind = op.kind.removesuffix("+quant")
        x = self.f32(op.inputs[0])
        if kind == "layernorm":
            a = op.attrs
            w = self.f32(a["weight"]) if a.get("weight") else None
            b = self.f32(a["bias"]) if a.get("bias") else None
            return hostops.layernorm(x, w, b, a["eps"])
        if kind == "relu":
            return hostops.relu(x)
        if kind == "silu":
            return hostops.silu(x)
        if kind in ("gelu", "gelu_tanh"):
            return hostops.gelu(x, "tanh" if kind == "gelu_tanh" else "none")
        if kind == "square":
            return x * x
        if kind == "mul":
            return x * self.f32(op.inputs[1])
        raise KeyError(kind)

    def op_layernorm(self, op):
        self.put(op.outputs[0], self._elementwise(op))

    op_relu = op_silu = op_gelu = op_gelu_tanh = op_square = op_mul = op_layernorm

    def op_layernorm_quant(self, op):
        self.write_quant(op.outputs, *quantize_act(self._elementwise(op)))

    op_relu_quant = op_silu_quant = op_square_quant = op_mul_quant = op_layernorm_quant
    op_gelu_quant = op_gelu_tanh_quant = op_layernorm_quant

    def op_quant(self, op):
        self.write_quant(op.outputs, *quantize_act(self.f32(op.inputs[0])))

    def op_add(self, op):
        self.put(op.outputs[0], hostops.add(self.f32(op.inputs[0]), self.f32(op.inputs[1])))

    def dequant_value(self, name: str, sx_name: str, a: dict) -> torch.Tensor:
        """The TLMM result ``name`` (its K-slice parts summed) dequantized with the per-token scales
        ``sx_name`` and ``a``'s ``scale`` (or per-channel ``scale_rows``) and optional ``bias``
        (models.hostops.dequant)."""
        # per-channel ternary scales (BitLinear(per_channel=True)): s_x·s_w is the (T, N) outer product
        sw = self.f32(a["scale_rows"]) if "scale_rows" in a else a["scale"]
        b = a.get("bias")
        y = self._rows(name, self.tlmm_int(name))
        return hostops.dequant(y, self.f32(sx_name), sw, self.f32(b) if b else None)

    def op_dequant(self, op):
        self.put(op.outputs[0], self.dequant_value(op.inputs[0], op.inputs[1], op.attrs))

    def _bias(self, op, y: torch.Tensor) -> torch.Tensor:
        """A linear's bias after its dequantization (models.bitlinear.add_bias: one float32 add)."""
        b = op.attrs.get("bias")
        return y if not b else add_bias(y, self.f32(b))

    def op_lm_head(self, op):  # host_fp32, or host_fp16: the float16 weights read as float32 (exact)
        x = self.f32(op.inputs[0])
        if op.attrs.get("last_only"):
            x = x[-1:]
        self.put(op.outputs[0], hostops.linear(x, self.f32(op.attrs["weight"])))

    # ---- the LM head on the GEMM engine (lm_head = acc_int8; models/lm_head.py, same functions) ----
    def op_lm_head_quant(self, op):
        x = self.f32(op.inputs[0])
        if op.attrs.get("last_only"):
            x = x[-1:]
        xq, sx = quantize_act(x)
        self.put_raw(op.outputs[0], pack_a(xq.numpy(), self.geo))
        self.put(op.outputs[1], sx)

    op_int8_quant = op_lm_head_quant  # a W8A8 linear (models/w8a8.py): the same definition

    def op_lm_head_dequant(self, op):
        *ys, sx_name, sw_name = op.inputs
        rows = op.attrs["rows"]
        y = torch.cat(
            [self.gemm_out(y, rows, n1 - n0) for y, (n0, n1) in zip(ys, op.attrs["slices"], strict=True)], 1
        )
        self.put(op.outputs[0], self._bias(op, dequant_logits(y, self.f32(sx_name), self.f32(sw_name))))

    op_int8_dequant = op_lm_head_dequant

    # ---- attention (same operations and order as compiler.capture.attention_int) ----
    # KV heads are grouped g at a time (compiler.tiling.attention_group): a group's Q·Kᵀ has a block-diagonal
    # A (rows of KV head j hold their q in contraction columns j·hd..) against the g heads' keys stacked along
    # the contraction, its P·V multiplies every row by the g heads' values side by side; the host keeps the
    # diagonal blocks. Row order inside a group: token-major, (T tokens, KV head j, its rep query heads), so a
    # band of row tiles is a band of tokens (compiler.tiling.attention_bands: a causal prefill's Q·Kᵀ and P·V
    # commands per band of query rows over only the keys those rows attend).
    def _bands(self, a: dict, key: str, m: int, n: int) -> list[tuple[int, int, int]]:
        """A softmax's Q·Kᵀ (``qk_bands``) or P·V (``pv_bands``) commands per group: (first row, end row,
        keys); one band over every row and key by default (decode, non-causal attention, retrieval)."""
        return [tuple(b) for b in a.get(key, [[0, m, n]])]

    @staticmethod
    def _band_name(stem: str, gi: int, b: int, n_bands: int) -> str:
        return f"{stem}{gi}" if n_bands == 1 else f"{stem}{gi}.{b}"

    def _token_span(self, a: dict) -> tuple[int, int, int]:
        """(first token, tokens, all tokens) of the running op: a row chunk's tokens r0..r1-1
        (compiler.chunks.ROW_ATTENTION), else the step's."""
        T = a["tokens"]
        if self.window is None:
            return 0, T, T
        return self.window[0], self.window[1] - self.window[0], T

    def _a_rows(self, name: str, r0: int, rows: np.ndarray) -> np.ndarray:
        """The packed A panel ``name`` (M×K int8) with rows r0.. replaced by ``rows``: a chunk's rows of the
        Q·Kᵀ A (hw.gemm_layout.pack_a's order unpacked, updated, packed; the first chunk starts from zeros,
        so the padding is zero as the whole op writes it)."""
        ti = self.p.tensors[name]
        M, K = ti.shape
        if r0 == 0:
            full = np.zeros((M, K), np.int8)
        else:
            s = gemm_shape(self.geo, M, K, 1)
            R, TK = self.geo.rows, self.geo.k_tile
            raw = self.raw(name)[: s.m_tiles * s.k_tiles * R * TK].reshape(-1).view(np.int8)
            full = raw.reshape(s.m_tiles, s.k_tiles, TK, R).transpose(0, 3, 1, 2).reshape(s.m_tiles * R, -1)
            full = np.ascontiguousarray(full[:M, :K])
        full[r0 : r0 + rows.shape[0]] = rows
        return pack_a(full, self.geo)

    def op_attn_prep(self, op):
        a = op.attrs
        h, hkv, hd, pos = a["n_heads"], a["n_kv_heads"], a["head_dim"], a["pos"]
        L, rep, g = a["layer"], h // hkv, a.get("group", 1)
        t0, T, T_all = self._token_span(a)  # a row chunk: its tokens t0..t0+T-1 only (rows are independent)
        pos += t0
        m = rep * T
        positions = torch.arange(pos, pos + T)
        q = self.f32(op.inputs[0]).view(1, T, h, hd).transpose(1, 2)
        k = self.f32(op.inputs[1]).view(1, T, hkv, hd).transpose(1, 2)
        v = self.f32(op.inputs[2]).view(1, T, hkv, hd).transpose(1, 2)
        if a.get("rope", True):  # the LM's; models.attention.SelfAttention has none
            cos, sin = self.f32("rope_cos"), self.f32("rope_sin")
            q, k = hostops.rope(q, positions, cos, sin), hostops.rope(k, positions, cos, sin)
        qq, sq = quantize_act(q)
        kq, sk = quantize_act(k)
        vq, sv = quantize_act(v)
        for gi in range(hkv // g):
            rows = np.zeros((T, g, rep, g * hd), np.int8)  # token-major rows
            for j in range(g):
                kv = gi * g + j
                rows[:, j, :, j * hd : (j + 1) * hd] = (
                    qq[0, kv * rep : (kv + 1) * rep].transpose(0, 1).numpy()
                )
            if T == T_all:
                self.put_raw(f"att{L}.qa{gi}", pack_a(rows.reshape(g * m, g * hd), self.geo))
            else:  # token-major rows: this chunk's are rows t0·g·rep.. of the group's A
                self.put_raw(
                    f"att{L}.qa{gi}",
                    self._a_rows(f"att{L}.qa{gi}", t0 * g * rep, rows.reshape(g * m, g * hd)),
                )
        if T == T_all:
            self.put(f"att{L}.sq", sq[0, :, :, 0])
        else:  # (heads, tokens): this chunk's columns
            full = self.f32(f"att{L}.sq").reshape(h, T_all).clone()
            full[:, t0 : t0 + T] = sq[0, :, :, 0]
            self.put(f"att{L}.sq", full)
        W, TK, C = self.img.shape[1], self.geo.k_tile, self.geo.cols
        BB = self.geo.b_beats
        cap = self.p.tensors[f"kv{L}.k0"].shape[1]
        kt_gd, kt_cap = -(-(g * hd) // TK), -(-cap // TK)
        p_idx = np.arange(pos, pos + T)[:, None]
        flat = self.img.reshape(-1)
        for kv in range(hkv):
            gi, j = divmod(kv, g)
            d_idx = j * hd + np.arange(hd)[None, :]  # the head's columns in its group
            kbase, vbase = self.p.tensors[f"kv{L}.k{gi}"].addr * W, self.p.tensors[f"kv{L}.v{gi}"].addr * W
            # K cache = B panels of Kᵀ (g·hd × cap): tile (ni = p // C, kt = d // TK), byte (d % TK)·C + p % C
            koff = kbase + ((p_idx // C) * kt_gd + d_idx // TK) * BB * W + (d_idx % TK) * C + p_idx % C
            flat[koff] = kq[0, kv].numpy().view(np.uint8)
            # V cache = B panels of V (cap × g·hd): tile (ni = d // C, kt = p // TK), byte (p % TK)·C + d % C
            voff = vbase + ((d_idx // C) * kt_cap + p_idx // TK) * BB * W + (p_idx % TK) * C + d_idx % C
            flat[voff] = vq[0, kv].numpy().view(np.uint8)
        for name, s in ((f"kv{L}.sk", sk), (f"kv{L}.sv", sv)):
            full = self.f32(name)
            full[:, pos : pos + T] = s[0, :, :, 0]
            self.put(name, full)
        r = a.get("resv")
        if r and (r["inserts"] or r["queries"]):  # the KVR's rows: keys to insert, then the queries
            rb = -(-r["dim"] // W) * W
            for gi in range(hkv // g):
                rows = np.zeros((r["inserts"] + r["queries"], rb), np.int8)
                new = [t for t in range(T) if pos + t >= r["sinks"]]
                for i, t in enumerate(new):  # stream key: the g heads' codes concatenated
                    rows[i, : r["dim"]] = kq[0, gi * g : (gi + 1) * g, t].reshape(-1).numpy()
                for qi in range(r["queries"]):  # query r: concat_i q of head (gi·g + i)·rep + r
                    rows[r["inserts"] + qi, : r["dim"]] = np.concatenate(
                        [qq[0, (gi * g + i) * rep + qi, 0].numpy() for i in range(g)]
                    )
                self.put_raw(f"att{L}.vec{gi}", rows)

    def _cache_offsets(self, L: int, gi: int, g: int, hd: int, positions: np.ndarray):
        """Byte offsets in the image of group gi's K and V cache at ``positions`` (n,) × its g·hd columns."""
        W, TK, C, BB = self.img.shape[1], self.geo.k_tile, self.geo.cols, self.geo.b_beats
        cap = self.p.tensors[f"kv{L}.k0"].shape[1]
        kt_gd, kt_cap = -(-(g * hd) // TK), -(-cap // TK)
        p_idx, d_idx = positions[:, None], np.arange(g * hd)[None, :]
        kbase, vbase = self.p.tensors[f"kv{L}.k{gi}"].addr * W, self.p.tensors[f"kv{L}.v{gi}"].addr * W
        koff = kbase + ((p_idx // C) * kt_gd + d_idx // TK) * BB * W + (d_idx % TK) * C + p_idx % C
        voff = vbase + ((d_idx // C) * kt_cap + p_idx // TK) * BB * W + (p_idx % TK) * C + d_idx % C
        return koff, voff

    def _list(self, L: int, gi: int) -> np.ndarray:
        return self.raw(f"att{L}.list{gi}")[: self.p.tensors[f"att{L}.list{gi}"].nbytes].view("<u4")

    def _softmax_resv(self, op):
        """The restricted attention's softmax (docs/design.md): the row of n·P slots in list order, invalid
        slots −inf, as models/retrieval.py builds it."""
        a = op.attrs
        r = a["resv"]
        h, hkv, pos, L = a["n_heads"], a["n_kv_heads"], a["pos"], a["layer"]
        rep, g = h // hkv, a.get("group", 1)
        P, S, Wn, pt = r["page"], r["sinks"], r["window"], r["page_tile"]
        sq = self.f32(f"att{L}.sq").reshape(h)
        sk, sv = self.f32(f"kv{L}.sk"), self.f32(f"kv{L}.sv")
        cid = self.raw(f"kv{L}.cid")[: self.p.tensors[f"kv{L}.cid"].nbytes].view("<i4").reshape(hkv // g, -1)
        sp_all = torch.zeros(h)
        for gi in range(hkv // g):
            words = self._list(L, gi)
            n = int(words[0])
            ent = words[4 : 4 + n]
            tiles, valid = (ent & 0xFFFF).astype(np.int64), (ent >> 16).astype(np.int64)
            chosen = {int(d) - pt for d in tiles if d >= pt}
            slot_pos = (tiles[:, None] * P + np.arange(P)[None, :]).reshape(-1)
            ok = np.zeros(n * P, bool)
            for e in range(n):
                for i in range(P):
                    t = int(tiles[e]) * P + i
                    if tiles[e] >= pt:
                        ok[e * P + i] = i < valid[e]
                    else:
                        ok[e * P + i] = t <= pos and (
                            t < S or (t > pos - Wn and not (S <= t < pos and int(cid[gi, t]) in chosen))
                        )
            okt = torch.from_numpy(ok)[None, :]
            Sg = self.gemm_out(f"att{L}.scores{gi}", g * rep, n * P)  # the GEMM_LIST wrote n column tiles
            pq_rows = np.zeros((g * rep, n * P), np.int8)
            for j in range(g):
                kvh = gi * g + j
                skr = sk[kvh, slot_pos][None, :]
                svr = sv[kvh, slot_pos][None, :]
                for rr in range(rep):
                    hh = kvh * rep + rr
                    s1 = sq[hh].reshape(1, 1)
                    scores = Sg[j * rep + rr][None, :].to(torch.float32) * (s1 * skr)
                    scores = scores / a["score_div"]
                    scores = torch.where(okt, scores, torch.full_like(scores, float("-inf")))
                    pr = hostops.softmax(scores) * svr
                    pq, sp = quantize_act(pr)
                    pq_rows[j * rep + rr] = pq[0].numpy()
                    sp_all[hh] = sp.reshape(())
            self.put_raw(f"att{L}.pa{gi}", pack_a(pq_rows, self.geo))
        self.put(f"att{L}.sp", sp_all.reshape(h, 1))

    def _page_copies(self, op):
        """Copy the step's inserted keys (K column, V row, scales) into their clusters' pages and record
        each token's cluster (the list block's insert results; docs/design.md, "Pages")."""
        a = op.attrs
        r = a["resv"]
        hkv, hd, pos, T, L = a["n_kv_heads"], a["head_dim"], a["pos"], a["tokens"], a["layer"]
        g = a.get("group", 1)
        P, pt, entries = r["page"], r["page_tile"], r["entries"]
        new = [pos + t for t in range(T) if pos + t >= r["sinks"]]
        flat = self.img.reshape(-1)
        cid_t = self.p.tensors[f"kv{L}.cid"]
        cid = self.raw(f"kv{L}.cid")[: cid_t.nbytes].view("<i4").reshape(hkv // g, -1).copy()
        sk, sv = self.f32(f"kv{L}.sk"), self.f32(f"kv{L}.sv")
        for gi in range(hkv // g):
            res = self._list(L, gi)[4 + entries : 4 + entries + len(new)]
            cl = (res & 0xFFFF).astype(np.int16).astype(np.int64)
            slot = (res >> 16).astype(np.int64)
            src = np.array(new, np.int64)
            cid[gi, src] = cl
            keep = cl >= 0
            if not keep.any():
                continue
            src, dst = src[keep], (pt + cl[keep]) * P + slot[keep]
            ks, vs = self._cache_offsets(L, gi, g, hd, src)
            kd, vd = self._cache_offsets(L, gi, g, hd, dst)
            flat[kd] = flat[ks]
            flat[vd] = flat[vs]
            heads = slice(gi * g, (gi + 1) * g)
            sk[heads, dst] = sk[heads, src]
            sv[heads, dst] = sv[heads, src]
        self.put(f"kv{L}.sk", sk)
        self.put(f"kv{L}.sv", sv)
        self.put_raw(f"kv{L}.cid", cid.astype("<i4"))

    def op_attn_softmax(self, op):
        a = op.attrs
        if a.get("resv", {}).get("active"):
            return self._softmax_resv(op)
        h, hkv, pos, T = a["n_heads"], a["n_kv_heads"], a["pos"], a["tokens"]
        L, rep, ctx, g = a["layer"], h // hkv, pos + T, a.get("group", 1)
        # the groups lo..hi-1 (all by default; one per op with system.overlap): rows are independent
        lo, hi = a.get("group_lo", 0), a.get("group_hi", hkv // g)
        r0, r1 = lo * g * rep, hi * g * rep  # their query heads
        M = g * rep * T
        qkb, pvb = self._bands(a, "qk_bands", M, ctx), self._bands(a, "pv_bands", M, ctx)
        groups = []
        for gi in range(lo, hi):  # the Q·Kᵀ bands' scores; the keys beyond a band's (masked) are never read
            Sg = torch.zeros((M, ctx), dtype=torch.int32)
            for b, (b0, b1, keys) in enumerate(qkb):
                Sg[b0:b1, :keys] = self.gemm_out(
                    self._band_name(f"att{L}.scores", gi, b, len(qkb)), b1 - b0, keys
                )
            groups.append(Sg.reshape(T, g * rep, ctx).transpose(0, 1))
        S = torch.cat(groups).unsqueeze(0)
        sq = self.f32(f"att{L}.sq").reshape(1, h, T, 1)[:, r0:r1]
        skr = self.f32(f"kv{L}.sk")[:, :ctx].reshape(1, hkv, ctx, 1).repeat_interleave(rep, dim=1)[:, r0:r1]
        svr = self.f32(f"kv{L}.sv")[:, :ctx].reshape(1, hkv, ctx, 1).repeat_interleave(rep, dim=1)[:, r0:r1]
        positions = torch.arange(pos, pos + T)
        scores = S.to(torch.float32) * (sq * skr.transpose(-1, -2))
        scores = scores / a["score_div"]
        if a.get("causal", True):
            visible = torch.arange(ctx)[None, :] <= positions[:, None]
            scores = torch.where(visible, scores, torch.full_like(scores, float("-inf")))
        p = hostops.softmax(scores) * svr.transpose(-1, -2)
        pq, sp = quantize_act(p)
        for gi in range(lo, hi):
            j = gi - lo
            pg = pq[0, j * g * rep : (j + 1) * g * rep].transpose(0, 1).reshape(M, ctx).numpy()
            for b, (b0, b1, keys) in enumerate(pvb):  # each P·V band's A: its rows, its keys (the rest is 0)
                pa = self._band_name(f"att{L}.pa", gi, b, len(pvb))
                if pg[b0:b1, keys:].any():  # a band's rows attend a key its P·V does not read
                    raise ProgramError(f"{op.name}: P·V band rows {b0}..{b1} attend keys beyond its {keys}")
                self.put_raw(pa, pack_a(np.ascontiguousarray(pg[b0:b1, :keys]), self.geo))
        if (r0, r1) == (0, h):
            self.put(f"att{L}.sp", sp[0, :, :, 0])
        else:  # this op's heads of the P scales
            full = self.f32(f"att{L}.sp").reshape(h, T).clone()
            full[r0:r1] = sp[0, :, :, 0]
            self.put(f"att{L}.sp", full)

    def op_attn_out(self, op):
        a = op.attrs
        h, hkv, hd, L = a["n_heads"], a["n_kv_heads"], a["head_dim"], a["layer"]
        rep, g = h // hkv, a.get("group", 1)
        t0, T, T_all = self._token_span(a)  # a row chunk: its tokens' output rows only
        m = rep * T_all
        heads = []
        for gi in range(hkv // g):
            o = self.gemm_out(f"att{L}.o{gi}", g * m, g * hd).reshape(T_all, g, rep, g * hd)  # token-major
            o = o[t0 : t0 + T]
            heads += [o[:, j, :, j * hd : (j + 1) * hd].transpose(0, 1) for j in range(g)]
        o_int = torch.cat(heads).unsqueeze(0)
        sp = self.f32(f"att{L}.sp").reshape(1, h, T_all, 1)[:, :, t0 : t0 + T]
        out = o_int.to(torch.float32) * sp
        self.put(op.outputs[0], out.transpose(1, 2).reshape(T, h * hd))
        r = a.get("resv")
        if r and (r["inserts"] or r["queries"]):
            self._page_copies(op)


class Runtime:
    """Runs step Programs of one compiled model on a persistent memory image (weights + KV cache)."""

    def __init__(self, first: Program):
        self.image = first.image.copy()
        # the KV engine's per-stream state (KVR commands; sim.kv_model.KvrExecutor) lives across steps
        self.kvr = KvrExecutor(
            first.acfg.kv, first.acfg.memory.bus_bytes, first.acfg.system.kv_tables == "dram"
        )

    def run(self, prog: Program, tokens) -> tuple[torch.Tensor, ExecStats]:
        need = prog.image.shape[0]
        if self.image.shape[0] < need:  # step buffers grow with the context
            grown = np.zeros((need, self.image.shape[1]), np.uint8)
            grown[: self.image.shape[0]] = self.image
            self.image = grown
        return execute(prog, tokens, self.image, self.kvr)


def check_act_range(act: np.ndarray, act_bits: int, where: str) -> None:
    """Raise ProgramError if an activation stream holds values outside signed ``act_bits``."""
    if act_bits >= 8 or not act.size:  # int8 storage: every value fits
        return
    lo, hi = -(1 << (act_bits - 1)), (1 << (act_bits - 1)) - 1
    a_min, a_max = int(act.min()), int(act.max())
    if a_min < lo or a_max > hi:
        raise ProgramError(
            f"{where}: activations {a_min}..{a_max} do not fit tlmm.act_bits={act_bits} "
            f"({lo}..{hi}); the engine would drop their high bits — compile for a config with "
            f"tlmm.act_bits 8"
        )


def _count(stats: ExecStats, kind: str, cycles: int) -> None:
    stats.cycles[kind] = stats.cycles.get(kind, 0) + cycles
    stats.commands[kind] = stats.commands.get(kind, 0) + 1
    stats.per_command.append((kind, cycles))


def write_input(prog: Program, image: np.ndarray, value) -> None:
    """Write a step's input into ``image``: the LM's token ids (T,), or a general module's float32 input
    (``meta["input"]``; any shape whose rows flatten to the Program's (T, features))."""
    name = prog.meta.get("input")
    if name is None:
        tok = np.asarray(value, dtype=np.int64).reshape(-1)
        if tok.size != prog.meta["tokens"]:
            raise ValueError(f"the Program is for {prog.meta['tokens']} token(s), got {tok.size}")
        prog.write(image, "tokens", tok.astype(np.int32))
        return
    shape = prog.tensors[name].shape
    x = np.asarray(value.detach() if isinstance(value, torch.Tensor) else value, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] != shape[1] or x.size != shape[0] * shape[1]:
        raise ValueError(
            f"the Program's input is {shape[0]} rows × {shape[1]} features, got shape {list(x.shape)}"
        )
    prog.write(image, name, x.reshape(shape))


def execute(
    prog: Program, tokens, image: np.ndarray | None = None, kvr: KvrExecutor | None = None
) -> tuple[torch.Tensor, ExecStats]:
    """Run ``prog`` for ``tokens`` (its step's T token ids); returns (logits (T, vocab) float32, stats).
    ``image`` (modified in place) carries the KV cache between steps; by default a copy of the Program's.
    ``kvr`` carries the KV engine's tables between steps (KVR commands; a fresh one by default)."""
    if not prog.meta.get("weights_materialized", True):
        raise ValueError(
            "this Program was compiled on meta tensors (no weights): it can be inspected, not run"
        )
    img = prog.image.copy() if image is None else image
    write_input(prog, img, tokens)
    acfg = prog.acfg
    host = _Host(prog, img)
    stats = ExecStats()
    t = acfg.tlmm
    cmds = prog.commands()
    if kvr is None:
        kvr = KvrExecutor(acfg.kv, acfg.memory.bus_bytes, acfg.system.kv_tables == "dram")
    wbuf = np.zeros(0, np.uint8)  # the weight buffer's content (packed weight beats of the last fill)
    done = [0]  # commands run, polled by a progress bar (sim/progress.py): no cost per command
    step("execute", lambda: f"{done[0]}/{len(cmds)} commands")
    for i, cmd in enumerate(cmds):
        done[0] = i
        if isinstance(cmd, HostCommand):
            op = prog.host_ops[cmd.op]
            try:
                host.run(op)
            except (KeyError, IndexError, TypeError) as e:  # attributes or tensors the op needs are missing
                raise ProgramError(
                    f"HOST command {i}: host op {op.name} ({op.kind}) is malformed "
                    f"({type(e).__name__}: {e}); recompile the Program"
                ) from e
            stats.commands["host"] += 1
        elif isinstance(cmd, TlmmCommand):
            W = img.shape[1]
            flat = img.reshape(-1)
            m, kc, nb = cmd.tokens, cmd.k_chunks, cmd.n_blocks
            act = (
                flat[cmd.act_base * W : cmd.act_base * W + kc * m * t.chunk_k]
                .view(np.int8)
                .reshape(kc, m, t.chunk_k)
            )
            check_act_range(act, t.act_bits, f"TLMM command {i} (M={m}, KC={kc}, act@{cmd.act_base:#x})")
            wbytes = kc * nb * tlmm_wgt_beat_bytes(t)
            if cmd.wbuf == WBUF_REUSE:  # the top level's weight buffer (Program.validate: a fill wrote it)
                packed = wbuf[:wbytes]
            else:
                packed = flat[cmd.wgt_base * W : cmd.wgt_base * W + wbytes]
                if cmd.wbuf == WBUF_FILL:
                    wbuf = packed.copy()
            wgt = unpack_tlmm_weights(packed, t, kc, nb)
            shape = TlmmShape(m, kc * t.chunk_k, nb * t.columns, kc, nb)
            run = run_tlmm_streams(t, shape, act, wgt)
            res = run.y.astype("<i4").reshape(m, nb, t.columns).transpose(1, 0, 2)
            n = res.size * 4
            flat[cmd.res_base * W : cmd.res_base * W + n] = (
                np.ascontiguousarray(res).view(np.uint8).reshape(-1)
            )
            stats.cycles["tlmm"] += run.cycles
            stats.commands["tlmm"] += 1
            stats.per_command.append(("tlmm", run.cycles))
        elif isinstance(cmd, KvrCommand):
            cycles = kvr.run(cmd, img)
            stats.kvr_engine.append(list(kvr.engine_cycles))
            stats.kvr_touched.append(list(kvr.touched))
            _count(stats, "kv", cycles)
        elif isinstance(cmd, GemmListCommand):
            try:
                cycles, _, n = run_gemm_list_on_image(acfg, img, cmd)
            except ValueError as e:  # a list the KVR did not write, or tiles outside the image
                raise ProgramError(f"GEMM_LIST command {i}: {e}") from None
            stats.list_counts.append(int(n))
            _count(stats, "gemm", cycles)
        elif isinstance(cmd, GemmCommand):
            cycles, _ = run_gemm_on_image(acfg, img, cmd)
            stats.cycles["gemm"] += cycles
            stats.commands["gemm"] += 1
            stats.per_command.append(("gemm", cycles))
    logits = host.f32(prog.meta["output"])
    return logits, stats
