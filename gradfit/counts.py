"""How every message writes a number: a count with its digits grouped (``48,000``, never ``48000``) and a noun that
agrees (``1 evaluation``, ``7 evaluations``), a rate, a measured value. No gradfit imports: any layer may use it."""

from __future__ import annotations

from typing import Any


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``count(1, "evaluation")`` -> '1 evaluation'; ``count(3000, "step")`` -> '3,000 steps'."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def number(value: Any, digits: int = 4) -> str:
    """A measured value in tables and log lines: ``digits`` significant digits, '-' when missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def rate(value: float) -> str:
    """A rate such as steps per second: grouped digits from 100 up (``5,355``), 3 significant digits below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
