"""Tables of ``gradfit bench``: environment, training throughput, the cost of a gradient, AD modes against finite
differences, peers, scaling over devices and the Helmholtz study."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from gradfit.cli.render.common import fmt, titled_table


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


UNSTABLE_NOTE = (
    "? marks a figure whose timing samples varied by more than 20% (--json has each spread): not "
    "a number to rely on; rerun on a quieter machine"
)


def _flag(text: str, row: dict, *keys: str) -> str:
    """``text``, marked with a yellow ? when a timing it comes from was unstable."""
    return f"{text}[yellow]?[/]" if set(keys) & set(row.get("unstable", [])) else text


def bench_tables(result: dict) -> list[Table]:
    """Environment, training throughput, gradient cost, method scaling, peers and scaling over devices as Rich
    tables."""
    tables = [_environment_table(result["environment"])]
    if "training" in result:  # absent when bench ran one study only (--study)
        tables.append(_training_table(result["training"]))
        tables.append(_gradient_cost_table(result["gradient_cost"]))
    for family, data in result["methods"].items():
        tables.append(helmholtz_table(data) if family == "helmholtz" else _methods_table(family, data))
    if "peers" in result:
        tables.append(_peers_table(result["peers"]))
    if "scaling" in result:
        tables.append(_scaling_table(result["scaling"]))
    return tables


def _environment_table(environment: dict) -> Table:
    table = titled_table("Environment", show_header=False, title_justify="left")
    for key, value in environment.items():
        table.add_row(key, escape(str(value)))
    return table


def _training_table(rows: list[dict]) -> Table:
    """Steps/s of the Python loop, the fused chunk and gradfit's loop, per config."""
    table = titled_table(
        "Training throughput (steps/s; medians of samples after warm-up)", title_justify="left", caption=UNSTABLE_NOTE
    )
    for name in (
        "config",
        "params",
        "batch",
        "compile s",
        "python loop",
        "fused chunk",
        "gradfit loop",
        "evaluation share",
        "fused examples/s",
        "fused / python",
        "GFLOP/s",
        "of peak",
    ):
        table.add_column(name, justify="left" if name == "config" else "right")
    for row in rows:
        peak = row.get("fraction_of_peak")
        loop = row["loop"]
        table.add_row(
            f"{row['config']} ({row['optimizer']})",
            f"{row['num_params']:,}",
            str(row["batch_size"]),
            f"{row['compile_time_s']:.2f}",
            _flag(_rate(row["python_loop"]["steps_per_s"]), row, "python_loop_s_per_step"),
            _flag(_rate(row["fused"]["steps_per_s"]), row, "fused_s_per_step"),
            _flag(_rate(loop["steps_per_s"]), row, "loop_s_per_step"),
            f"{loop['eval_share']:.1%}",
            _rate(row["fused"]["examples_per_s"]),
            _flag(f"{row['fused_speedup']:.2f}x", row, "fused_s_per_step", "python_loop_s_per_step"),
            f"{row['gflops_per_s']:.3g}",
            ", ".join(f"{k} {v:.1%}" for k, v in peak.items()) if peak else "-",
        )
    return table


def _gradient_cost_table(rows: list[dict]) -> Table:
    table = titled_table("Cost of a gradient: one value_and_grad vs one loss evaluation", title_justify="left")
    for name in ("config", "rows", "params", "loss", "value_and_grad", "ratio"):
        table.add_column(name, justify="left" if name == "config" else "right")
    for row in rows:
        table.add_row(
            row["config"],
            f"{row['rows']:,}",
            f"{row['num_params']:,}",
            _flag(_seconds(row["loss_s"]), row, "loss_s"),
            _flag(_seconds(row["value_and_grad_s"]), row, "value_and_grad_s"),
            _flag(f"{row['ratio']:.2f}x", row, "loss_s", "value_and_grad_s"),
        )
    return table


