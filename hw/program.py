"""The Program format (ARCHITECTURE.md contract 2): what the compiler emits and the model, the golden
reference and the RTL top level execute.

A Program is

- ``words``: the command stream (hw.isa, version 5): TLMM and GEMM commands for the engines, HOST commands
  that hand one host operation to the host CPU, SYNC commands (with ``system.overlap``) that state where a
  command must wait for other engine classes;
- ``host_ops``: the table HOST commands index (kind, input and output tensors, attributes — among them
  ``cycles``, the op's modeled latency in accelerator cycles (compiler.hostcost) —, where in the model the
  op comes from);
- ``tensors``: every buffer in memory (beat address, bytes, dtype, shape, layout);
- ``image``: the initial memory image, ``(beats, bus_bytes)`` uint8 (packed weights, constants, zeroed
  activation buffers);
- ``host_data``: host-side constants (embedding, norm weights, LM head, RoPE tables): the tensors whose
  ``attrs["space"]`` is ``"host"``; they live in the host's memory, not in the accelerator's address space
  (float32, or float16 for the LM head of ``meta["lm_head"] == "host_fp16"``);
- ``config``: the accelerator config it was compiled for (its fingerprint is checked on load).

On disk a Program is one folder written and replaced as a unit (``save``/``load``):

- ``program.json``: everything but the arrays, plus ``arrays`` (dtype and shape of every array),
  ``files`` (byte size and SHA-256 of the two other files) and ``content_hash``;
- ``program.npz``: ``words`` (uint64), ``image`` (uint8) and ``host:NAME`` (float32 or float16) as uncompressed ``.npy``
  members with fixed timestamps (the same Program always gives the same bytes); read member by member
  against ``arrays`` with pickles refused;
- ``listing.txt``: the human-readable listing.

``content_hash`` is ``"sha256:" + hex`` of a canonical serialization of the whole Program (:func:`content_hash`):
length-prefixed chunks (8-byte little-endian length, then the bytes) of the tag ``tritium-program-content/2``,
the JSON of ``program.json`` without ``content_hash`` and ``files`` (``sort_keys``, separators ``,``/``:``,
ASCII), then per array in name order its name, numpy dtype string (``<u8``), shape as JSON and C-order
little-endian bytes, and finally the listing's UTF-8 bytes. It covers every command word, tensor, host op,
metadata field and the config with its fingerprint, and does not depend on the zip container.

``save`` writes a fresh temporary folder beside the target, fsyncs it, and renames it into place (an existing
Program folder is first renamed aside and deleted afterwards), so a crash leaves the old Program or none at
the target, never a mix. ``load`` refuses, with a one-line :class:`ProgramError` naming file and field, any
folder whose files, types, sizes or hashes do not check out.

Memory layouts of tensors (byte offsets from ``addr · bus_bytes``):

- ``rows``: row-major, little-endian ``dtype`` (``float32``, ``int32``, ``int8``).
- ``tlmm_act``: the TLMM activation stream, beats in (kc, m) order, each G·T int8 (hw.ternary.tlmm_streams).
- ``tlmm_wgt``: the packed weight stream, beats in (kc, nb) order, each Q·T indices of ``index_bits`` bits
  packed LSB first (hw.ternary.pack_fields) into ``ceil(Q·T·index_bits/8)`` bytes.
- ``tlmm_res``: the result stream, beats in (nb, m) order, each Q little-endian int32.
- ``gemm_a``, ``gemm_b``, ``gemm_c``: the GEMM panels and output tiles of hw.gemm_layout.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import typing
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hw.config import AcceleratorConfig, LmHead, TlmmConfig, config_from_dict
from hw.isa import (
    ISA_VERSION,
    WBUF_FILL,
    WBUF_STREAM,
    GemmCommand,
    GemmListCommand,
    HostCommand,
    KvrCommand,
    TlmmCommand,
    decode_program,
)
from hw.kv_numerics import list_capacity

__all__ = [
    "PROGRAM_VERSION",
    "HOST_OP_KINDS",
    "DEQUANT_PREFIX",
    "DEQUANT_FUSABLE",
    "LM_HEAD_OPTIONS",
    "PROGRAM_FILES",
    "TensorInfo",
    "HostOp",
    "Program",
    "ProgramError",
    "content_hash",
    "tlmm_wgt_beat_bytes",
    "pack_tlmm_weights",
    "unpack_tlmm_weights",
]

PROGRAM_VERSION = 5
"""2: content hash, file manifest, folder saved as a unit; 3: ISA 4 (GEMM b_stride), grouped KV cache;
4: ISA 5 (SYNC; KVR and GEMM_LIST, run by the executor, not yet by the RTL top; TLMM wbuf: weight-buffer
fill/reuse, checked by Program.validate), every host op's modeled latency in ``attrs["cycles"]``;
5: host ops with the dequantization fused in, ``dequant+<kind>`` (``attrs["dequant"]``: which int32 TLMM
results the op reads dequantized; :data:`DEQUANT_PREFIX`) — a version-4 reader would read those int32
inputs as float32."""
LAYOUTS = ("rows", "tlmm_act", "tlmm_wgt", "tlmm_res", "gemm_a", "gemm_b", "gemm_c")
DTYPES = ("float32", "float16", "int32", "int8", "uint8")
HOST_DTYPES = {"float32": "<f4", "float16": "<f2"}  # host constants: tensor dtype → .npy dtype
LM_HEAD_OPTIONS: tuple[str, ...] = typing.get_args(LmHead)
"""Where and in which precision the LM head runs (``meta["lm_head"]``; definitions in models/lm_head.py)."""
HOST_OP_KINDS = (
    "embed",
    "rmsnorm",
    "rmsnorm+quant",
    "relu2",
    "swiglu",
    "relu2+quant",
    "swiglu+quant",
    "quant",
    "add",
    "dequant",
    "lm_head",
    "lm_head_quant",
    "lm_head_dequant",
    "attn_prep",
    "attn_softmax",
    "attn_out",
    # general modules (compiler.compile_model(module, acfg, example_inputs=...))
    "layernorm",
    "layernorm+quant",
    "relu",
    "relu+quant",
    "silu",
    "silu+quant",
    "gelu",
    "gelu+quant",
    "gelu_tanh",
    "gelu_tanh+quant",
    "square",
    "square+quant",
    "mul",
    "mul+quant",
    "int8_quant",
    "int8_dequant",
)
DEQUANT_PREFIX = "dequant+"
"""A host op ``dequant+<kind>`` (compiler.passes.fuse_dequant) is ``<kind>`` reading some of its inputs — int32
TLMM results (``parts`` tensors) — dequantized: ``attrs["dequant"]`` lists one entry per such input,
``{"input": tensor, "sx": per-token scales tensor, "scale": s_w | "scale_rows": host tensor, "bias"?: host
tensor}`` (the ``dequant`` op's input and attributes); the executor dequantizes them in memory
(models.hostops.dequant) and runs ``<kind>`` on the float32 values. ``input`` and ``sx`` are among the op's
inputs (the dequantized input in the position of the float value it replaces, ``sx`` after the kind's own)."""
DEQUANT_FUSABLE = tuple(
    k
    for k in HOST_OP_KINDS
    if k not in ("embed", "dequant", "lm_head_dequant", "attn_softmax", "attn_out", "int8_dequant")
)
"""Host-op kinds that read float32 activations, so a dequantization can be fused into them."""
HOST_OP_KINDS = HOST_OP_KINDS + tuple(DEQUANT_PREFIX + k for k in DEQUANT_FUSABLE)
PROGRAM_FILES = ("program.json", "program.npz", "listing.txt")
_HASH_TAG = b"tritium-program-content/2"
_MAX_JSON_BYTES = 1 << 30
_NPY_DTYPES = {"words": "<u8", "image": "|u1"}  # host:NAME arrays are <f4 or <f2 (HOST_DTYPES)
_DOC_FIELDS = (
    "format",
    "program_version",
    "isa_version",
    "config",
    "fingerprint",
    "meta",
    "host_ops",
    "tensors",
    "arrays",
    "files",
    "content_hash",
)


class ProgramError(ValueError):
    """A Program file is malformed or does not match the config; one line naming what is wrong."""


@dataclass
class TensorInfo:
    name: str
    addr: int  # beat address
    nbytes: int
    dtype: str
    shape: list[int]
    layout: str = "rows"
    attrs: dict = field(default_factory=dict)


@dataclass
class HostOp:
    name: str
    kind: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    where: str = ""  # module path / source line in the model


@dataclass
class Program:
    config: dict
    words: np.ndarray
    host_ops: list[HostOp]
    tensors: dict[str, TensorInfo]
    image: np.ndarray
    meta: dict = field(default_factory=dict)
    listing: str = ""
    host_data: dict = field(default_factory=dict)  # host-side constants (tensors with attrs space=host)

    @property
    def acfg(self) -> AcceleratorConfig:
        return config_from_dict(self.config, "<program>")

    def commands(self):
        return decode_program([int(w) for w in self.words])

    # ---- memory access by tensor ----
    def _bytes(self, image: np.ndarray, t: TensorInfo) -> np.ndarray:
        flat = image.reshape(-1)
        start = t.addr * image.shape[1]
        return flat[start : start + t.nbytes]

    def read(self, image: np.ndarray, name: str) -> np.ndarray:
        """A ``rows`` tensor's value (other layouts: its raw bytes)."""
        t = self.tensors[name]
        if t.attrs.get("space") == "host":
            return self.host_data[name]
        raw = self._bytes(image, t)
        if t.layout != "rows":
            return raw
        return raw.view(np.dtype(t.dtype).newbyteorder("<")).reshape(t.shape).copy()

    def write(self, image: np.ndarray, name: str, value: np.ndarray) -> None:
        t = self.tensors[name]
        data = (
            np.ascontiguousarray(value, dtype=np.dtype(t.dtype).newbyteorder("<")).reshape(-1).view(np.uint8)
        )
        if data.size > t.nbytes:
            raise ValueError(f"tensor {name}: {data.size} bytes written into a {t.nbytes}-byte buffer")
        self._bytes(image, t)[: data.size] = data

    # ---- files ----
    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of ``program.npz`` by member name: ``words``, ``image`` and ``host:NAME``."""
        out = {
            "words": np.ascontiguousarray(self.words, dtype="<u8"),
            "image": np.ascontiguousarray(self.image, dtype=np.uint8),
        }
        for k, v in self.host_data.items():
            out["host:" + k] = np.ascontiguousarray(v, dtype="<f2" if v.dtype == np.float16 else "<f4")
        return out

    def _body(self, arrays: dict[str, np.ndarray]) -> dict:
        body = {
            "format": "tritium-program",
            "program_version": PROGRAM_VERSION,
            "isa_version": ISA_VERSION,
            "config": self.config,
            "fingerprint": self.acfg.fingerprint(),
            "meta": self.meta,
            "host_ops": [asdict(h) for h in self.host_ops],
            "tensors": [asdict(t) for t in self.tensors.values()],
            "arrays": {k: {"dtype": a.dtype.str, "shape": list(a.shape)} for k, a in sorted(arrays.items())},
        }
        return json.loads(json.dumps(body))  # as load will see it (tuples → lists, keys → str)

    def digest(self) -> str:
        """The content hash ``save`` records for this Program (``"sha256:…"``; see the module docstring)."""
        arrays = self.arrays()
        return content_hash(self._body(arrays), arrays, self.listing.encode("utf-8"))

    def save(self, out_dir: str | Path) -> Path:
        """Write the Program folder as a unit: a fresh temporary folder beside ``out_dir`` (program.npz,
        listing.txt, then program.json with the file hashes and the content hash), fsynced, then renamed
        into place. An existing Program folder at ``out_dir`` is renamed aside first and deleted after, so
        a crash leaves the old Program or nothing there, never a mix; an empty folder is replaced; any
        other existing path is refused (ProgramError)."""
        out = Path(out_dir).absolute()
        self.validate(str(out))
        arrays = self.arrays()
        body = self._body(arrays)
        listing = self.listing.encode("utf-8")
        chash = content_hash(body, arrays, listing)
        out.parent.mkdir(parents=True, exist_ok=True)
        _check_replaceable(out)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            _write_npz(tmp / "program.npz", arrays)
            _write_bytes(tmp / "listing.txt", listing)
            files = {
                n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256_file(tmp / n)}
                for n in ("program.npz", "listing.txt")
            }
            doc = {**body, "files": files, "content_hash": chash}
            _write_bytes(tmp / "program.json", json.dumps(doc, indent=1).encode("utf-8"))
            _fsync_dir(tmp)
            _install(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, path: str | Path) -> Program:
        """Read and verify a Program folder; every defect raises a one-line :class:`ProgramError`."""
        d = Path(path)
        try:
            return cls._load(d)
        except ProgramError:
            raise
        except MemoryError:
            raise ProgramError(
                f"{d}: declared sizes too large to load (damaged Program; recompile it)"
            ) from None
        except Exception as e:  # noqa: BLE001 — any other failure of a damaged folder is still a ProgramError
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ProgramError(
                f"{d}: unreadable Program ({type(e).__name__}: {first}); recompile it"
            ) from None

    @classmethod
    def _load(cls, d: Path) -> Program:
        src = d / "program.json"
        if not d.is_dir():
            hint = _interrupted_hint(d)
            raise ProgramError(f"{d}: {'not a folder' if d.exists() else 'not found'}{hint}")
        names = sorted(os.listdir(d))
        for n in names:
            if n not in PROGRAM_FILES:
                raise ProgramError(
                    f"{d}: unexpected file {n!r} (a Program folder holds only "
                    f"{', '.join(PROGRAM_FILES)}; recompile into a fresh folder)"
                )
        for n in PROGRAM_FILES:
            if n not in names:
                raise ProgramError(f"{d}: missing {n} (incomplete or damaged Program; recompile it)")
            if not (d / n).is_file():
                raise ProgramError(f"{d / n}: not a regular file")
        size = src.stat().st_size
        if size > _MAX_JSON_BYTES:
            raise ProgramError(
                f"{src}: {size} bytes, larger than any Program description ({_MAX_JSON_BYTES})"
            )
        try:
            doc = json.loads(src.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise ProgramError(f"{src}: not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise ProgramError(f"{src}: not valid JSON ({e.msg}, line {e.lineno})") from None
        except RecursionError:
            raise ProgramError(f"{src}: JSON nested too deeply") from None
        _check_doc(doc, str(src))
        try:
            acfg = config_from_dict(doc["config"], f"{src}: config")
        except ValueError as e:
            raise ProgramError(str(e).splitlines()[0]) from None
        if acfg.fingerprint() != doc["fingerprint"]:
            raise ProgramError(f"{src}: config fingerprint mismatch (file edited?); recompile the Program")
        for n, entry in doc["files"].items():
            p = d / n
            if p.stat().st_size != entry["bytes"]:
                raise ProgramError(
                    f"{p}: {p.stat().st_size} bytes, but program.json files.{n}.bytes is "
                    f"{entry['bytes']} (truncated or replaced file; recompile)"
                )
            if _sha256_file(p) != entry["sha256"]:
                raise ProgramError(
                    f"{p}: SHA-256 differs from program.json files.{n}.sha256 (damaged file; recompile)"
                )
        arrays = _read_npz(d / "program.npz", doc["arrays"])
        listing = (d / "listing.txt").read_bytes()
        body = {k: v for k, v in doc.items() if k not in ("files", "content_hash")}
        if content_hash(body, arrays, listing) != doc["content_hash"]:
            raise ProgramError(
                f"{src}: content_hash does not match the Program (edited or damaged after save; recompile)"
            )
        try:
            text = listing.decode("utf-8")
        except UnicodeDecodeError:
            raise ProgramError(f"{d / 'listing.txt'}: not UTF-8 text") from None
        prog = cls(
            config=doc["config"],
            words=arrays["words"],
            image=arrays["image"],
            host_data={k[5:]: v for k, v in arrays.items() if k.startswith("host:")},
            host_ops=[HostOp(**h) for h in doc["host_ops"]],
            tensors={t["name"]: TensorInfo(**t) for t in doc["tensors"]},
            meta=doc["meta"],
            listing=text,
        )
        prog.validate(str(src))
        return prog

    def validate(self, source: str = "<program>") -> None:
        """Check the Program's consistency (types, shapes, tensor and command ranges); ProgramError if not."""
        try:
            acfg = self.acfg
        except ValueError as e:
            raise ProgramError(f"{source}: config: {e}") from None
        _check_meta(self.meta, source)
        w = acfg.memory.bus_bytes
        if not isinstance(self.words, np.ndarray) or self.words.ndim != 1 or self.words.dtype != np.uint64:
            raise ProgramError(f"{source}: words must be a 1-D uint64 array")
        if (
            not isinstance(self.image, np.ndarray)
            or self.image.ndim != 2
            or self.image.shape[1] != w
            or self.image.dtype != np.uint8
        ):
            raise ProgramError(
                f"{source}: image must be (beats, {w}) uint8, got "
                f"{getattr(self.image, 'shape', '?')} {getattr(self.image, 'dtype', '?')}"
            )
        materialized = self.meta["weights_materialized"]
        if materialized and self.image.shape[0] != self.meta["memory_beats"]:
            raise ProgramError(
                f"{source}: image has {self.image.shape[0]} beats, meta.memory_beats is "
                f"{self.meta['memory_beats']}"
            )
        for key, t in self.tensors.items():
            if key != t.name:
                raise ProgramError(f"{source}: tensor {key!r} is named {t.name!r}")
            if t.layout not in LAYOUTS or t.dtype not in DTYPES:
                raise ProgramError(
                    f"{source}: tensor {t.name}: unknown layout {t.layout!r} or dtype {t.dtype!r}"
                )
            if any(not _is_int(s) or s < 0 for s in t.shape) or not _is_int(t.nbytes) or t.nbytes < 0:
                raise ProgramError(f"{source}: tensor {t.name}: bad shape {t.shape} or nbytes {t.nbytes}")
            if t.layout == "rows" and t.nbytes and math.prod(t.shape) * np.dtype(t.dtype).itemsize > t.nbytes:
                raise ProgramError(
                    f"{source}: tensor {t.name}: shape {t.shape} {t.dtype} needs more than its "
                    f"{t.nbytes} bytes"
                )
            if t.attrs.get("space") == "host":
                if materialized:
                    v = self.host_data.get(t.name)
                    if v is None:
                        raise ProgramError(f"{source}: host tensor {t.name}: no data")
                    if (
                        t.dtype not in HOST_DTYPES
                        or v.dtype != np.dtype(t.dtype)
                        or list(v.shape) != list(t.shape)
                    ):
                        raise ProgramError(
                            f"{source}: host tensor {t.name}: data is {v.dtype} {list(v.shape)}, "
                            f"the tensor table says {t.dtype} {t.shape}"
                        )
                continue
            if t.nbytes == 0 and "parts" in t.attrs:
                parts = t.attrs["parts"]
                if not isinstance(parts, list) or any(p not in self.tensors for p in parts):
                    raise ProgramError(
                        f"{source}: tensor {t.name}: parts must name tensors, got {parts!r:.60}"
                    )
                if math.prod(t.shape) * np.dtype(t.dtype).itemsize > sum(
                    self.tensors[p].nbytes for p in parts
                ):
                    raise ProgramError(f"{source}: tensor {t.name}: shape {t.shape} larger than its parts")
                continue
            if t.addr < 0 or (materialized and (t.addr * w + t.nbytes) > self.image.size):
                raise ProgramError(f"{source}: tensor {t.name}: outside the {self.image.shape[0]}-beat image")
        for k in self.host_data:
            if k not in self.tensors or self.tensors[k].attrs.get("space") != "host":
                raise ProgramError(f"{source}: host data {k!r} has no host tensor")
        for name in (self.meta.get("input", "tokens"), self.meta["output"]):
            if name not in self.tensors:
                raise ProgramError(
                    f"{source}: no tensor {name!r} (the step's input (meta.input, default tokens) / meta.output)"
                )
        try:
            cmds = self.commands()
        except ValueError as e:
            raise ProgramError(f"{source}: command stream: {e}") from None
        names = set(self.tensors)
        for h in self.host_ops:
            if h.kind not in HOST_OP_KINDS:
                raise ProgramError(f"{source}: host op {h.name}: unknown kind {h.kind!r}")
            for n in h.inputs + h.outputs:
                if n not in names:
                    raise ProgramError(f"{source}: host op {h.name}: unknown tensor {n!r}")
            _check_dequant(h, self.tensors, source, materialized)
            cyc = h.attrs.get("cycles")
            if not _is_int(cyc) or cyc < 1:
                raise ProgramError(
                    f"{source}: host op {h.name}: attrs.cycles (its modeled latency) must be an integer >= 1, "
                    f"got {_show(cyc)}"
                )
        n_ops = len(self.host_ops)
        t = acfg.tlmm
        filled = None  # (wgt_base, KC, NB) the weight buffer holds: the last fill before this command
        for i, c in enumerate(cmds):
            beats = self.meta.get("memory_beats", self.image.shape[0])  # also for meta-compiled Programs
            if isinstance(c, KvrCommand):  # the list block and the key/query rows
                w = acfg.memory.bus_bytes
                cap = list_capacity(acfg.kv)
                spans = {
                    "vec_base": (c.inserts + c.queries) * -(-acfg.kv.dim // w),
                    "list_base": -(-4 * (4 + cap + c.inserts) // w),
                }
                for f, n in spans.items():
                    if getattr(c, f) + n > beats:
                        raise ProgramError(
                            f"{source}: KVR command {i}: {f} block outside the {beats}-beat image"
                        )
            if isinstance(c, GemmListCommand):
                if c.list_base + 1 > beats:
                    raise ProgramError(
                        f"{source}: GEMM_LIST command {i}: list_base outside the {beats}-beat image"
                    )
                continue  # its B tiles come from the list: checked when it runs (sim.gemm_model)
            if isinstance(c, HostCommand) and c.op >= n_ops:
                raise ProgramError(f"{source}: HOST command refers to op {c.op}; the table has {n_ops}")
            if isinstance(c, TlmmCommand):
                if c.tokens > t.tokens or c.k_chunks * t.chunk_k > _round_up(t.max_k, t.chunk_k):
                    raise ProgramError(
                        f"{source}: TLMM command {i}: M={c.tokens}, KC={c.k_chunks} beyond the "
                        f"engine (tlmm.tokens {t.tokens}, tlmm.max_k {t.max_k})"
                    )
                filled = _check_wbuf(c, i, filled, t, source)
                if materialized:
                    spans = {
                        "act_base": c.k_chunks * c.tokens * t.chunk_k,
                        "wgt_base": c.k_chunks * c.n_blocks * tlmm_wgt_beat_bytes(t),
                        "res_base": c.n_blocks * c.tokens * t.columns * 4,
                    }
                    for f, n in spans.items():
                        if getattr(c, f) * w + n > self.image.size:
                            raise ProgramError(
                                f"{source}: TLMM command {i}: {f} stream outside the "
                                f"{self.image.shape[0]}-beat image"
                            )
            if isinstance(c, GemmCommand) and materialized:  # the numba GEMM model does not bounds-check
                geo = acfg.gemm_geometry
                spans = {
                    "a_base": c.m_tiles * c.k_tiles * geo.a_beats,
                    "b_base": c.b_span(geo.b_beats),
                    "c_base": c.m_tiles * c.n_tiles * geo.out_beats(bool(c.requant)),
                }
                for f, n in spans.items():
                    if getattr(c, f) + n > self.image.shape[0]:
                        raise ProgramError(
                            f"{source}: GEMM command {i}: {f} panels outside the "
                            f"{self.image.shape[0]}-beat image"
                        )


def _check_wbuf(c: TlmmCommand, i: int, filled, t: TlmmConfig, source: str):
    """The weight-buffer hazards of TLMM command ``i`` (hw.isa ``wbuf``): a fill or reuse needs a buffer of
    at least KC·NB beats; a reuse must read what the last fill before it in this Program wrote (same weight
    run: wgt_base, KC, NB), since the buffer's content at a Program's start is unknown. Returns what the
    buffer holds after the command."""
    if c.wbuf == WBUF_STREAM:
        return filled
    run = (c.wgt_base, c.k_chunks, c.n_blocks)
    if c.k_chunks * c.n_blocks > t.weight_buffer_beats:
        raise ProgramError(
            f"{source}: TLMM command {i}: wbuf={c.wbuf} with KC·NB = {c.k_chunks * c.n_blocks} weight beats; "
            f"tlmm.weight_buffer_beats is {t.weight_buffer_beats}"
        )
    if c.wbuf == WBUF_FILL:
        return run
    if filled != run:
        held = "nothing" if filled is None else f"wgt@{filled[0]:#x} KC={filled[1]} NB={filled[2]}"
        raise ProgramError(
            f"{source}: TLMM command {i}: reuses weights wgt@{c.wgt_base:#x} KC={c.k_chunks} NB={c.n_blocks} "
            f"but the weight buffer holds {held} (the last fill before it)"
        )
    return filled


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


# ---------------------------------------------------------------- hashing and files
def content_hash(body: dict, arrays: dict[str, np.ndarray], listing: bytes) -> str:
    """``"sha256:" + hex`` of the canonical serialization of a Program (module docstring): ``body`` is
    program.json without ``files`` and ``content_hash``, ``arrays`` the program.npz members, ``listing``
    the listing's bytes."""
    h = hashlib.sha256()

    def chunk(b: bytes | memoryview, n: int | None = None) -> None:
        h.update((len(b) if n is None else n).to_bytes(8, "little"))
        h.update(b)

    chunk(_HASH_TAG)
    chunk(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii"))
    for name in sorted(arrays):
        a = arrays[name]
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype)
        chunk(name.encode("utf-8"))
        chunk(a.dtype.str.encode("ascii"))
        chunk(json.dumps(list(a.shape)).encode("ascii"))
        chunk(memoryview(a).cast("B") if a.size else b"", a.nbytes)
    chunk(listing)
    return "sha256:" + h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed .npy members with fixed timestamps, so equal Programs give equal bytes."""
    with open(path, "wb") as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as m:
                    np.lib.format.write_array(m, arrays[name], allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_replaceable(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ProgramError(f"{out}: exists and is not a folder; choose another output folder")
    if out.is_dir():
        legacy = {".program.json.tmp", ".program.npz.tmp", ".listing.txt.tmp"}
        extra = sorted(n for n in os.listdir(out) if n not in PROGRAM_FILES and n not in legacy)
        if extra:
            raise ProgramError(
                f"{out}: not empty and not a Program folder (holds {extra[0]!r}); refusing to "
                f"replace it, choose another output folder"
            )


def _install(tmp: Path, out: Path) -> None:
    """Rename the complete folder ``tmp`` to ``out``; an existing ``out`` goes aside first, is deleted after."""
    aside = None
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists():
        aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        if aside is not None and not out.exists():
            try:  # put the old Program back if we still can
                os.replace(aside, out)
            except OSError:
                pass
        raise
    _fsync_dir(out.parent)
    for stale in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _interrupted_hint(d: Path) -> str:
    left = sorted(d.parent.glob(f".{d.name}.old-*")) if d.parent.is_dir() else []
    return f" (an interrupted save left the previous Program in {left[0]})" if left else ""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v: object) -> str:
    try:
        s = json.dumps(v)
    except (TypeError, ValueError):
        s = repr(v)
    return f"{s[:40] + '…' if len(s) > 40 else s} ({type(v).__name__})"


def _need(ok: bool, source: str, where: str, what: str, value: object) -> None:
    if not ok:
        raise ProgramError(f"{source}: {where}: expected {what}, got {_show(value)}")


def _fields(obj: object, keys: tuple[str, ...], source: str, where: str, exact: bool = True) -> None:
    _need(isinstance(obj, dict), source, where, "an object", obj)
    for k in keys:
        if k not in obj:
            raise ProgramError(f"{source}: {where}: missing field {k!r}")
    if exact:
        for k in obj:
            if k not in keys:
                raise ProgramError(f"{source}: {where}: unexpected field {k!r}")


def _str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _shape(v: object) -> bool:
    return isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)


def _check_dequant(h: HostOp, tensors: dict, source: str, materialized: bool = True) -> None:
    """A ``dequant+<kind>`` host op's ``attrs["dequant"]`` (:data:`DEQUANT_PREFIX`); any other op has none.
    A Program compiled on meta tensors has no weights, hence no weight scales: its entries may lack both
    ``scale`` and ``scale_rows``."""
    entries = h.attrs.get("dequant")
    at = f"{source}: host op {h.name}"
    if not h.kind.startswith(DEQUANT_PREFIX):
        if entries is not None:
            raise ProgramError(f"{at}: attrs.dequant on a {h.kind} op (only dequant+<kind> ops have it)")
        return
    if not isinstance(entries, list) or not entries:
        raise ProgramError(f"{at}: attrs.dequant must be a non-empty list, got {_show(entries)}")
    seen = set()
    for e in entries:
        ok = (
            isinstance(e, dict)
            and set(e) >= {"input", "sx"}
            and set(e) <= {"input", "sx", "scale", "scale_rows", "bias"}
        )
        n_scales = ("scale" in e) + ("scale_rows" in e) if isinstance(e, dict) else 0
        ok = ok and (n_scales == 1 or (n_scales == 0 and not materialized))
        if not ok:
            raise ProgramError(
                f"{at}: attrs.dequant entry {_show(e)}: expected input, sx, scale or scale_rows, optional bias"
            )
        x, sx = e["input"], e["sx"]
        if x in seen or x not in h.inputs or tensors[x].dtype != "int32":
            raise ProgramError(f"{at}: attrs.dequant input {_show(x)} is not one of its int32 inputs (once)")
        seen.add(x)
        if sx not in h.inputs or tensors[sx].dtype != "float32":
            raise ProgramError(f"{at}: attrs.dequant sx {_show(sx)} is not one of its float32 inputs")
        if "scale" in e and not (
            isinstance(e["scale"], float) and math.isfinite(e["scale"]) and e["scale"] > 0
        ):
            raise ProgramError(
                f"{at}: attrs.dequant scale must be a positive number, got {_show(e['scale'])}"
            )
        for k in ("scale_rows", "bias"):
            if k in e and (e[k] not in tensors or tensors[e[k]].attrs.get("space") != "host"):
                raise ProgramError(f"{at}: attrs.dequant {k} {_show(e[k])} is not a host tensor")


def _check_meta(meta: object, source: str) -> None:
    _fields(
        meta,
        ("tokens", "pos", "memory_beats", "persistent_beats", "weights_materialized", "output", "model"),
        source,
        "meta",
        exact=False,
    )
    for k, lo in (("tokens", 1), ("pos", 0), ("memory_beats", 0), ("persistent_beats", 0)):
        _need(_is_int(meta[k]) and meta[k] >= lo, source, f"meta.{k}", f"an integer >= {lo}", meta[k])
    _need(
        isinstance(meta["weights_materialized"], bool),
        source,
        "meta.weights_materialized",
        "true or false",
        meta["weights_materialized"],
    )
    _need(isinstance(meta["output"], str), source, "meta.output", "a tensor name", meta["output"])
    _need(isinstance(meta["model"], dict), source, "meta.model", "an object", meta["model"])
    if "input" in meta:  # general modules: the float input tensor (absent: the LM's token ids, "tokens")
        _need(isinstance(meta["input"], str), source, "meta.input", "a tensor name", meta["input"])
    if "lm_head" in meta:  # absent in Programs from before the option: host_fp32
        _need(
            meta["lm_head"] in LM_HEAD_OPTIONS,
            source,
            "meta.lm_head",
            " or ".join(LM_HEAD_OPTIONS),
            meta["lm_head"],
        )


def _check_doc(doc: object, src: str) -> None:
    """Types of every field of program.json (before any of it is used)."""
    _need(isinstance(doc, dict), src, "top level", "an object", doc)
    if doc.get("format") != "tritium-program":
        raise ProgramError(f"{src}: not a Tritium Program (format {_show(doc.get('format'))})")
    if doc.get("program_version") != PROGRAM_VERSION or doc.get("isa_version") != ISA_VERSION:
        raise ProgramError(
            f"{src}: program_version {doc.get('program_version')!r} / isa_version "
            f"{doc.get('isa_version')!r}; "
            f"this build reads {PROGRAM_VERSION} / {ISA_VERSION} (recompile the Program)"
        )
    _fields(doc, _DOC_FIELDS, src, "program.json")
    _need(isinstance(doc["config"], dict), src, "config", "an object", doc["config"])
    _need(isinstance(doc["fingerprint"], str), src, "fingerprint", "a string", doc["fingerprint"])
    ch = doc["content_hash"]
    _need(
        isinstance(ch, str)
        and len(ch) == 71
        and ch.startswith("sha256:")
        and all(c in "0123456789abcdef" for c in ch[7:]),
        src,
        "content_hash",
        "'sha256:' + 64 hex digits",
        ch,
    )
    _check_meta(doc["meta"], src)
    _need(isinstance(doc["host_ops"], list), src, "host_ops", "a list", doc["host_ops"])
    for i, h in enumerate(doc["host_ops"]):
        at = f"host_ops[{i}]"
        _fields(h, ("name", "kind", "inputs", "outputs", "attrs", "where"), src, at)
        for k in ("name", "where"):
            _need(isinstance(h[k], str), src, f"{at}.{k}", "a string", h[k])
        _need(
            h["kind"] in HOST_OP_KINDS,
            src,
            f"{at}.kind",
            "a host-op kind of hw.program.HOST_OP_KINDS",
            h["kind"],
        )
        for k in ("inputs", "outputs"):
            _need(_str_list(h[k]), src, f"{at}.{k}", "a list of tensor names", h[k])
        _need(isinstance(h["attrs"], dict), src, f"{at}.attrs", "an object", h["attrs"])
    _need(isinstance(doc["tensors"], list), src, "tensors", "a list", doc["tensors"])
    seen = set()
    for i, t in enumerate(doc["tensors"]):
        at = f"tensors[{i}]"
        _fields(t, ("name", "addr", "nbytes", "dtype", "shape", "layout", "attrs"), src, at)
        _need(
            isinstance(t["name"], str) and t["name"] not in seen,
            src,
            f"{at}.name",
            "a new tensor name",
            t["name"],
        )
        seen.add(t["name"])
        _need(
            _is_int(t["addr"]) and t["addr"] >= -1, src, f"{at}.addr", "a beat address (-1: none)", t["addr"]
        )
        _need(_is_int(t["nbytes"]) and t["nbytes"] >= 0, src, f"{at}.nbytes", "an integer >= 0", t["nbytes"])
        _need(t["dtype"] in DTYPES, src, f"{at}.dtype", f"one of {', '.join(DTYPES)}", t["dtype"])
        _need(_shape(t["shape"]), src, f"{at}.shape", "a list of integers >= 0", t["shape"])
        _need(t["layout"] in LAYOUTS, src, f"{at}.layout", f"one of {', '.join(LAYOUTS)}", t["layout"])
        _need(isinstance(t["attrs"], dict), src, f"{at}.attrs", "an object", t["attrs"])
    files = doc["files"]
    _fields(files, ("program.npz", "listing.txt"), src, "files")
    for n, e in files.items():
        _fields(e, ("bytes", "sha256"), src, f"files.{n}")
        _need(_is_int(e["bytes"]) and e["bytes"] >= 0, src, f"files.{n}.bytes", "an integer >= 0", e["bytes"])
        _need(
            isinstance(e["sha256"], str)
            and len(e["sha256"]) == 64
            and all(c in "0123456789abcdef" for c in e["sha256"]),
            src,
            f"files.{n}.sha256",
            "64 hex digits",
            e["sha256"],
        )
    arrays = doc["arrays"]
    _fields(arrays, ("words", "image"), src, "arrays", exact=False)
    declared = 0
    for k, spec in arrays.items():
        at = f"arrays.{k}"
        _need(k in _NPY_DTYPES or k.startswith("host:"), src, at, "words, image or host:NAME", k)
        _fields(spec, ("dtype", "shape"), src, at)
        want = _NPY_DTYPES.get(k, spec["dtype"] if spec["dtype"] in HOST_DTYPES.values() else "<f4")
        _need(spec["dtype"] == want, src, f"{at}.dtype", repr(want), spec["dtype"])
        _need(_shape(spec["shape"]), src, f"{at}.shape", "a list of integers >= 0", spec["shape"])
        ndim = {"words": 1, "image": 2}.get(k)
        _need(
            ndim is None or len(spec["shape"]) == ndim,
            src,
            f"{at}.shape",
            f"{ndim} dimension(s)",
            spec["shape"],
        )
        declared += math.prod(spec["shape"]) * np.dtype(want).itemsize
    if declared > files["program.npz"]["bytes"]:
        raise ProgramError(
            f"{src}: arrays declare {declared} bytes but files.program.npz.bytes is "
            f"{files['program.npz']['bytes']} (damaged Program; recompile)"
        )


def _read_npz(path: Path, manifest: dict) -> dict[str, np.ndarray]:
    """The members of program.npz, each checked against ``arrays`` of program.json before its data is read."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else None
            if key not in manifest or key in out:
                raise ProgramError(
                    f"{path}: unexpected member {info.filename!r} (not in program.json arrays)"
                )
            if info.compress_type != zipfile.ZIP_STORED:
                raise ProgramError(
                    f"{path}: member {info.filename!r} is compressed; Programs store arrays as is"
                )
            spec = manifest[key]
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            nbytes = math.prod(shape) * dtype.itemsize
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    hshape, fortran, hdtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    hshape, fortran, hdtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ProgramError(f"{path}: {key}: .npy format {version} (expected 1.0 or 2.0)")
                if hdtype.hasobject or hdtype != dtype or tuple(hshape) != shape or fortran:
                    raise ProgramError(
                        f"{path}: {key}: stored as {hdtype.str} {list(hshape)}"
                        f"{' (Fortran order)' if fortran else ''}, program.json arrays.{key} says "
                        f"{dtype.str} {list(shape)}"
                    )
                if info.file_size != f.tell() + nbytes:
                    raise ProgramError(
                        f"{path}: {key}: member holds {info.file_size - f.tell()} data bytes, its "
                        f"header declares {nbytes}"
                    )
                data = f.read(nbytes)
            if len(data) != nbytes:
                raise ProgramError(f"{path}: {key}: truncated ({len(data)} of {nbytes} bytes)")
            out[key] = np.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
    for key in manifest:
        if key not in out:
            raise ProgramError(f"{path}: missing array {key!r} (listed in program.json arrays)")
    return out


def tlmm_wgt_beat_bytes(cfg: TlmmConfig) -> int:
    return -(-cfg.columns * cfg.tables * cfg.index_bits // 8)


def pack_tlmm_weights(wgt: np.ndarray, cfg: TlmmConfig) -> np.ndarray:
    """Weight stream (KC, NB, Q, T) of indices → bytes (KC·NB beats of tlmm_wgt_beat_bytes, LSB first)."""
    kc, nb, q, t = wgt.shape
    ib = cfg.index_bits
    flat = wgt.reshape(kc * nb, q * t).astype(np.uint64)
    bits = ((flat[:, :, None] >> np.arange(ib, dtype=np.uint64)) & 1).astype(np.uint8).reshape(kc * nb, -1)
    nbytes = tlmm_wgt_beat_bytes(cfg)
    padded = np.zeros((kc * nb, nbytes * 8), np.uint8)
    padded[:, : bits.shape[1]] = bits
    return np.packbits(padded, axis=1, bitorder="little").reshape(-1)


def unpack_tlmm_weights(data: np.ndarray, cfg: TlmmConfig, kc: int, nb: int) -> np.ndarray:
    """Inverse of :func:`pack_tlmm_weights`: bytes → (KC, NB, Q, T) indices (uint8)."""
    q, t, ib = cfg.columns, cfg.tables, cfg.index_bits
    nbytes = tlmm_wgt_beat_bytes(cfg)
    bits = np.unpackbits(
        np.asarray(data[: kc * nb * nbytes], np.uint8).reshape(kc * nb, nbytes), axis=1, bitorder="little"
    )[:, : q * t * ib].reshape(kc * nb, q * t, ib)
    vals = (bits.astype(np.uint16) << np.arange(ib, dtype=np.uint16)).sum(axis=2)
    return vals.reshape(kc, nb, q, t).astype(np.uint8)
