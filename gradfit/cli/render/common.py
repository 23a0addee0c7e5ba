"""What every table shares: the stdout console, titled tables, number formatting, and how YAML spells a value."""

from __future__ import annotations

import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradfit.counts import number


def stdout_console() -> Console:
    """A console for stdout, as wide as COLUMNS says when it is set; else the terminal's width, or 160 columns when
    stdout is not a terminal, so logs and redirected tables are not wrapped."""
    console = Console()  # Rich reads COLUMNS itself
    return console if console.is_terminal or os.environ.get("COLUMNS", "").isdigit() else Console(width=160)


def titled_table(title: str, **options) -> Table:
    """A table at least as wide as its title, so the title wraps only at spaces and only when the console is
    narrower: a narrow table would otherwise fold a path in its title every few characters."""
    return Table(title=title, min_width=len(Text.from_markup(title).plain), **{"title_justify": "left", **options})


fmt = number  # how a table writes a measured value (gradfit.counts)


def yaml_value(value: Any) -> str:
    """A config value as YAML spells it (null, true, [128, 64])."""
    return json.dumps(value) if not isinstance(value, str) else value


def member_ranges(indexes: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts, start = [], None
    for i, n in enumerate(indexes):
        start = n if start is None else start
        if i + 1 == len(indexes) or indexes[i + 1] != n + 1:
            parts.append(str(n) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)