def _methods_table(family: str, data: dict) -> Table:
    """The full gradient by each method as a multiple of one loss, as the model grows; growth exponents below."""
    methods = ("reverse", "forward", "finite_difference", "manual_numpy")
    table = titled_table(
        f"Full gradient of the {family} model, as a multiple of one loss evaluation", title_justify="left"
    )
    for name in ("size", "params", "loss", "reverse AD", "forward AD", "finite diff.", "NumPy by hand"):
        table.add_column(name, justify="right")
    for row in data["rows"]:
        ratios = [_flag(f"{row['ratios'][m]:.3g}x", row, "loss_s", f"{m}_s") for m in methods]
        table.add_row(
            str(row["size"]), f"{row['num_params']:,}", _flag(_seconds(row["loss_s"]), row, "loss_s"), *ratios
        )
    e = data["growth_exponent"]
    if e["reverse"] is not None:
        table.caption = (
            f"growth exponent vs parameters: reverse {e['reverse']:.2f}, forward {e['forward']:.2f}, "
            f"finite differences {e['finite_difference']:.2f}, NumPy {e['manual_numpy']:.2f} "
            "(0: constant multiple of a loss; 1: one pass per parameter)"
        )
        flops = [row.get("reverse_flops_vs_loss") for row in data["rows"]]
        if all(flops):
            table.caption += "; XLA flop count, reverse / loss: " + ", ".join(f"{f:.2f}" for f in flops)
    return table


def _peers_table(peers: dict) -> Table:
    """gradfit's time against each peer's (NumPy, scikit-learn, PyTorch), or why a peer was not run."""
    table = titled_table(
        "Against the alternatives (time ratio gradfit / peer: below 1, gradfit is faster)",
        title_justify="left",
        caption=UNSTABLE_NOTE,
    )
    for name in ("peer", "gradfit", "peer time", "ratio", "notes"):
        table.add_column(name, justify="left" if name in ("peer", "notes") else "right")
    for row in peers.values():
        if not row.get("available", True):
            table.add_row(escape(row["peer"]), "-", "-", "-", escape(row["reason"]))
            continue
        per_step = "gradfit_s_per_step" in row
        mine, theirs = ("gradfit_s_per_step", "peer_s_per_step") if per_step else ("gradfit_s", "peer_s")
        per = " /step" if per_step else ""
        notes = row.get("note", "")
        if "config" in row:
            notes = f"{row['config']}, batch {row['batch_size']}" + (f"; {notes}" if notes else "")
        table.add_row(
            escape(row["peer"]),
            _flag(_seconds(row[mine]) + per, row, mine),
            _flag(_seconds(row[theirs]) + per, row, theirs),
            _flag(f"{row['time_ratio']:.2f}", row, mine, theirs),
            escape(notes),
        )
    return table


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} us"


def _scaling_table(scaling: dict) -> Table:
    table = titled_table(
        f"Scaling over devices: {escape(scaling['config'])}, global batch {scaling['batch_size']} "
        "split across the devices (fused chunk)",
        title_justify="left",
        caption=escape(scaling["note"]),
    )
    for name in ("devices", "steps/s", "examples/s", "per device", "speed-up", "efficiency", "compile s"):
        table.add_column(name, justify="right")
    for row in scaling["rows"]:
        table.add_row(
            str(row["devices"]),
            _flag(_rate(row["steps_per_s"]), row, "s_per_step"),
            _rate(row["examples_per_s"]),
            _rate(row["examples_per_s_per_device"]),
            f"{row['speedup']:.2f}x",
            f"{row['efficiency']:.0%}",
            f"{row['compile_time_s']:.2f}",
        )
    return table


_HELMHOLTZ_METHODS = {  # key in the study -> (column heading, short name in the error column)
    "reverse": ("reverse AD", "rev"),
    "forward": ("forward AD", "fwd"),
    "finite_difference": ("finite diff.", "fd"),
    "manual": ("by hand", "hand"),
    "symbolic": ("symbolic", "sym"),
}


