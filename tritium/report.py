"""Plain-text tables for the command line."""

from __future__ import annotations


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """Left-aligned text columns for strings, right-aligned for numbers."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(row[i], (int, float)) and not isinstance(row[i], bool) for row in rows)
        for i in range(len(headers))
    ]

    def line(vals):
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric, strict=True)
        ).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


# ---------------------------------------------------------------- units
_PREFIXES = (
    (1e9, "G"),
    (1e6, "M"),
    (1e3, "k"),
    (1.0, ""),
    (1e-3, "m"),
    (1e-6, "µ"),
    (1e-9, "n"),
    (1e-12, "p"),
)


def si(value: float, unit: str, digits: int = 3) -> str:
    """``value`` with an SI prefix that keeps ``digits`` significant digits readable: 0.000183 J →
    "183 µJ", 0.0421 s → "42.1 ms", 2.5e9 ops/s → "2.50 Gops/s". Zero is "0 J"; non-finite values print as
    they are. The one formatter for every printed energy, time and rate (bytes: :func:`fmt_bytes`)."""
    v = float(value)
    if v == 0 or v != v or v in (float("inf"), float("-inf")):
        return f"{v:g} {unit}"
    rounded = float(f"{v:.{digits - 1}e}")  # to `digits` significant digits first: 0.99996 → 1.00
    scale, p = next(((s, p) for s, p in _PREFIXES if abs(rounded) >= s), _PREFIXES[-1])
    x = rounded / scale
    decimals = max(0, digits - 1 - int(f"{abs(x):e}".split("e")[1]))
    return f"{x:.{decimals}f} {p}{unit}"


def fmt_energy(joules: float) -> str:
    """Energy with an SI prefix (J, mJ, µJ, nJ, pJ)."""
    return si(joules, "J")


def fmt_time(seconds: float) -> str:
    """Time with an SI prefix (s, ms, µs, ns)."""
    return si(seconds, "s")


def fmt_power(watts: float) -> str:
    return si(watts, "W")


def fmt_bytes(n: float) -> str:
    """Bytes in binary units (B, KiB, MiB, GiB) with three significant digits."""
    v = float(n)
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(v) >= scale:
            x = v / scale
            return f"{x:.{max(0, 2 - int(f'{abs(x):e}'.split('e')[1]))}f} {unit}"
    return f"{v:.0f} B"


# ---------------------------------------------------------------- error lines
_ANSI = __import__("re").compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


def error_line(message: object) -> str:
    """One clean line of an error message: terminal colour/escape codes removed, the first non-empty line."""
    text = _ANSI.sub("", str(message)).strip()
    return text.splitlines()[0].strip() if text else type(message).__name__
