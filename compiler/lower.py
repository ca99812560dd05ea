"""Per-step lowering: the pass pipeline's graph → a Program for one *step* (T new tokens at position p).

A Program is specific to its step because attention's sizes grow with the context; every step of one
model uses the same memory map for weights, host constants and the KV cache, so a runtime switches
between step Programs without moving data (the image persists across steps).

Passes here, in order (each has its own test):

6. TLMM tiling            (:meth:`Lowering.tlmm_slices`, ``Lowering._lower_tlmm``) each ``tlmm`` op → TLMM
                          commands: tokens in groups of ≤ ``tlmm.tokens``, K in slices of ≤ ``tlmm.max_k``
                          (int32 partial sums added exactly by the dequant), N in slices of ≤ ``tlmm.max_n``;
                          weights too large for the engine never fail. With a weight buffer
                          (``tlmm.weight_buffer_beats``) slices also fit the buffer and a prompt's token
                          groups run slice by slice: the first fills the buffer, the rest reuse it.
7. attention              (``Lowering._lower_attention``) ``attention`` → host ``attn_prep`` (RoPE unless
                          ``rope=False``, int8 q/k/v, KV-cache append) → per group of KV heads (compiler.tiling.attention_group)
                          a GEMM ``Q·Kᵀ`` (block-diagonal A) → host ``attn_softmax`` (scale, mask, softmax,
                          fold V's scales, int8 P) → per group a GEMM ``P·V`` (B strided over the V cache's
                          panels) → host ``attn_out`` (keeps the diagonal blocks); a causal prefill runs each
                          GEMM as commands per band of query rows over only the keys they attend
                          (:func:`compiler.tiling.attention_bands`).
7b. W8A8 products          (``Lowering._lower_int8_gemm``) every ``int8linear`` op (models/w8a8.py: host
                          ``int8_quant`` → GEMM commands → host ``int8_dequant``) and, the same way,
                          (``Lowering._lower_lm_head_int8``) with ``lm_head="acc_int8"`` the ``lm_head`` op →
                          host ``lm_head_quant`` (int8 absmax per token, A panels) → GEMM commands over
                          the int8 weight panels (:func:`compiler.tiling.lm_head_gemms`, int32 results, no
                          requantization) → host ``lm_head_dequant`` (``y · (s_x · s_w)``); ``host_fp16``
                          keeps the host op on a float16 copy of the weights (models/lm_head.py).
8. :class:`Allocator`     device tensors get beat addresses: persistent ones (packed weights, KV cache)
                          first in a fixed order, then step buffers first-fit with reuse after last use.
9. weight packing         (:meth:`Lowering.weight_image`) ternary weights → TLMM weight streams →
                          bit-packed index bytes in the image.
10. emit                  (:meth:`Lowering.program`, ``Lowering._finish``) command words, host-op table,
                          listing.
"""

from __future__ import annotations

import numpy as np

from compiler.chunks import host_chunk_rows, pipeline_order, split_host_ops
from compiler.hostcost import host_cycles
from compiler.ir import CompileError, Graph
from compiler.schedule import insert_syncs, mask_names, with_syncs
from compiler.tiling import (
    Allocator,
    AttentionBand,
    attention_gemms,
    beats,
    gemm_cost,
    kv_cache_tensors,
    lm_head_gemms,
    lm_head_weight_beats,
    retrieval_geometry,
    softmax_band_attrs,
    tlmm_fits_fields,
    tlmm_slices,
    tlmm_tiles,
    tlmm_weight_bytes,
)
from compiler.tiling import ceil_div as _ceil
from hw.config import AcceleratorConfig
from hw.gemm_layout import gemm_shape
from hw.isa import GemmCommand, GemmListCommand, HostCommand, KvrCommand, SyncCommand, TlmmCommand
from hw.kv_numerics import TableLayout
from hw.program import DEQUANT_FUSABLE, DEQUANT_PREFIX, LM_HEAD_OPTIONS, HostOp, Program, TensorInfo

__all__ = ["Allocator", "StepPlan", "Lowering"]


class StepPlan:
    """Commands, host ops and tensors of one step, before addresses are final."""

    def __init__(self):
        self.items: list[tuple[str, object]] = []  # ("host", HostOp) | ("tlmm", dict) | ("gemm", dict)
        self.tensors: dict[str, TensorInfo] = {}
        self.listing: list[str] = []

    def tensor(self, name, nbytes, dtype, shape, layout="rows", **attrs) -> str:
        self.tensors[name] = TensorInfo(name, -1, int(nbytes), dtype, [int(s) for s in shape], layout, attrs)
        return name


