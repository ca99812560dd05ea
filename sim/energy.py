"""Energy tables: per-event energies (pJ) and host power of a device family, with their sources
(configs/energy/<family>.yaml). Every modeled energy figure (estimates, the KV model, the DSE) reads them
through :func:`load_energy`."""

from __future__ import annotations

import yaml

from hw import data_files
from hw.config import ConfigError

__all__ = ["ENERGY_DIR", "ENERGY_KEYS", "load_energy"]

ENERGY_DIR = data_files.energy_dir()
ENERGY_KEYS = ("lookup", "table_entry", "mac8", "sram_byte", "dram_byte")


def load_energy(family: str) -> dict:
    path = ENERGY_DIR / f"{family}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (device.family={family!r})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("pj"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'pj' table")
    for k in ENERGY_KEYS:
        v = data["pj"].get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"{path}: pj.{k}: expected a non-negative number, got {v!r}")
    hw_ = data.get("host_w")
    if isinstance(hw_, bool) or not isinstance(hw_, (int, float)) or hw_ < 0:
        raise ConfigError(f"{path}: host_w: expected a non-negative number, got {hw_!r}")
    return data
