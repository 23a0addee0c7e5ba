"""The tables of ``gradfit data describe``: the table's shape and classes, then one row per feature."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from gradfit.cli.render.common import fmt, titled_table


def describe_tables(result: dict) -> list[Table]:
    """``gradfit data describe``: the table's shape and classes, then one row per feature."""
    head = Table(show_header=False)
    head.add_row("data", escape(result["path"]))
    head.add_row("format", result["format"])
    head.add_row("rows", f"{result['rows']:,}")
    head.add_row("features", f"{result['columns']:,}")
    head.add_row("non-finite cells", f"{result['non_finite_cells']:,}")
    tables = [head]
    if result["classes"] is not None:
        classes = titled_table(f"classes ({result['target']})", title_justify="left")
        classes.add_column("label")
        classes.add_column("rows", justify="right")
        classes.add_column("share", justify="right")
        for entry in result["classes"]:
            classes.add_row(escape(str(entry["label"])), f"{entry['rows']:,}", f"{entry['rows'] / result['rows']:.1%}")
        tables.append(classes)
    features = titled_table("features", title_justify="left")
    for name in ("column", "mean", "std", "min", "max", "non-finite"):
        features.add_column(name, justify="left" if name == "column" else "right")
    for f in result["features"]:
        features.add_row(
            escape(f["name"]),
            *(fmt(f[k]) if f[k] is not None else "-" for k in ("mean", "std", "min", "max")),
            f"{f['non_finite']:,}",
        )
    tables.append(features)
    return tables
