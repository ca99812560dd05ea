"""Energy tables: per-event energies (pJ) and host power of a device family, with their sources
(configs/energy/<family>.yaml). Every modeled energy figure (estimates, the KV model, the DSE) reads them
through :func:`load_energy`, which reads the file with the bounded YAML reader and validates it against the
pydantic schema below (unknown fields are errors; every error is one line naming the file and the field)."""

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hw import data_files
from hw.yaml_safe import ConfigError, load_yaml, show

__all__ = ["ENERGY_DIR", "ENERGY_KEYS", "EnergyTable", "load_energy"]

ENERGY_DIR = data_files.energy_dir()

_PJ = Annotated[float, Field(ge=0.0, strict=True, allow_inf_nan=False)]


class _Pj(BaseModel):
    """Energy per event, pJ."""

    model_config = ConfigDict(extra="forbid")

    lookup: _PJ = Field(description="one TLMM table lookup and accumulate")
    table_entry: _PJ = Field(description="one table entry built")
    mac8: _PJ = Field(description="one int8 × int8 multiply-accumulate")
    sram_byte: _PJ = Field(description="one on-chip RAM byte read or written")
    dram_byte: _PJ = Field(description="one external memory byte")


class EnergyTable(BaseModel):
    """One configs/energy/<family>.yaml file."""

    model_config = ConfigDict(extra="forbid")

    family: str | None = Field(None, strict=True, description="the device family (informative)")
    pj: _Pj
    host_w: _PJ = Field(description="host power while running host ops, W")


ENERGY_KEYS: tuple[str, ...] = tuple(_Pj.model_fields)


def _message(path: Path, err: dict) -> str:
    field = ".".join(str(x) for x in err["loc"]) or "top level"
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _Pj.model_fields if len(err["loc"]) > 1 else EnergyTable.model_fields
        return f"{path}: {show(field, 60).strip(chr(39))}: unknown field (known: {', '.join(sorted(known))})"
    if kind == "missing":
        return f"{path}: {field}: required field is missing"
    if kind in ("model_type", "dict_type"):
        return f"{path}: {field}: expected a mapping, got {type(err['input']).__name__}"
    if field == "family":
        return f"{path}: family: expected a string, got {show(err['input'])}"
    return f"{path}: {field}: expected a non-negative number, got {show(err['input'])}"


def load_energy(family: str) -> dict:
    """The energy table of ``family`` as plain data: ``{"family", "pj": {event: pJ}, "host_w"}``."""
    path = ENERGY_DIR / f"{family}.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: file not found (device.family={family!r})")
    data = load_yaml(path, "energy table")
    try:
        return EnergyTable.model_validate(data).model_dump()
    except ValidationError as e:
        raise ConfigError(_message(path, e.errors(include_url=False)[0])) from None