def helmholtz_table(study: dict) -> Table:
    """The Helmholtz free energy study as a Rich table: per n, each method's full-gradient time as a multiple of
    one evaluation of f, the errors against reverse mode, and the size of SymPy's gradient expression; a last row
    of growth exponents, and a caption that says how to read them."""
    table = titled_table(
        "Helmholtz free energy (Baydin et al. 2018): full gradient as a multiple of one evaluation of f",
        title_justify="left",
        caption_justify="left",
    )
    compared = [m for m in _HELMHOLTZ_METHODS if m != "reverse"]
    headings = [
        "n",
        "f",
        *(heading for heading, _ in _HELMHOLTZ_METHODS.values()),
        "error " + "/".join(_HELMHOLTZ_METHODS[m][1] for m in compared),
        "symbolic ops",
        "after CSE",
        "symbolic set-up",
    ]
    for heading in headings:
        table.add_column(heading, justify="right", no_wrap=heading in ("symbolic", headings[7]))
    for row in study["rows"]:
        setup = row.get("symbolic_setup_s")
        table.add_row(
            str(row["size"]),
            _flag(_seconds(row["loss_s"]), row, "loss_s"),
            *(_helmholtz_ratio(row, m) for m in _HELMHOLTZ_METHODS),
            " / ".join(_error(row["errors"].get(m)) for m in compared),
            _count(row.get("symbolic_ops")),
            _count(row.get("symbolic_ops_cse")),
            "-" if setup is None else _seconds(setup),
        )
    exponents, swell = study["growth_exponent"], study.get("expression_growth", {})
    table.add_section()
    table.add_row(
        "growth",
        "",
        *(fmt(None) if exponents.get(m) is None else f"n^{exponents[m]:.2f}" for m in _HELMHOLTZ_METHODS),
        "",
        *(fmt(None) if swell.get(k) is None else f"n^{swell[k]:.2f}" for k in ("ops", "ops_cse")),
        "",
    )
    table.caption = _helmholtz_caption(study)
    return table


def _helmholtz_ratio(row: dict, method: str) -> str:
    value = row["ratios"].get(method)
    if value is None:
        return "-"
    text = _flag(f"{value:.3g}x", row, "loss_s", f"{method}_s")
    if method == "symbolic" and row.get("symbolic_own_ratio") is not None:  # against f lambdified alike
        text += " " + _flag(f"({row['symbolic_own_ratio']:.3g}x)", row, "symbolic_s", "symbolic_loss_s")
    return text


def _error(value: float | None) -> str:
    return "-" if value is None else "0" if value == 0 else f"{value:.0e}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _helmholtz_caption(study: dict) -> str:
    """How to read the growth row, the errors and the symbolic column, and which rows lack SymPy's gradient."""
    skipped = next((row["symbolic_skipped"] for row in study["rows"] if row.get("symbolic_skipped")), None)
    fit_from = study.get("growth_fit_from")
    notes = [
        "growth: the slope of log(ratio) against log(n) over "
        + (f"n >= {fit_from}" if fit_from else "the larger n")
        + ", where per-call overhead no longer dominates (0: a constant multiple of f, the cheap gradient "
        "principle; 1: one pass per variable); for the expression sizes, against log(n) over n >= 2",
        "error: norm-relative, against reverse-mode AD",
        "symbolic: SymPy's gradient lambdified to NumPy, against compiled f; in brackets, against f lambdified "
        "the same way; set-up is the one-off differentiation and lambdify",
        f"symbolic differentiation: {study['symbolic']}"
        + (f"; rows without it: {skipped}" if skipped and skipped != study["symbolic"] else ""),
        UNSTABLE_NOTE,
    ]
    return escape("\n".join(notes[:-1])) + "\n" + notes[-1]
