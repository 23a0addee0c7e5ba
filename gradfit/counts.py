"""How every message writes a count: digits grouped by thousands (``48,000``, never ``48000``) and the noun agreeing
with the number (``1 evaluation``, ``7 evaluations``). No imports, so any layer may use it."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``count(1, "evaluation")`` -> '1 evaluation'; ``count(3000, "step")`` -> '3,000 steps'."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def rate(value: float) -> str:
    """A rate such as steps per second: grouped digits from 100 up (``5,355``), 3 significant digits below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
