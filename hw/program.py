"""The Program format (ARCHITECTURE.md contract 2): what the compiler emits and the model, the golden
reference and the RTL top level execute.

A Program is

- ``words``: the command stream (hw.isa, version 3): TLMM and GEMM commands for the engines, HOST commands
  that hand one host operation to the host CPU;
- ``host_ops``: the table HOST commands index (kind, input and output tensors, attributes, where in the
  model the op comes from);
- ``tensors``: every buffer in memory (beat address, bytes, dtype, shape, layout);
- ``image``: the initial memory image, ``(beats, bus_bytes)`` uint8 (packed weights, constants, zeroed
  activation buffers);
- ``host_data``: host-side constants (embedding, norm weights, LM head, RoPE tables): the tensors whose
  ``attrs["space"]`` is ``"host"``; they live in the host's memory, not in the accelerator's address space;
- ``config``: the accelerator config it was compiled for (its fingerprint is checked on load).

On disk (``save``/``load``): ``program.json`` (all but the arrays), ``program.npz`` (``words`` uint64,
``image`` uint8; loaded with ``allow_pickle=False``) and ``listing.txt`` (human-readable).

Memory layouts of tensors (byte offsets from ``addr · bus_bytes``):

- ``rows``: row-major, little-endian ``dtype`` (``float32``, ``int32``, ``int8``).
- ``tlmm_act``: the TLMM activation stream, beats in (kc, m) order, each G·T int8 (hw.ternary.tlmm_streams).
- ``tlmm_wgt``: the packed weight stream, beats in (kc, nb) order, each Q·T indices of ``index_bits`` bits
  packed LSB first (hw.ternary.pack_fields) into ``ceil(Q·T·index_bits/8)`` bytes.
- ``tlmm_res``: the result stream, beats in (nb, m) order, each Q little-endian int32.
- ``gemm_a``, ``gemm_b``, ``gemm_c``: the GEMM panels and output tiles of hw.gemm_layout.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hw.config import AcceleratorConfig, TlmmConfig, config_from_dict
from hw.isa import ISA_VERSION, decode_program

__all__ = ["PROGRAM_VERSION", "TensorInfo", "HostOp", "Program", "ProgramError", "tlmm_wgt_beat_bytes",
           "pack_tlmm_weights", "unpack_tlmm_weights"]

PROGRAM_VERSION = 1
LAYOUTS = ("rows", "tlmm_act", "tlmm_wgt", "tlmm_res", "gemm_a", "gemm_b", "gemm_c")
DTYPES = ("float32", "int32", "int8", "uint8")


class ProgramError(ValueError):
    """A Program file is malformed or does not match the config; one line naming what is wrong."""


@dataclass
class TensorInfo:
    name: str
    addr: int                   # beat address
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
    where: str = ""             # module path / source line in the model


@dataclass
class Program:
    config: dict
    words: np.ndarray
    host_ops: list[HostOp]
    tensors: dict[str, TensorInfo]
    image: np.ndarray
    meta: dict = field(default_factory=dict)
    listing: str = ""
    host_data: dict = field(default_factory=dict)     # host-side constants (tensors with attrs space=host)

    @property
    def acfg(self) -> AcceleratorConfig:
        return config_from_dict(self.config, "<program>")

    def commands(self):
        return decode_program([int(w) for w in self.words])

    # ---- memory access by tensor ----
    def _bytes(self, image: np.ndarray, t: TensorInfo) -> np.ndarray:
        flat = image.reshape(-1)
        start = t.addr * image.shape[1]
        return flat[start: start + t.nbytes]

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
        data = np.ascontiguousarray(value, dtype=np.dtype(t.dtype).newbyteorder("<")).reshape(-1).view(np.uint8)
        if data.size > t.nbytes:
            raise ValueError(f"tensor {name}: {data.size} bytes written into a {t.nbytes}-byte buffer")
        self._bytes(image, t)[: data.size] = data

    # ---- files ----
    def save(self, out_dir: str | Path) -> Path:
        """Write program.json, program.npz and listing.txt; files appear only when complete."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        doc = {"format": "tritium-program", "program_version": PROGRAM_VERSION, "isa_version": ISA_VERSION,
               "config": self.config, "fingerprint": self.acfg.fingerprint(), "meta": self.meta,
               "host_ops": [asdict(h) for h in self.host_ops],
               "tensors": [asdict(t) for t in self.tensors.values()]}
        tmp_json, tmp_npz, tmp_lst = out / ".program.json.tmp", out / ".program.npz.tmp", out / ".listing.txt.tmp"
        tmp_json.write_text(json.dumps(doc, indent=1))
        with open(tmp_npz, "wb") as f:
            np.savez(f, words=self.words.astype(np.uint64), image=self.image,
                     **{f"host:{k}": np.asarray(v) for k, v in self.host_data.items()})
        tmp_lst.write_text(self.listing)
        tmp_npz.replace(out / "program.npz")
        tmp_lst.replace(out / "listing.txt")
        tmp_json.replace(out / "program.json")          # last: its presence marks a complete Program
        return out

    @classmethod
    def load(cls, path: str | Path) -> Program:
        d = Path(path)
        src = d / "program.json"
        try:
            doc = json.loads(src.read_text())
        except FileNotFoundError:
            raise ProgramError(f"{src}: file not found") from None
        except json.JSONDecodeError as e:
            raise ProgramError(f"{src}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(doc, dict) or doc.get("format") != "tritium-program":
            raise ProgramError(f"{src}: not a Tritium Program")
        if doc.get("program_version") != PROGRAM_VERSION or doc.get("isa_version") != ISA_VERSION:
            raise ProgramError(f"{src}: program version {doc.get('program_version')} / ISA {doc.get('isa_version')}"
                               f"; this build reads {PROGRAM_VERSION} / {ISA_VERSION}")
        try:
            acfg = config_from_dict(doc["config"], str(src))
            if acfg.fingerprint() != doc["fingerprint"]:
                raise ProgramError(f"{src}: config fingerprint mismatch (file edited?)")
            with np.load(d / "program.npz", allow_pickle=False) as z:
                words, image = z["words"], z["image"]
                host_data = {k[5:]: z[k] for k in z.files if k.startswith("host:")}
            prog = cls(config=doc["config"], words=words, image=image, host_data=host_data,
                       host_ops=[HostOp(**h) for h in doc["host_ops"]],
                       tensors={t["name"]: TensorInfo(**t) for t in doc["tensors"]}, meta=doc.get("meta", {}),
                       listing=(d / "listing.txt").read_text() if (d / "listing.txt").exists() else "")
        except ProgramError:
            raise
        except FileNotFoundError as e:
            raise ProgramError(f"{d}: missing {Path(e.filename).name}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise ProgramError(f"{src}: malformed Program ({type(e).__name__}: {e})") from None
        prog.validate(str(src))
        return prog

    def validate(self, source: str = "<program>") -> None:
        acfg = self.acfg
        w = acfg.memory.bus_bytes
        if self.image.ndim != 2 or self.image.shape[1] != w or self.image.dtype != np.uint8:
            raise ProgramError(f"{source}: image must be (beats, {w}) uint8, got {self.image.shape} {self.image.dtype}")
        materialized = self.meta.get("weights_materialized", True)
        for t in self.tensors.values():
            if t.layout not in LAYOUTS or t.dtype not in DTYPES:
                raise ProgramError(f"{source}: tensor {t.name}: unknown layout {t.layout!r} or dtype {t.dtype!r}")
            if t.attrs.get("space") == "host":
                if materialized and t.name not in self.host_data:
                    raise ProgramError(f"{source}: host tensor {t.name}: no data")
                continue
            if t.nbytes == 0 and "parts" in t.attrs:
                continue
            if t.addr < 0 or (materialized and (t.addr * w + t.nbytes) > self.image.size):
                raise ProgramError(f"{source}: tensor {t.name}: outside the {self.image.shape[0]}-beat image")
        try:
            cmds = self.commands()
        except ValueError as e:
            raise ProgramError(f"{source}: command stream: {e}") from None
        names = set(self.tensors)
        for h in self.host_ops:
            for n in h.inputs + h.outputs:
                if n not in names:
                    raise ProgramError(f"{source}: host op {h.name}: unknown tensor {n!r}")
        n_ops = len(self.host_ops)
        for c in cmds:
            if type(c).__name__ == "HostCommand" and c.op >= n_ops:
                raise ProgramError(f"{source}: HOST command refers to op {c.op}; the table has {n_ops}")


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
    bits = np.unpackbits(np.asarray(data[: kc * nb * nbytes], np.uint8).reshape(kc * nb, nbytes), axis=1,
                         bitorder="little")[:, : q * t * ib].reshape(kc * nb, q * t, ib)
    vals = (bits.astype(np.uint16) << np.arange(ib, dtype=np.uint16)).sum(axis=2)
    return vals.reshape(kc, nb, q, t).astype(np.uint8)