class Lowering:
    """Lowers a pass-pipeline graph for one accelerator config; packs weights once for all steps."""

    def __init__(
        self,
        graph: Graph,
        acfg: AcceleratorConfig,
        state: dict,
        model_config: dict,
        lm_head: str = "host_fp32",
        retrieval: bool | None = None,
    ):
        if lm_head not in LM_HEAD_OPTIONS:
            raise CompileError(f"lm_head={lm_head!r}: expected one of {', '.join(LM_HEAD_OPTIONS)}")
        self.g, self.acfg, self.state, self.mc = graph, acfg, state, model_config
        self.lm_head = lm_head
        self.general = model_config.get("graph") == "module"  # a general module (input: float rows)
        self.input_name = "input" if self.general else "tokens"
        heads = [op for op in graph.ops if op.kind == "lm_head"]
        if lm_head != "host_fp32" and len(heads) != 1:
            raise CompileError(f"<model>: lm_head={lm_head} needs exactly one LM head, found {len(heads)}")
        self.head_weight = heads[0].attrs["weight"] if heads else None
        self.W = acfg.memory.bus_bytes
        self.geo = acfg.gemm_geometry
        self.meta = any(
            getattr(t, "device", None) is not None and t.device.type == "meta" for t in state.values()
        )
        self.limit = 1 << acfg.memory.addr_bits
        self._check_attention()
        if retrieval is None:
            retrieval = acfg.system.attention == "resv" and not self.general
        self.retrieval = bool(retrieval)
        self.rgeo = self._retrieval_geometry() if self.retrieval else None
        self.persistent: dict[str, TensorInfo] = {}
        self.alloc = Allocator(0, self.limit)
        self._plan_persistent()
        self._image = None
        self.largest_last = self._largest_last_ops() if acfg.system.overlap else frozenset()

    # ------------------------------------------------------------------ helpers
    def beats(self, nbytes: int) -> int:
        return beats(nbytes, self.W)

    def _check_attention(self) -> None:
        for op in self.g.ops:
            if op.kind == "attention" and op.attrs["n_heads"] % op.attrs["n_kv_heads"]:
                raise CompileError(f"{op.where}: n_heads must be a multiple of n_kv_heads")

    def _retrieval_geometry(self):
        """KV retrieval in the loop (docs/design.md): one geometry for every attention op of the LM."""
        if self.general:
            raise CompileError(
                "<model>: system.attention=resv needs a decoder LM (a general module has no KV cache)"
            )
        shapes = {
            (op.attrs["n_heads"], op.attrs["n_kv_heads"], op.attrs["head_dim"])
            for op in self.g.ops
            if op.kind == "attention"
        }
        if len(shapes) != 1:
            raise CompileError(
                f"<model>: system.attention=resv needs one attention shape, found {len(shapes)}"
            )
        if self.acfg.system.overlap:
            raise CompileError(
                "<model>: system.attention=resv with system.overlap: not supported yet (the SYNC analysis "
                "has no KV engine class; the top level runs no KVR); set system.overlap false"
            )
        try:
            rg = retrieval_geometry(self.acfg, *shapes.pop(), self.mc["max_seq"])
        except ValueError as e:
            raise CompileError(f"<model>: system.attention=resv: {e}") from None
        if rg.page != self.geo.cols or rg.page != self.geo.k_tile:
            raise CompileError(
                f"<model>: system.attention=resv: kv.max_cluster_size={rg.page} must equal gemm.cols "
                f"({self.geo.cols}) and gemm.k_tile ({self.geo.k_tile}) (one list entry = one GEMM tile)"
            )
        n_attn = sum(op.kind == "attention" for op in self.g.ops)
        streams = n_attn * rg.streams_per_layer
        if self.acfg.system.kv_tables == "onchip" and streams > self.acfg.kv.slots:
            raise CompileError(
                f"<model>: system.kv_tables=onchip: kv.slots={self.acfg.kv.slots} holds fewer tables than the "
                f"model's {streams} retrieval streams ({n_attn} layers × {rg.streams_per_layer}); set kv.slots "
                f"to at least {streams}"
            )
        return rg

    def tlmm_slices(self, op) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """K slices (multiples of G·T) and N slices (multiples of Q) that fit tlmm.max_k / max_n
        (:func:`compiler.tiling.tlmm_slices`)."""
        k, n = op.attrs["k"], op.attrs["n"]
        slices = tlmm_slices(self.acfg.tlmm, k, n)
        if not tlmm_fits_fields(self.acfg.tlmm, slices):
            raise CompileError(f"{op.where}: K={k}, N={n} cannot be tiled into 16-bit TLMM command fields")
        return slices

    def _largest_last_ops(self) -> frozenset[int]:
        """Indices (in ``self.g.ops``) of the TLMM ops whose weight slices run smallest first, largest last
        (:func:`compiler.tiling.tlmm_tiles`), for an overlapped prefill: an op whose input an earlier TLMM op
        of the step already read (its first slice waits for no host op) and whose result is the last TLMM
        result some host op reads. A token chunk's result rows are complete only after the op's last slice;
        with the longest slice last, that host op's row chunks (compiler/chunks.py) run beside it rather than
        after it. BitNet's FFN: the up projection (the gate read the same activations first), whose
        ``dequant+swiglu+quant`` chunks otherwise followed its 41-block remainder slice on kv260 and left
        the engine waiting ~0.4 ms a layer (docs/design.md, "Weight slice order")."""
        produced = {v: i for i, op in enumerate(self.g.ops) if op.kind == "tlmm" for v in op.outputs}
        read: set[str] = set()
        out = set()
        for i, op in enumerate(self.g.ops):
            if op.kind != "tlmm":
                continue
            fresh = op.inputs[0] not in read
            read.add(op.inputs[0])
            if fresh:
                continue
            for c in self.g.consumers(op.outputs[0]):
                if c.kind != "tlmm" and all(produced.get(v, -1) <= i for v in c.inputs):
                    out.add(i)
                    break
        return frozenset(out)

    # ------------------------------------------------------------------ persistent region
    def _plan_persistent(self) -> None:
        # the region's size is compiler.tiling.persistent_beats (what the DSE's screen uses)
        t = self.acfg.tlmm
        for op in self.g.ops:
            if op.kind != "tlmm":
                continue
            kss, nss = self.tlmm_slices(op)
            for si, (k0, k1) in enumerate(kss):
                for ni, (n0, n1) in enumerate(nss):
                    kc, nb, nbytes = tlmm_weight_bytes(t, k1 - k0, n1 - n0)
                    name = f"w:{op.attrs['weight']}[{si},{ni}]"
                    self._persist(
                        name,
                        nbytes,
                        "uint8",
                        [kc, nb],
                        "tlmm_wgt",
                        k=[k0, k1],
                        n=[n0, n1],
                        weight=op.attrs["weight"],
                        **({"per_channel": True} if op.attrs.get("per_channel") else {}),
                    )
        for op in self.g.ops:  # W8A8 linears: int8 B panels (models/w8a8.py)
            if op.kind == "int8linear" and f"{op.attrs['weight']}.int8" not in self.persistent:
                k, n = op.attrs["k"], op.attrs["n"]
                self._persist(
                    f"{op.attrs['weight']}.int8",
                    lm_head_weight_beats(self.geo, k, n) * self.W,
                    "int8",
                    [k, n],
                    "gemm_b",
                    weight=op.attrs["weight"],
                )
        if self.lm_head == "acc_int8":
            w = self.state[self.head_weight]
            vocab, k = int(w.shape[0]), int(w.shape[1])
            self._persist(
                self.lm_weight_name,
                lm_head_weight_beats(self.geo, k, vocab) * self.W,
                "int8",
                [k, vocab],
                "gemm_b",
                weight=self.head_weight,
            )
        for op in self.g.ops:
            if op.kind != "attention":
                continue
            a = op.attrs
            cap = self.rgeo.cap if self.retrieval else self.mc["max_seq"]  # resv: + the clusters' pages
            for suffix, nbytes, dtype, shape, layout, attrs in kv_cache_tensors(
                self.geo, self.W, cap, a["n_heads"], a["n_kv_heads"], a["head_dim"]
            ):
                self._persist(f"kv{a['layer']}.{suffix}", nbytes, dtype, shape, layout, **attrs)
            if self.retrieval:  # per stream: each token's cluster (host: the window rule) and its table
                rg, L = self.rgeo, a["layer"]
                ms = self.mc["max_seq"]
                self._persist(
                    f"kv{L}.cid", rg.streams_per_layer * ms * 4, "int32", [rg.streams_per_layer, ms]
                )
                if self.acfg.system.kv_tables == "dram":  # hw.kv_numerics.TableLayout, zeroed = empty
                    tl = TableLayout(self.acfg.kv, self.W)
                    for j in range(rg.streams_per_layer):
                        self._persist(f"kv{L}.table{j}", tl.nbytes, "uint8", [tl.beats, self.W])
        self.step_base = self.alloc.high

    def _persist(self, name, nbytes, dtype, shape, layout="rows", **attrs) -> None:
        addr = self.alloc.alloc(self.beats(nbytes), name)
        self.persistent[name] = TensorInfo(name, addr, int(nbytes), dtype, list(shape), layout, attrs)

    @property
    def lm_weight_name(self) -> str:
        """The LM head's weights as the chosen placement stores them (``host_fp32``: the parameter itself)."""
        w = self.head_weight
        return {"host_fp32": w, "host_fp16": f"{w}.fp16", "acc_int8": f"{w}.int8"}[self.lm_head]

    @property
    def lm_scale_name(self) -> str:
        return f"{self.head_weight}.row_scale"

    def host_constants(self) -> list[str]:
        """Parameters host ops read (embedding, norms, LM head, RoPE tables), and the LM head's derived
        constants (``host_fp16``: float16 weights; ``acc_int8``: float32 row scales)."""
        names = []
        for op in self.g.ops:
            if op.kind == "lm_head" and self.lm_head != "host_fp32":
                names.append(self.lm_weight_name if self.lm_head == "host_fp16" else self.lm_scale_name)
            elif op.kind == "int8linear":
                names.append(f"{op.attrs['weight']}.row_scale")
            elif op.kind == "dequant" and "scale_rows" in op.attrs:  # per-channel ternary scales
                names.append(op.attrs["scale_rows"])
            elif "weight" in op.attrs and op.kind not in ("tlmm", "dequant"):
                names += [w for w in (op.attrs["weight"], op.attrs.get("bias")) if w is not None]
            if op.kind in ("dequant", "int8linear") and op.attrs.get("bias"):  # a linear's bias
                names.append(op.attrs["bias"])
            for e in op.attrs.get("dequant", ()):  # dequantizations fused into op (passes.fuse_dequant)
                names += [e[k] for k in ("scale_rows", "bias") if k in e]
        if any(op.kind == "attention" and op.attrs.get("rope", True) for op in self.g.ops):
            names += ["rope_cos", "rope_sin"]
        return list(dict.fromkeys(names))

    def _derived(self) -> dict:
        """The LM head's derived constants (computed once): fp16 weights, int8 weights + row scales."""
        if getattr(self, "_derived_cache", None) is None:
            import torch

            from models.bitlinear import ternary_weight_rows
            from models.lm_head import fp16_weight, quantize_lm_head

            out = {}
            if self.lm_head != "host_fp32" and not self.meta:
                w = self.state[self.head_weight].detach().to("cpu")
                if self.lm_head == "host_fp16":
                    out[self.lm_weight_name] = fp16_weight(w).numpy()
                else:
                    wq, sw = quantize_lm_head(w)
                    out[self.lm_weight_name] = wq.numpy()
                    out[self.lm_scale_name] = sw.numpy()
            for op in self.g.ops:
                # per-channel ternary scales of a dequant, or of one fused into op (passes.fuse_dequant)
                for d in [op.attrs] if op.kind == "dequant" else op.attrs.get("dequant", []):
                    if "scale_rows" in d and not self.meta:
                        out[d["scale_rows"]] = ternary_weight_rows(self.state[d["weight"]])[1].numpy()
                if op.kind == "int8linear" and not self.meta:
                    if "scales" in op.attrs:  # given codes and scales (models.w8a8.FixedInt8Linear)
                        wq = self.state[op.attrs["weight"]].detach().to("cpu", torch.int8)
                        sw = self.state[op.attrs["scales"]].detach().to("cpu", torch.float32)
                    else:
                        wq, sw = quantize_lm_head(self.state[op.attrs["weight"]].detach().to("cpu"))
                    out[f"{op.attrs['weight']}.int8"] = wq.numpy()
                    out[f"{op.attrs['weight']}.row_scale"] = sw.numpy()
            self._derived_cache = out
        return self._derived_cache

    def _host_const_info(self, name: str) -> tuple[str, list[int]]:
        """(dtype, shape) of a host constant."""
        if name in (self.lm_weight_name, self.lm_scale_name) and self.lm_head != "host_fp32":
            w = self.state[self.head_weight]
            if name == self.lm_scale_name:
                return "float32", [int(w.shape[0])]
            return "float16", list(w.shape)
        for suffix in (".row_scale", ".tscale"):  # a W8A8 linear's / a per-channel BitLinear's row scales
            if name.endswith(suffix) and name not in self.state:
                return "float32", [int(self.state[name.removesuffix(suffix)].shape[0])]
        return "float32", list(self.state[name].shape)

    # ------------------------------------------------------------------ weight image (once)
    def weight_image(self) -> np.ndarray:
        """The persistent region: packed TLMM weight streams, int8 GEMM weight panels; KV cache zeroed. Empty for
        meta models."""
        if self.meta:
            return np.zeros((0, self.W), np.uint8)
        if self._image is not None:
            return self._image
        from hw.program import pack_tlmm_weights
        from hw.ternary import tlmm_streams
        from models.bitlinear import ternary_weight, ternary_weight_rows

        img = np.zeros((self.step_base, self.W), np.uint8)
        flat = img.reshape(-1)
        t = self.acfg.tlmm
        cache = {}
        derived = self._derived()
        for ti in self.persistent.values():
            if ti.layout == "gemm_b" and ti.name in derived:  # int8 weights (acc_int8 LM head, Int8Linear)
                from hw.gemm_layout import pack_b

                panels = pack_b(np.ascontiguousarray(derived[ti.name].T), self.geo)
                assert panels.size == ti.nbytes
                img[ti.addr : ti.addr + panels.shape[0]] = panels
            if ti.layout != "tlmm_wgt":
                continue
            wname = ti.attrs["weight"]
            if wname not in cache:
                rows = ti.attrs.get("per_channel", False)
                cache[wname] = (ternary_weight_rows if rows else ternary_weight)(self.state[wname])[0].numpy()
            wq = cache[wname]
            (k0, k1), (n0, n1) = ti.attrs["k"], ti.attrs["n"]
            _, _, wgt = tlmm_streams(t, wq[n0:n1, k0:k1], np.zeros((1, k1 - k0), np.int8))
            data = pack_tlmm_weights(wgt, t)
            assert data.size == ti.nbytes
            flat[ti.addr * self.W : ti.addr * self.W + ti.nbytes] = data
        self._image = img
        return img

    # ------------------------------------------------------------------ one step
    def program(self, tokens: int, pos: int, logits: str = "all") -> Program:
        """The Program of the step (``tokens`` new tokens at position ``pos``). ``logits="last"`` computes
        the LM head for the step's last token only (what generation needs; a prefill's TTFT)."""
        if logits not in ("all", "last"):
            raise ValueError(f"logits={logits!r}: expected 'all' or 'last'")
        if tokens < 1:
            raise CompileError(f"<model>: a step needs at least one token, got {tokens}")
        if self.general:
            if pos != 0:
                raise CompileError(f"<model>: a general module has no positions (pos={pos}, expected 0)")
            if tokens > self.mc["max_seq"] and any(op.kind == "attention" for op in self.g.ops):
                raise CompileError(
                    f"<model>: {tokens} rows; this module's attention was compiled for at most "
                    f"{self.mc['max_seq']} (the example input's rows; compile with a longer example)"
                )
        elif pos + tokens > self.mc["max_seq"]:
            raise CompileError(
                f"<model>: positions {pos}..{pos + tokens - 1} exceed max_seq={self.mc['max_seq']}"
            )
        plan = StepPlan()
        T = tokens
        if self.general:
            feats = self.g.features["input"]
            plan.tensor("input", T * feats * 4, "float32", [T, feats])
        else:
            plan.tensor("tokens", T * 4, "int32", [T])
        f = self.g.features
        quant_of: dict[str, dict] = {}
        for i, op in enumerate(self.g.ops):
            kind = op.kind
            if kind == "tlmm":
                self._lower_tlmm(plan, op, T, quant_of, i in self.largest_last)
                continue
            if kind == "attention":
                self._lower_attention(plan, op, T, pos)
                continue
            if kind == "lm_head" and self.lm_head == "acc_int8":
                self._lower_lm_head_int8(plan, op, T, logits == "last")
                continue
            if kind == "int8linear":
                w = op.attrs["weight"]
                self._lower_int8_gemm(
                    plan, op, T, False, op.attrs["k"], op.attrs["n"], f"{w}.int8", f"{w}.row_scale", "int8"
                )
                continue
            outs = []
            for v in op.outputs:
                if v.endswith(".q"):
                    outs.append(v)
                    quant_of[v] = {"k": f[v]}
                    continue
                rows = 1 if (kind == "lm_head" and logits == "last") else T
                plan.tensor(v, rows * f[v] * 4, "float32", [rows, f[v]])
                outs.append(v)
            attrs = dict(op.attrs)
            if kind == "lm_head":
                attrs["last_only"] = logits == "last"
                attrs["weight"] = self.lm_weight_name
            if kind == "embed":
                attrs["vocab"] = int(self.state[op.attrs["weight"]].shape[0])
            attrs.pop("dequant", None)  # the graph's form; _fuse_dequant writes the Program's
            plan.items.append(("host", HostOp(op.name, kind, list(op.inputs), outs, attrs, op.where)))
        self._fuse_dequant(plan)
        return self._finish(plan, T, pos, quant_of)

    def _fuse_dequant(self, plan: StepPlan) -> None:
        """The host op that reads a dequantization fused into a graph op (passes.fuse_dequant: the op's
        input is the int32 TLMM result) becomes ``dequant+<kind>`` (hw.program.DEQUANT_PREFIX): its
        ``attrs["dequant"]`` says how to dequantize each such input and its inputs gain the per-token scales
        (read ranges, buffer lifetimes). Exactly one host op must read each fused result."""
        fused = {e["input"]: e for op in self.g.ops for e in op.attrs.get("dequant", ())}
        readers: dict[str, list] = {v: [] for v in fused}
        for kind, h in plan.items:
            if kind != "host":
                continue
            mine = [fused[v] for v in dict.fromkeys(h.inputs) if v in fused]
            if not mine:
                continue
            if h.kind not in DEQUANT_FUSABLE:
                raise CompileError(f"{h.where}: host op {h.kind} cannot read a dequantized TLMM result")
            h.kind = DEQUANT_PREFIX + h.kind
            h.inputs = list(h.inputs) + [x for x in dict.fromkeys(e["sx"] for e in mine) if x not in h.inputs]
            h.attrs = {**h.attrs, "dequant": [{k: v for k, v in e.items() if k != "weight"} for e in mine]}
            for e in mine:
                readers[e["input"]].append(h.name)
        for v, names in readers.items():
            if len(names) != 1:
                raise CompileError(
                    f"<model>: the fused dequantization of {v} is read by {len(names)} host ops"
                )

    def _act_tensors(self, plan: StepPlan, xq: str, T: int, k: int, kss) -> list[list[str]]:
        """Per token chunk and K slice, the activation-stream tensor of quantized value ``xq``."""
        t = self.acfg.tlmm
        names = []
        for c, m0 in enumerate(range(0, T, t.tokens)):
            m = min(t.tokens, T - m0)
            row = []
            for si, (k0, k1) in enumerate(kss):
                kc = _ceil(k1 - k0, t.chunk_k)
                name = f"{xq}#{c}.{si}"
                if name not in plan.tensors:
                    plan.tensor(
                        name,
                        kc * m * t.chunk_k,
                        "int8",
                        [kc, m, t.chunk_k],
                        "tlmm_act",
                        m0=m0,
                        m=m,
                        k=[k0, k1],
                    )
                row.append(name)
            names.append(row)
        return names

    def _lower_tlmm(self, plan: StepPlan, op, T: int, quant_of: dict, largest_last: bool = False) -> None:
        t = self.acfg.tlmm
        kss, nss = self.tlmm_slices(op)
        xq = op.inputs[0]
        acts = self._act_tensors(plan, xq, T, op.attrs["k"], kss)
        quant_of.setdefault(xq, {"k": op.attrs["k"]})
        quant_of[xq].setdefault("slices", [])
        for row in acts:
            for a in row:
                if a not in quant_of[xq]["slices"]:
                    quant_of[xq]["slices"].append(a)
        yi = op.outputs[0]
        parts = []
        for tl in tlmm_tiles(t, T, (kss, nss), largest_last):
            res = plan.tensor(
                f"{yi}#{tl.c}.{tl.si}.{tl.ni}",
                tl.nb * tl.m * t.columns * 4,
                "int32",
                [tl.nb, tl.m, t.columns],
                "tlmm_res",
                m0=tl.m0,
                m=tl.m,
                n=[tl.n0, tl.n1],
                k=[tl.k0, tl.k1],
            )
            w = f"w:{op.attrs['weight']}[{tl.si},{tl.ni}]"
            plan.items.append(
                (
                    "tlmm",
                    {
                        "op": op.name,
                        "tokens": tl.m,
                        "k_chunks": tl.kc,
                        "n_blocks": tl.nb,
                        "act": acts[tl.c][tl.si],
                        "wgt": w,
                        "res": res,
                        "wbuf": tl.wbuf,
                        "where": op.where,
                    },
                )
            )
            parts.append(res)
        # the int32 result as the dequant sees it: the list of parts (summed over K slices)
        plan.tensors[yi] = TensorInfo(yi, -1, 0, "int32", [T, op.attrs["n"]], "rows", {"parts": parts})

    def _lower_lm_head_int8(self, plan: StepPlan, op, T: int, last_only: bool) -> None:
        """``lm_head`` → host ``lm_head_quant`` → GEMM commands (int32) → host ``lm_head_dequant``."""
        k, vocab = self.mc["d_model"], int(self.state[self.head_weight].shape[0])
        self._lower_int8_gemm(
            plan, op, T, last_only, k, vocab, self.lm_weight_name, self.lm_scale_name, "lm_head"
        )

    def _lower_int8_gemm(
        self, plan: StepPlan, op, T: int, last_only: bool, k: int, vocab: int, b: str, scale: str, prefix: str
    ) -> None:
        """A W8A8 product on the GEMM engine (the ``acc_int8`` LM head, a ``int8linear``): host
        ``{prefix}_quant`` (int8 absmax per token, A panels) → GEMM commands over the int8 B panels ``b``
        (slices of :func:`compiler.tiling.lm_head_gemms`; int32, no requantization) → host
        ``{prefix}_dequant`` (``y · (s_x · s_w)`` with the row scales ``scale``; models/w8a8.py)."""
        geo, W = self.geo, self.W
        rows = 1 if last_only else T
        name, x, out = op.name, op.inputs[0], op.outputs[0]
        sa = gemm_shape(geo, rows, k, 1)
        xa = plan.tensor(f"{name}.xa", sa.a_beats(geo) * W, "int8", [rows, k], "gemm_a")
        sx = plan.tensor(f"{name}.sx", rows * 4, "float32", [rows, 1])
        plan.tensor(out, rows * vocab * 4, "float32", [rows, vocab])
        plan.items.append(
            (
                "host",
                HostOp(
                    f"{name}.quant",
                    f"{prefix}_quant",
                    [x],
                    [xa, sx],
                    {"last_only": last_only, "k": k},
                    op.where,
                ),
            )
        )
        ys, slices = [], []
        for j, (n0, n1, b_off) in enumerate(lm_head_gemms(geo, k, vocab)):
            sc = gemm_shape(geo, rows, k, n1 - n0)
            y = plan.tensor(
                f"{name}.y{j}", sc.c_beats(geo, False) * W, "int32", [rows, n1 - n0], "gemm_c", n=[n0, n1]
            )
            plan.items.append(
                (
                    "gemm",
                    {
                        "op": f"{name}.gemm{j}",
                        "m": rows,
                        "k": k,
                        "n": n1 - n0,
                        "a": xa,
                        "b": b,
                        "b_offset": b_off,
                        "c": y,
                        "where": op.where,
                    },
                )
            )
            ys.append(y)
            slices.append([n0, n1])
        plan.items.append(
            (
                "host",
                HostOp(
                    f"{name}.dequant",
                    f"{prefix}_dequant",
                    ys + [sx, scale],
                    [out],
                    {"vocab": vocab, "rows": rows, "slices": slices}
                    | ({"bias": op.attrs["bias"]} if op.attrs.get("bias") else {}),
                    op.where,
                ),
            )
        )

    def _lower_attention(self, plan: StepPlan, op, T: int, pos: int) -> None:
        """Per group of ``compiler.tiling.attention_group`` KV heads: a ``Q·Kᵀ`` (block-diagonal A) and a
        ``P·V`` over all the group's columns (B strided by the V cache's panel), each one command per band of
        query rows (:func:`compiler.tiling.attention_bands`: a causal prefill's bands over only the keys
        they attend; one band otherwise); the host keeps the diagonal blocks."""
        a = op.attrs
        L, h, hkv, hd = a["layer"], a["n_heads"], a["n_kv_heads"], a["head_dim"]
        ctx = pos + T
        geo = self.geo
        q, k, v = op.inputs
        out = op.outputs[0]
        plan.tensor(out, T * h * hd * 4, "float32", [T, h * hd])
        ag = attention_gemms(geo, h, hkv, hd, T, ctx, a.get("causal", True), gemm_cost(self.acfg))
        qk, pv = ag.qk, ag.pv
        qkb, pvb = ag.qk_bands, ag.pv_bands  # a causal prefill: bands of query rows, only their keys
        resv = self._retrieval_step(op, T, pos) if self.retrieval else None
        if resv is not None and resv["active"]:  # the GEMMs read the list's tiles: capacity · P columns
            ncols = resv["entries"] * resv["page"]
            qk, pv = (qk[0], qk[1], ncols), (pv[0], ncols, pv[2])
            qkb = pvb = (AttentionBand(0, qk[0], ncols),)
        M, gd = qk[0], qk[1]

        def band_names(stem: str, gi: int, bands) -> list[str]:  # one band: the group's tensor itself
            return [f"{stem}{gi}"] if len(bands) == 1 else [f"{stem}{gi}.{b}" for b in range(len(bands))]

        qa, scores, pa, outs = [], [], [], []
        for gi in range(ag.n_groups):
            sq = gemm_shape(geo, *qk)
            qa.append(plan.tensor(f"att{L}.qa{gi}", sq.a_beats(geo) * self.W, "int8", [M, gd], "gemm_a"))
            if len(qkb) == 1:
                scores.append(
                    [
                        plan.tensor(
                            f"att{L}.scores{gi}", sq.c_beats(geo, False) * self.W, "int32", [M, ctx], "gemm_c"
                        )
                    ]
                )
            else:
                scores.append(
                    [
                        plan.tensor(
                            name,
                            gemm_shape(geo, b.r1 - b.r0, gd, b.keys).c_beats(geo, False) * self.W,
                            "int32",
                            [b.r1 - b.r0, b.keys],
                            "gemm_c",
                            rows=[b.r0, b.r1],
                        )
                        for name, b in zip(band_names(f"att{L}.scores", gi, qkb), qkb, strict=True)
                    ]
                )
            sp = gemm_shape(geo, *pv)
            if len(pvb) == 1:
                pa.append(
                    [plan.tensor(f"att{L}.pa{gi}", sp.a_beats(geo) * self.W, "int8", [M, ctx], "gemm_a")]
                )
            else:
                pa.append(
                    [
                        plan.tensor(
                            name,
                            gemm_shape(geo, b.r1 - b.r0, b.keys, gd).a_beats(geo) * self.W,
                            "int8",
                            [b.r1 - b.r0, b.keys],
                            "gemm_a",
                            rows=[b.r0, b.r1],
                        )
                        for name, b in zip(band_names(f"att{L}.pa", gi, pvb), pvb, strict=True)
                    ]
                )
            outs.append(
                plan.tensor(
                    f"att{L}.o{gi}", sp.c_beats(geo, False) * self.W, "int32", [M, pv[2]], "gemm_c", group=gi
                )
            )
        plan.tensor(f"att{L}.sq", h * T * 4, "float32", [h, T])
        plan.tensor(f"att{L}.sp", h * T * 4, "float32", [h, T])
        common = {
            "layer": L,
            "n_heads": h,
            "n_kv_heads": hkv,
            "head_dim": hd,
            "group": ag.group,
            "pos": pos,
            "tokens": T,
            "score_div": a["score_div"],
            "causal": a.get("causal", True),
            "rope": a.get("rope", True),
        }
        groups = range(ag.n_groups)
        kc, vc = [f"kv{L}.k{gi}" for gi in groups], [f"kv{L}.v{gi}" for gi in groups]
        vecs, lists, extra = [], [], []  # KV retrieval: the KVR's rows and list blocks; the cluster ids
        if resv is not None:
            common["resv"] = resv
            extra = [f"kv{L}.cid"]
            if resv["inserts"] or resv["queries"]:
                rb = _ceil(resv["dim"], self.W) * self.W
                for gi in groups:
                    n_rows = resv["inserts"] + resv["queries"]
                    vecs.append(plan.tensor(f"att{L}.vec{gi}", n_rows * rb, "int8", [n_rows, resv["dim"]]))
                    words = 4 + resv["entries"] + resv["inserts"]
                    lists.append(plan.tensor(f"att{L}.list{gi}", 4 * words, "int32", [words]))  # uint32 words
        plan.items.append(
            (
                "host",
                HostOp(
                    f"{op.name}.prep",
                    "attn_prep",
                    [q, k, v] + (["rope_cos", "rope_sin"] if common["rope"] else []),
                    qa + [f"att{L}.sq"] + kc + vc + [f"kv{L}.sk", f"kv{L}.sv"] + vecs,
                    dict(common),  # each op its own attrs: _finish adds its cycles
                    op.where,
                ),
            )
        )
        for gi, (vec, lst) in enumerate(zip(vecs, lists, strict=True)):
            table = f"kv{L}.table{gi}"
            plan.items.append(
                (
                    "kvr",
                    {
                        "op": f"{op.name}.kvr{gi}",
                        "table": L * ag.n_groups + gi,
                        "inserts": resv["inserts"],
                        "queries": resv["queries"],
                        "win_tile": resv["win_tiles"][0] if resv["win_tiles"] else 0,
                        "win_tiles": len(resv["win_tiles"]),
                        "vec": vec,
                        "list": lst,
                        "tab": table if table in self.persistent else None,
                        "page_tile": resv["page_tile"],
                        "where": op.where,
                    },
                )
            )
        active = resv is not None and resv["active"]
        # with overlap, one softmax per group right after its Q·Kᵀ: the host's softmax of group h runs while the
        # GEMM computes group h + 1 (rows are independent: the same bits as one softmax over all groups);
        # a retrieval step keeps one softmax over the groups' lists
        split = self.acfg.system.overlap and ag.n_groups > 1 and not active

        def gemm_item(name: str, gi: int, mnk, a: str, b: str, c: str, mode: int, **more) -> tuple:
            """Group ``gi``'s GEMM ``name`` (``qk``: Q·Kᵀ, list mode 1; ``pv``: P·V, list mode 2; ``.j``: band j);
            with retrieval active a GEMM-list over the group's key list."""
            base, _, band = name.partition(".")
            body = {
                "op": f"{op.name}.{base}{gi}" + (f".{band}" if band else ""),
                "m": mnk[0],
                "k": mnk[1],
                "n": mnk[2],
                "a": a,
                "b": b,
                "c": c,
            }
            body |= {"b_offset": 0, **more, "where": op.where}
            if active:
                return "gemm_list", body | {"list": lists[gi], "mode": mode}
            return "gemm", body

        # a band of query rows starts at a whole row tile: its A tiles (Q·Kᵀ) and its output tiles (P·V) are
        # a contiguous run of the group's (tiles in (row tile, ·) order)
        kt_gd, nt_gd = _ceil(gd, geo.k_tile), _ceil(gd, geo.cols)
        band_attrs = softmax_band_attrs(qkb, pvb)  # the softmax reads / writes the bands' tensors

        def sub(b, j: int) -> str:  # band j's suffix of the op name (none for one band)
            return "" if len(b) == 1 else f".{j}"

        # P·V's B: the V cache's column panels are max_seq keys long, so B strides by a panel
        panel = self.persistent[f"kv{L}.v0"].attrs["panel_beats"]

        def band_items(gi: int, qk: bool) -> None:
            """Group ``gi``'s Q·Kᵀ (``qk``) or P·V as one command per band of query rows."""
            bands = qkb if qk else pvb
            for j, b in enumerate(bands):
                mi, m = b.r0 // geo.rows, b.r1 - b.r0
                if qk:
                    mnk, abc = (m, gd, b.keys), (qa[gi], kc[gi], scores[gi][j])
                    more = {"a_offset": mi * kt_gd * geo.a_beats}
                else:
                    mnk, abc = (m, b.keys, gd), (pa[gi][j], vc[gi], f"att{L}.o{gi}")
                    more = {"b_stride": panel, "c_offset": mi * nt_gd * geo.out_beats(False)}
                name = ("qk" if qk else "pv") + sub(bands, j)
                plan.items.append(gemm_item(name, gi, mnk, *abc, mode=1 if qk else 2, **more))

        for gi in groups:
            band_items(gi, True)
            if split:
                plan.items.append(
                    (
                        "host",
                        HostOp(
                            f"{op.name}.softmax{gi}",
                            "attn_softmax",
                            scores[gi] + [f"att{L}.sq", f"kv{L}.sk", f"kv{L}.sv"],
                            pa[gi] + [f"att{L}.sp"],
                            {**common, "group_lo": gi, "group_hi": gi + 1, **band_attrs},
                            op.where,
                        ),
                    )
                )
        if not split:
            plan.items.append(
                (
                    "host",
                    HostOp(
                        f"{op.name}.softmax",
                        "attn_softmax",
                        [s for sg in scores for s in sg]
                        + [f"att{L}.sq", f"kv{L}.sk", f"kv{L}.sv"]
                        + (lists + extra if active else []),
                        [p for pg in pa for p in pg] + [f"att{L}.sp"],
                        {**common, **band_attrs},
                        op.where,
                    ),
                )
            )
        for gi in groups:  # P·V per group and band
            band_items(gi, False)
        # with retrieval, attn_out also copies the step's inserted keys into their clusters' pages
        page_outs = (kc + vc + [f"kv{L}.sk", f"kv{L}.sv"] + extra) if lists else []
        plan.items.append(
            (
                "host",
                HostOp(
                    f"{op.name}.out",
                    "attn_out",
                    outs + [f"att{L}.sp"] + lists,
                    [out] + page_outs,
                    dict(common),
                    op.where,
                ),
            )
        )

    def _retrieval_step(self, op, T: int, pos: int) -> dict:
        """The KV retrieval of one attention op's step (docs/design.md, "KV retrieval in the loop"): tokens ≥
        ``kv_sinks`` are inserted at their step; a decode step at context ≥ ``kv_min_context`` queries first
        and reads tile 0, the window tiles and the selected pages (``active``)."""
        from models.retrieval import window_tiles

        rg, sysc = self.rgeo, self.acfg.system
        S, W, P = sysc.kv_sinks, sysc.kv_window, rg.page
        inserts = sum(1 for t in range(pos, pos + T) if t >= S)
        if inserts > 255:
            raise CompileError(
                f"{op.where}: system.attention=resv: a step of {T} tokens inserts {inserts} keys per stream; a "
                f"KVR command holds 255 (split the prefill into steps of at most {255 + S} tokens)"
            )
        active = T == 1 and pos + 1 >= sysc.kv_min_context
        return {
            "sinks": S,
            "window": W,
            "page": P,
            "page_tile": rg.page_tile,
            "entries": rg.list_entries,
            "dim": rg.dim,
            "inserts": inserts,
            "queries": rg.queries if active else 0,
            "active": active,
            "win_tiles": window_tiles(pos, W, P) if active else [],
        }

    # ------------------------------------------------------------------ allocation + emit
    def _finish(self, plan: StepPlan, T: int, pos: int, quant_of: dict) -> Program:
        # quant ops write every activation-stream slice their value feeds
        for item in plan.items:
            if item[0] == "host":
                h = item[1]
                new_out = []
                for v in h.outputs:
                    if v in quant_of and "slices" in quant_of[v]:
                        new_out += quant_of[v]["slices"]
                    else:
                        new_out.append(v)
                h.outputs = new_out
        # an overlapped prefill: row-wise host ops in row chunks, pipelined with the TLMM (compiler.chunks)
        if self.acfg.system.overlap:
            rows = host_chunk_rows(self.acfg, T)
            if rows < T:
                plan.items = split_host_ops(plan.items, plan.tensors, T, rows)
                plan.items = pipeline_order(
                    self.acfg, plan.items, plan.tensors, lambda it: self._io(it, plan), host_cycles
                )
        # host constants are host-side tensors (not in the device image)
        host_consts = self.host_constants()
        tensors: dict[str, TensorInfo] = {}
        for name in host_consts:
            dtype, shape = self._host_const_info(name)
            tensors[name] = TensorInfo(
                name,
                -1,
                int(np.prod(shape)) * np.dtype(dtype).itemsize,
                dtype,
                shape,
                "rows",
                {"space": "host"},
            )
        tensors.update(
            {
                k: TensorInfo(v.name, v.addr, v.nbytes, v.dtype, list(v.shape), v.layout, dict(v.attrs))
                for k, v in self.persistent.items()
            }
        )
        # step buffers: first fit, freed after their last use
        uses: dict[str, int] = {}
        produced: dict[str, int] = {}
        for i, item in enumerate(plan.items):
            ins, outs = self._io(item, plan)
            for v in ins:
                uses[v] = i
            for v in outs:
                produced.setdefault(v, i)
        alloc = Allocator(self.step_base, self.limit)
        live: dict[str, tuple[int, int]] = {}
        tok = plan.tensors[self.input_name]
        tok.addr = alloc.alloc(self.beats(tok.nbytes), self.input_name)
        live[self.input_name] = (tok.addr, self.beats(tok.nbytes))
        # with overlap, a buffer last used by item i is reused only once a host item and an engine item after i
        # have been dispatched: by then (in-order issue, one engine command and one host op in flight) every
        # item up to i has finished, so reusing the buffer needs no SYNC
        overlap = self.acfg.system.overlap
        freed: list[tuple[int, tuple[int, int]]] = []
        last_host = last_engine = -1
        for i, item in enumerate(plan.items):
            settled = min(last_host, last_engine) if overlap else i
            while freed and freed[0][0] < settled:
                alloc.release(*freed.pop(0)[1])
            if item[0] == "host":
                last_host = i
            else:
                last_engine = i
            ins, outs = self._io(item, plan)
            for v in outs:
                ti = plan.tensors.get(v)
                if ti is None or v in tensors or ti.nbytes == 0 or v in live:
                    continue
                addr = alloc.alloc(self.beats(ti.nbytes), v)
                ti.addr = addr
                live[v] = (addr, self.beats(ti.nbytes))
            for v in sorted(set(ins)):
                if v in live and uses.get(v) == i:
                    freed.append((i, live.pop(v)))
        for _, region in freed:
            alloc.release(*region)
        for k, ti in plan.tensors.items():
            if k not in tensors:
                if ti.nbytes and ti.addr < 0:  # produced but never consumed (the output)
                    ti.addr = alloc.alloc(self.beats(ti.nbytes), k)
                tensors[k] = ti
        total = alloc.high
        # commands
        commands, host_ops, lines = [], [], []
        W = self.W
        for item in plan.items:
            kind, body = item
            if kind == "host":
                host_ops.append(body)
                commands.append(HostCommand(len(host_ops) - 1))
                rows = body.attrs.get("row_chunk")
                lines.append(
                    f"HOST  {body.name:<34} {body.kind:<16} "
                    + (f"rows {rows[0]}:{rows[1]} " if rows else "")
                    + f"({', '.join(body.inputs[:4])}"
                    f"{', …' if len(body.inputs) > 4 else ''}) → {', '.join(body.outputs[:3])}"
                    f"{', …' if len(body.outputs) > 3 else ''}   # {body.where}"
                )
            elif kind == "tlmm":
                cmd = TlmmCommand(
                    body["tokens"],
                    body["k_chunks"],
                    body["n_blocks"],
                    tensors[body["act"]].addr,
                    tensors[body["wgt"]].addr,
                    tensors[body["res"]].addr,
                    wbuf=body["wbuf"],
                )
                commands.append(cmd)
                wsrc = ("", " wbuf=fill", " wbuf=reuse")[cmd.wbuf]
                lines.append(
                    f"TLMM  {body['op']:<34} M={cmd.tokens} KC={cmd.k_chunks} NB={cmd.n_blocks}  "
                    f"act@{cmd.act_base:#x} wgt@{cmd.wgt_base:#x} res@{cmd.res_base:#x}{wsrc}   # {body['where']}"
                )
            elif kind == "kvr":
                cmd = KvrCommand(
                    table=body["table"],
                    inserts=body["inserts"],
                    queries=body["queries"],
                    win_tiles=body["win_tiles"],
                    win_tile=body["win_tile"],
                    vec_base=tensors[body["vec"]].addr,
                    list_base=tensors[body["list"]].addr,
                    tab_base=tensors[body["tab"]].addr if body["tab"] else 0,
                    page_tile=body["page_tile"],
                )
                commands.append(cmd)
                lines.append(
                    f"KVR   {body['op']:<34} table={cmd.table} inserts={cmd.inserts} queries={cmd.queries} "
                    f"win={cmd.win_tile}+{cmd.win_tiles}  vec@{cmd.vec_base:#x} list@{cmd.list_base:#x} "
                    f"tab@{cmd.tab_base:#x}   # {body['where']}"
                )
            else:
                s = gemm_shape(self.geo, body["m"], body["k"], body["n"])
                fields = (
                    s.m_tiles,
                    s.n_tiles,
                    s.k_tiles,
                    tensors[body["a"]].addr + body.get("a_offset", 0),
                    tensors[body["b"]].addr + body["b_offset"],
                    tensors[body["c"]].addr + body.get("c_offset", 0),
                )
                if kind == "gemm_list":
                    cmd = GemmListCommand(
                        *fields,
                        b_stride=body.get("b_stride", 0),
                        list_base=tensors[body["list"]].addr,
                        mode=body["mode"],
                    )
                else:
                    cmd = GemmCommand(*fields, b_stride=body.get("b_stride", 0))
                commands.append(cmd)
                lines.append(
                    ("GEMLS " if kind == "gemm_list" else "GEMM  ")
                    + f"{body['op']:<34} {body['m']}x{body['k']}x{body['n']} → MT={s.m_tiles} "
                    f"NT={s.n_tiles} KT={s.k_tiles}  A@{cmd.a_base:#x} B@{cmd.b_base:#x} C@{cmd.c_base:#x}"
                    + (f" B-stride={cmd.b_stride}" if cmd.b_stride else "")
                    + (f" list@{cmd.list_base:#x} mode={cmd.mode}" if kind == "gemm_list" else "")
                    + f"   # {body['where']}"
                )
        for h in host_ops:  # each host op's modeled latency: the cycle definition's host time
            # a new dict, never a write into one another op may share (an attention's prep, softmax and out
            # once shared one: all three carried attn_out's latency)
            h.attrs = {**h.attrs, "cycles": host_cycles(self.acfg, tensors, h)}
        if overlap:  # explicit dependencies: SYNC where a command conflicts with one that may still run
            syncs = insert_syncs(self.acfg, commands, host_ops, tensors)
            commands, index = with_syncs(commands, syncs)
            named = [""] * len(commands)
            for i, j in enumerate(index):
                named[j] = lines[i]
            for i, mask in syncs:
                op = lines[i].split()[1]
                named[index[i] - 1] = f"SYNC  {op:<34} wait {mask_names(mask)}"
            lines = named
        words = np.array([w for c in commands for w in c.words()], dtype=np.uint64)
        if self.meta:
            image = np.zeros((0, W), np.uint8)
        else:
            image = np.zeros((total, W), np.uint8)
            wi = self.weight_image()
            image[: wi.shape[0]] = wi
        header = [
            f"# Tritium Program: step of {T} token(s) at position {pos}; config {self.acfg.name}",
            f"# {len(commands)} commands ({sum(1 for c in commands if isinstance(c, TlmmCommand))} TLMM, "
            f"{sum(1 for c in commands if isinstance(c, GemmCommand))} GEMM, {len(host_ops)} HOST"
            + (f", {sum(1 for c in commands if isinstance(c, SyncCommand))} SYNC" if overlap else "")
            + "); "
            f"memory {total} beats × {W} B = {total * W / 2**20:.2f} MiB (weights + KV cache "
            f"{self.step_base} beats)",
        ]
        listing = "\n".join(header + [f"{i:5d}  {ln}" for i, ln in enumerate(lines)]) + "\n"
        meta = {
            "tokens": T,
            "pos": pos,
            "memory_beats": int(total),
            "persistent_beats": int(self.step_base),
            "weights_materialized": not self.meta,
            "model": self.mc,
            "lm_head": self.lm_head,
        }
        if self.general:
            meta["input"] = self.input_name
        derived = self._derived()
        host_data = (
            {}
            if self.meta
            else {
                n: derived[n].copy()
                if n in derived
                else self.state[n].detach().to("cpu", copy=True).float().numpy()
                for n in host_consts
            }
        )
        meta["output"] = self.g.output
        prog = Program(self.acfg.to_dict(), words, host_ops, tensors, image, meta, listing, host_data)
        if not self.meta:
            prog.validate()
        return prog

    def _io(self, item, plan) -> tuple[list[str], list[str]]:
        kind, body = item
        if kind == "host":
            ins = []
            for v in body.inputs:
                ti = plan.tensors.get(v)
                ins += ti.attrs["parts"] if ti is not None and "parts" in ti.attrs else [v]
            return ins, list(body.outputs)
        if kind == "tlmm":
            return [body["act"], body["wgt"]], [body["res"]]
        if kind == "kvr":
            return [body["vec"]], [body["list"]]
        if kind == "gemm_list":
            return [body["a"], body["b"], body["list"]], [body["c"]]
        return [body["a"], body["b"]], [body["c"]]
