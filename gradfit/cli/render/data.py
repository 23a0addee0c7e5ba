"""The tables of ``gradfit data describe``: the table's shape and classes, then one row per feature (for a wide
table, a summary: drawing 100,000 rows took a minute)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from gradfit.cli.render.common import fmt, titled_table

MAX_FEATURE_ROWS = 40  # feature rows drawn at most; --json has every column
EDGE_FEATURES = 10  # of a wider table: the first and last this many, and up to the rest of the rows for notable ones


def notable(feature: dict) -> bool:
    """A column worth a look before training: missing or infinite cells, an overflow (no std), a single value."""
    if feature["kind"] == "categorical":
        return bool(feature["missing"]) or feature["categories"] <= 1
    return bool(feature["non_finite"] or feature["missing"]) or feature["std"] is None or feature["std"] == 0


def shown_features(features: list[dict], limit: int = MAX_FEATURE_ROWS) -> list[int]:
    """Indices of the feature rows to draw, in column order: all of them up to ``limit``; otherwise the first and
    last ``EDGE_FEATURES`` and the first notable ones between them, ``limit`` in all."""
    count = len(features)
    if count <= limit:
        return list(range(count))
    middle = range(EDGE_FEATURES, count - EDGE_FEATURES)
    picked = [i for i in middle if notable(features[i])][: limit - 2 * EDGE_FEATURES]
    return [*range(EDGE_FEATURES), *picked, *range(count - EDGE_FEATURES, count)]


def describe_tables(result: dict) -> list[Table]:
    """``gradfit data describe``: the table's shape and classes, then the features (see ``shown_features``)."""
    head = Table(show_header=False)
    head.add_row("data", escape(result["path"]))
    head.add_row("format", result["format"])
    head.add_row("rows", f"{result['rows']:,}")
    head.add_row("features", f"{result['columns']:,}")
    head.add_row("missing cells", f"{result['missing_cells']:,}")
    head.add_row("infinite cells", f"{result['non_finite_cells']:,}")
    tables = [head]
    if result["classes"] is not None:
        classes = titled_table(f"classes ({result['target']})", title_justify="left")
        classes.add_column("label")
        classes.add_column("rows", justify="right")
        classes.add_column("share", justify="right")
        for entry in result["classes"]:
            classes.add_row(escape(str(entry["label"])), f"{entry['rows']:,}", f"{entry['rows'] / result['rows']:.1%}")
        tables.append(classes)
    tables.append(_feature_table(result["features"]))
    return tables


def _feature_table(features: list[dict]) -> Table:
    shown = shown_features(features)
    hidden = len(features) - len(shown)
    caption = None
    if hidden:
        caption = (
            f"{hidden:,} of {len(features):,} columns not shown (drawn: the first and last {EDGE_FEATURES}, and up "
            f"to {MAX_FEATURE_ROWS - 2 * EDGE_FEATURES} with missing or infinite cells, an overflow or a single "
            "value); "
            "--json lists them all"
        )
    table = titled_table("features", title_justify="left", caption=caption, caption_justify="left")
    for name in ("column", "mean", "std", "min", "max", "missing", "infinite"):
        table.add_column(name, justify="left" if name == "column" else "right")
    previous = -1
    for i in shown:
        if i > previous + 1:
            table.add_row(f"[dim]... {i - previous - 1:,} more[/]", *[""] * 6)
        previous = i
        f = features[i]
        if f["kind"] == "categorical":
            top = ", ".join(f"{escape(str(c['value']))} ({c['rows']:,})" for c in f["top"])
            more = ", ..." if f["categories"] > len(f["top"]) else ""
            summary = f"[dim]{f['categories']:,} categories:[/] {top}{more}"
            table.add_row(escape(f["name"]), summary, "", "", "", f"{f['missing']:,}", "")
            continue
        table.add_row(
            escape(f["name"]),
            *(fmt(f[k]) if f[k] is not None else "-" for k in ("mean", "std", "min", "max")),
            f"{f['missing']:,}",
            f"{f['non_finite']:,}",
        )
    return table
