"""Tables of ``gradfit compare-grads`` (one per parameter group, and the finite-difference step sweep) and of
``gradfit trace`` (the evaluation trace and the derivative by each mode)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table

from gradfit.cli.render.common import fmt, titled_table

if TYPE_CHECKING:
    from gradfit.gradients.check_report import MethodResult, Report, SweepRow
    from gradfit.gradients.trace_result import Trace, TraceRow


VERDICT_STYLE = {"PASS": "green", "KINK": "cyan", "INCONCLUSIVE": "yellow", "FAIL": "bold red", "N/A": "dim"}


METHOD_NAMES = {
    "forward": "forward AD",
    "finite_difference": "finite differences",
    "manual": "hand-derived",
    "float64": "reverse AD in float64",
}


_GRADCHECK_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("method vs reverse AD", "left"),
    ("rel. error", "right"),
    ("worst entry", "left"),
    ("its value", "right"),
    ("reverse AD", "right"),
    ("checked", "right"),
    ("verdict", "left"),
    ("notes", "left"),
)


def _checked(result: MethodResult) -> str:
    """What a method compared: entries (coordinates) and random directions, counted apart."""
    parts = ([f"{result.checked:,} entr{'y' if result.checked == 1 else 'ies'}"] if result.checked else []) + (
        [f"{result.directions} direction{'s' if result.directions != 1 else ''}"] if result.directions else []
    )
    return " + ".join(parts) or "-"


def gradcheck_tables(report: Report) -> list[Table]:
    """One table per parameter group: each method against reverse-mode AD."""
    tables = []
    for group in report.groups:
        style = VERDICT_STYLE[group.verdict]
        shape = "scalar" if not group.shape else "x".join(map(str, group.shape))
        noise = "" if group.f_noise is None else f"; loss noise {group.f_noise:.1e}"
        table = titled_table(
            f"[bold]{escape(group.name)}[/] ({shape}, {group.size:,} "
            f"entr{'y' if group.size == 1 else 'ies'}{noise}): [{style}]{group.verdict}[/]",
            title_justify="left",
        )
        for name, justify in _GRADCHECK_COLUMNS:
            table.add_column(name, justify=justify)
        for method in report.methods:
            r = group.methods[method]
            notes = [r.note] if r.note else []
            if r.kinks:
                notes.append(f"{r.kinks} kink(s): AD between the one-sided differences")
            if r.inconclusive:
                notes.append(f"{r.inconclusive} within noise")
            if r.failures:
                notes.append(f"{r.failures} failing")
            table.add_row(
                METHOD_NAMES[method],
                fmt(r.error, 2),
                escape(r.worst or "-"),
                fmt(r.worst_value, 7),
                fmt(r.worst_reference, 7),
                _checked(r),
                f"[{VERDICT_STYLE[r.verdict]}]{r.verdict}[/]",
                escape("; ".join(notes)),
            )
        tables.append(table)
    return tables


def sweep_table(rows: list[SweepRow], shape: str | None) -> Table:
    """The finite-difference error at each step h, as numbers and a bar: a V when the gradient is right."""
    table = titled_table("Finite-difference error against the step h", title_justify="left")
    table.add_column("h", justify="right")
    table.add_column("rel. error", justify="right")
    table.add_column("")
    best = min(r.error for r in rows)
    for r in rows:
        marks = "#" * max(1, min(40, int(round(2 * (16 + math.log10(max(r.error, 1e-16)))))))
        table.add_row(f"{r.step:.0e}", f"{r.error:.2e}", marks + ("  <- best" if r.error == best else ""))
    table.caption = (
        "V shape: truncation falls as h^2 until round-off rises; consistent with a correct gradient"
        if shape == "V"
        else f"flat floor near {best:.1e}: finite differences never agree better; the gradient is wrong"
    )
    return table


TRACE_DIGITS = 6  # enough to check a hand computation by eye; the JSON has full precision


def _trace_value(shown: Any, digits: int = TRACE_DIGITS) -> str:
    """A ``gradients.trace_result.summary``: a number, a nested list of numbers, or {shape, dtype, norm, min, max}."""
    if shown is None:
        return "-"
    if isinstance(shown, dict):
        shape = "x".join(map(str, shown["shape"]))
        return (
            f"{shape} {shown['dtype']}: norm {fmt(shown['norm'], digits)}, min {fmt(shown['min'], digits)}, "
            f"max {fmt(shown['max'], digits)}"
        )
    if isinstance(shown, list):
        return "[" + ", ".join(_trace_value(v, digits) for v in shown) + "]"
    if isinstance(shown, float):
        return fmt(shown + 0.0, digits)  # + 0.0: a tangent of -0 shows as 0
    return fmt(shown)


def trace_tables(trace: Trace) -> list[Table]:
    """The evaluation trace (Baydin et al. 2018, tables 2-3), then dL/dtheta_j by each mode and by hand.

    One row per v_k: its operation, operands, primal value, forward tangent dv_k/dtheta_j and reverse adjoint
    dL/dv_k (the tangent and adjoint columns only for the modes that were run).
    """
    theta = escape(trace.param)
    return [_trace_table(trace, theta), _derivative_table(trace, theta)]


def _trace_table(trace: Trace, theta: str) -> Table:
    from gradfit.gradients.trace_result import summary

    table = titled_table(
        f"[bold]Evaluation trace[/] of the loss, theta_j = [bold]{theta}[/] "
        f"(inputs v{trace.rows[0].k}..v0, operations v1..v{trace.rows[-1].k})",
        title_justify="left",
    )
    table.add_column("v", justify="right", style="bold")
    table.add_column("operation")
    table.add_column("inputs")
    table.add_column("value", justify="right")
    if trace.forward:
        table.add_column(f"tangent dv/d{theta}", justify="right")
    if trace.reverse:
        table.add_column("adjoint dL/dv", justify="right")
    notes: list[str] = []
    for row in trace.rows:
        operation = _operation(row, trace.leaf, theta)
        if row.note:
            notes.append(f"v{row.k}: {row.note}")
            operation += f" [dim]({len(notes)})[/]"
        cells = [
            row.label,
            operation,
            escape(", ".join(o.label for o in row.inputs)),
            escape(_trace_value(summary(row.value))),
        ]
        if trace.forward:
            cells.append(escape(_trace_value(summary(row.tangent))))
        if trace.reverse:
            cells.append(escape(_trace_value(summary(row.adjoint))))
        table.add_row(*cells, end_section=row.k == 0)  # a rule between the inputs and the operations
    captions = []
    if trace.forward:
        captions.append(f"tangent: forward mode, one JVP per operation from a one-hot tangent on {theta}")
    if trace.reverse:
        captions.append(
            f"adjoint: reverse mode, one VJP per operation from dL/dv{trace.output} = 1, summed over every use"
        )
    table.caption_justify = "left"
    table.caption = "; ".join(captions) + "".join(f"\n({i}) {escape(n)}" for i, n in enumerate(notes, 1))
    return table


def _operation(row: TraceRow, leaf: str, theta: str) -> str:
    """What v_k is: a parameter or data input by name, or the operation (with its scope) that computed it."""
    if row.kind in ("parameter", "data"):
        operation = f"{row.kind} [bold]{escape(row.name)}[/]"
        if row.kind == "parameter" and row.name == leaf:
            operation += f" [dim](theta_j = {theta})[/]"
        return operation
    return escape(row.op) + (f" [dim]in {escape(row.scope)}[/]" if row.scope else "")


def _derivative_table(trace: Trace, theta: str) -> Table:
    """dL/dtheta_j from forward mode, reverse mode and by hand, each against the reference mode."""
    d = trace.derivative
    reference = "reverse mode" if d.reverse is not None else "forward mode"  # what the others are compared to
    reference_value = d.reverse if d.reverse is not None else d.forward
    compare = titled_table(f"[bold]dL/d{theta}[/] (loss {fmt(trace.loss, 10)})", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("method", "left"),
        ("dL/dtheta_j", "right"),
        (f"rel. difference to {reference}", "right"),
        ("from", "left"),
    )
    for name, justify in columns:
        compare.add_column(name, justify=justify)
    for name, value, source in (
        ("forward mode", d.forward, f"the tangent of the loss, v{trace.output}"),
        ("reverse mode", d.reverse, f"the adjoint of {theta}"),
        ("hand-derived", d.manual, "the closed-form gradient"),
    ):
        if value is None:
            compare.add_row(name, "-", "-", "not computed" if name != "hand-derived" else "none for this model")
            continue
        compare.add_row(
            name, fmt(value, 12), "-" if name == reference else _relative(value, reference_value), escape(source)
        )
    return compare


def _relative(value: float, reference: float | None) -> str:
    """|value - reference| / max(|reference|, tiny), as '3.1e-17'; '-' without a reference."""
    if reference is None:
        return "-"
    return f"{abs(value - reference) / max(abs(reference), 1e-300):.1e}"
