"""Energy tables: per-event energies (pJ) and host power of a device family, with their sources
(configs/energy/<family>.yaml). Every modeled energy figure (estimates, the KV model, the DSE) reads them
through :func:`load_energy`, which reads the file with the bounded YAML reader and validates it against the
pydantic schema below (unknown fields are errors; every error is one line naming the file and the field).

The ``sources`` mapping of a table says where each number comes from, machine-readably: ``pj.<event>`` or
``host_w`` → a source string or ``{source: TEXT, range: [LOW, HIGH]}``; keys must name a field of the table
and a range must contain the value. ``tritium estimate --json`` lists them under ``assumptions``."""

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hw import data_files
from hw.yaml_safe import ConfigError, load_yaml, show

__all__ = ["ENERGY_DIR", "ENERGY_KEYS", "SOURCE_KEYS", "EnergyTable", "load_energy"]

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


class _Source(BaseModel):
    """Where one number comes from, with the range it may take."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(strict=True, pattern=r"\S", description="where the number comes from")
    range: tuple[_PJ, _PJ] | None = Field(None, description="low and high end")


class EnergyTable(BaseModel):
    """One configs/energy/<family>.yaml file."""

    model_config = ConfigDict(extra="forbid")

    family: str | None = Field(None, strict=True, description="the device family (informative)")
    pj: _Pj
    host_w: _PJ = Field(description="host power while running host ops, W")
    sources: dict[str, Annotated[str, Field(strict=True, pattern=r"\S")] | _Source] = Field(
        default_factory=dict, description="pj.<event> or host_w → source (string or {source, range})"
    )


ENERGY_KEYS: tuple[str, ...] = tuple(_Pj.model_fields)
SOURCE_KEYS: tuple[str, ...] = (*(f"pj.{k}" for k in ENERGY_KEYS), "host_w")
"""The fields a ``sources`` entry may name."""


def _message(path: Path, err: dict) -> str:
    field = ".".join(str(x) for x in err["loc"]) or "top level"
    kind = err["type"]
    if err["loc"][:1] == ("sources",) and len(err["loc"]) > 1:
        key = show(str(err["loc"][1]), 40).strip(chr(39))
        return f"{path}: sources.{key}: expected a source string or {{source: TEXT, range: [LOW, HIGH]}}"
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
    """The energy table of ``family`` as plain data: ``{"family", "pj": {event: pJ}, "host_w", "sources":
    {field: {"source", "range"}}, "file"}``."""
    path = ENERGY_DIR / f"{family}.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: file not found (device.family={family!r})")
    data = load_yaml(path, "energy table")
    try:
        table = EnergyTable.model_validate(data).model_dump()
    except ValidationError as e:
        raise ConfigError(_message(path, e.errors(include_url=False)[0])) from None
    sources = {}
    for key, entry in table["sources"].items():
        if key not in SOURCE_KEYS:
            raise ConfigError(
                f"{path}: sources.{show(key, 40).strip(chr(39))}: unknown field (known: "
                f"{', '.join(SOURCE_KEYS)})"
            )
        entry = {"source": entry, "range": None} if isinstance(entry, str) else entry
        value = table["host_w"] if key == "host_w" else table["pj"][key[3:]]
        rng = entry["range"]
        if rng is not None and not rng[0] <= value <= rng[1]:
            raise ConfigError(
                f"{path}: sources.{key}: range [{rng[0]:g}, {rng[1]:g}] must contain the value "
                f"{value:g} with low <= high"
            )
        sources[key] = {"source": entry["source"].strip(), "range": None if rng is None else list(rng)}
    table["sources"] = sources
    table["file"] = str(path)
    return table
