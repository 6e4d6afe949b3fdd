"""Numbers and durations as the terminal, the logs and the reports show them.

>>> clock(3725), clock(65)
('1:02:05', '1:05')
>>> compact(123456), compact(950), compact(12.5, decimals_below=100)
('123.5k', '950', '12.5')
>>> si(2.5e12, "FLOP/s"), si(None, missing="-")
('2.5 TFLOP/s', '-')
>>> duration_words(5), duration_words(600), duration_words(7200)
('5 s', '10 min', '2.0 h')
"""

from __future__ import annotations

_SI = (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def compact(n: float, *, decimals_below: float = 0) -> str:
    """``12.3k``, ``4.5M``: a prefix from ten of its units on; below, ``1,234`` (one
    decimal under ``decimals_below``)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= 10 * scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.1f}" if abs(n) < decimals_below else f"{n:,.0f}"


def si(value: float | None, unit: str = "", *, missing: str = "?") -> str:
    """Three significant digits and an SI prefix: ``2.5 TFLOP/s``."""
    if value is None:
        return missing
    for prefix, scale in _SI:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def duration_words(seconds: float) -> str:
    """An estimate's length in words: ``5 s``, ``10 min``, ``2.0 h``, ``3.5 days``."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
