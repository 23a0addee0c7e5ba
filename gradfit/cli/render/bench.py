"""Output of ``gradfit bench``: a short summary (the machine, the side-by-side ratios, a verdict) and, with
--verbose, the tables of every section measured: environment, training throughput, the cost of a gradient, AD
modes against finite differences, peers, scaling over devices and the Helmholtz study."""

from __future__ import annotations

from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from gradfit.cli.render.common import fmt, titled_table


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


UNSTABLE_NOTE = (
    "? marks a figure whose timing samples varied by more than 20% (--json has each spread): not "
    "a number to rely on; rerun on a quieter machine"
)
DETAILS_HINT = "[dim]Details: --verbose prints every table measured; --json has every figure.[/]"


def _flag(text: str, row: dict, *keys: str) -> str:
    """``text``, marked with a yellow ? when a timing it comes from was unstable."""
    return f"{text}[yellow]?[/]" if set(keys) & set(row.get("unstable", [])) else text


def bench_tables(result: dict, verbose: bool = False) -> list[RenderableType]:
    """What ``gradfit bench`` prints: for a study run alone (--study), its table; else the summary
    (``summary``), after every section's table when ``verbose``."""
    if "training" not in result:  # one study alone: its table is the result
        tables: list[RenderableType] = [_environment_table(result["environment"])]
        tables += [helmholtz_table(data) for data in result["methods"].values()]
        return tables
    if not verbose:
        return [*summary(result), DETAILS_HINT]
    return [*detail_tables(result), *summary(result)]


def detail_tables(result: dict) -> list[Table]:
    """Every section measured, as a Rich table: environment, training throughput, gradient cost, method
    scaling, the Helmholtz study, peers and scaling over devices."""
    tables = [_environment_table(result["environment"]), _training_table(result["training"])]
    if "gradient_cost" in result:
        tables.append(_gradient_cost_table(result["gradient_cost"]))
    for family, data in result.get("methods", {}).items():
        tables.append(helmholtz_table(data) if family == "helmholtz" else _methods_table(family, data))
    if "peers" in result:
        tables.append(_peers_table(result["peers"]))
    if "scaling" in result:
        tables.append(_scaling_table(result["scaling"]))
    return tables


def summary(result: dict) -> list[RenderableType]:
    """The machine in one line, gradfit's time against each peer's with the spreads, and a one-line verdict."""
    return [machine_line(result), _ratio_table(result), verdict(result)]


def machine_line(result: dict) -> str:
    env = result["environment"]
    load = env.get("load_average")
    return escape(
        f"Measured on {env['device']}, {env['cpu_cores']} CPU cores, jax {env['jax']}, {env['dtype']}"
        + (f"; load average {load[0]:.2f} at the start" if load else "")
        + (f"; {result['wall_s']:.0f} s" if "wall_s" in result else "")
    )


_PEER_NAMES = {  # key prefix in result["peers"] -> the short name of the summary
    "minimal_jax_loop": "minimal JAX loop",
    "torch_eager": "PyTorch eager",
    "sklearn_lbfgs": "scikit-learn L-BFGS",
    "numpy_step": "NumPy step",
}


def _peer_name(key: str) -> str:
    return next((name for prefix, name in _PEER_NAMES.items() if key.startswith(prefix)), key)


def _in_summary_order(peers: dict) -> list:
    """(key, row) of the peers, the minimal JAX loops first, then as ``_PEER_NAMES`` lists them."""
    prefixes = list(_PEER_NAMES)

    def rank(item: tuple) -> int:
        return next((i for i, prefix in enumerate(prefixes) if item[0].startswith(prefix)), len(prefixes))

    return sorted(peers.items(), key=rank)


def _timed(row: dict, key: str, unit: str) -> str:
    """A time with its spread, '424 us/step (5%)', flagged when unstable."""
    spread = row.get("spread", {}).get(key)
    text = _seconds(row[key]) + unit + ("" if spread is None else f" ({spread:.0%})")
    return _flag(text, row, key)


def _ratio_table(result: dict) -> Table:
    """gradfit's time against each peer's (or gradfit's loop alone, without peers); the peers that did not run
    and why, below it."""
    table = titled_table(
        "gradfit against the alternatives: median (spread); ratio gradfit / other below 1: gradfit is faster",
        caption_justify="left",
    )
    for name in ("config: compared with", "gradfit", "other", "ratio"):
        table.add_column(name, justify="left" if name.startswith("config") else "right")
    peers, notes = result.get("peers", {}), []
    for key, row in _in_summary_order(peers):
        if not row.get("available", True):
            notes.append(escape(f"{_peer_name(key)} not run: {row['reason']}"))
            continue
        steps = f", {row['steps']} steps" if "steps" in row else ""  # a short run weighs its fixed costs more
        per_step = "gradfit_s_per_step" in row
        mine, theirs = ("gradfit_s_per_step", "peer_s_per_step") if per_step else ("gradfit_s", "peer_s")
        unit = "/step" if per_step else "/fit"
        table.add_row(
            escape(f"{row['config']}{steps}: {_peer_name(key)}"),
            _timed(row, mine, unit),
            _timed(row, theirs, unit),
            _flag(f"{row['time_ratio']:.3g}", row, mine, theirs),
        )
    if not peers:
        for row in result["training"]:
            table.add_row(escape(f"{row['config']}: gradfit's loop"), _timed(row, "loop_s_per_step", "/step"), "-", "-")
    if any(row.get("unstable") for row in [*peers.values(), *result["training"]]):
        notes.append(UNSTABLE_NOTE)
    table.caption = "\n".join(notes) or None
    return table


def verdict(result: dict) -> str:
    """One line: gradfit's overhead over the minimal JAX loop, and how much faster or slower than each other peer."""
    peers = {k: row for k, row in result.get("peers", {}).items() if row.get("available", True)}
    if not peers:
        return "[bold]Verdict:[/] no peer measured: nothing to compare gradfit's loop with."
    minimal = [row for key, row in peers.items() if key.startswith("minimal_jax_loop")]
    parts = []
    if minimal:
        parts.append(
            "gradfit's whole loop takes "
            + ", ".join(f"{row['time_ratio']:.3g}x ({escape(row['config'])})" for row in minimal)
            + " the time of a bare jit + lax.scan loop (its framework overhead)"
        )
    for key, row in _in_summary_order(peers):
        if key.startswith("minimal_jax_loop"):
            continue
        ratio, name = row["time_ratio"], _peer_name(key)
        speed = f"{1 / ratio:.3g}x faster than" if ratio < 1 else f"{ratio:.3g}x slower than"
        parts.append(f"{speed} {name} ({escape(row['config'])})")
    return "[bold]Verdict:[/] " + "; ".join(parts) + "." + _caveat(result, peers)


def _caveat(result: dict, peers: dict) -> str:
    """Why the verdict may not hold: a busy machine (more runnable tasks than cores when bench started), or
    figures whose samples disagreed."""
    env = result["environment"]
    load = (env.get("load_average") or [0.0])[0]
    if load >= env["cpu_cores"]:
        return (
            f" The machine was busy (load average {load:.2f} on {env['cpu_cores']} cores): every time is "
            "inflated, thread pools (PyTorch's, scikit-learn's BLAS) most; rerun on a quieter machine."
        )
    if any(row.get("unstable") for row in peers.values()):
        return " Some figures are unstable (?): rerun on a quieter machine."
    return ""


def _environment_table(environment: dict) -> Table:
    table = titled_table("Environment", show_header=False, title_justify="left")
    for key, value in environment.items():
        table.add_row(key, escape(str(value)))
    return table


_STEP_COLUMNS = ("python loop", "fused chunk", "fused examples/s", "fused / python", "GFLOP/s", "of peak")


def _training_table(rows: list[dict]) -> Table:
    """Steps/s of gradfit's loop per config; of the Python loop and the fused chunk too where measured."""
    table = titled_table(
        "Training throughput (steps/s; medians of samples after warm-up)", title_justify="left", caption=UNSTABLE_NOTE
    )
    stepped = all("fused" in row for row in rows)  # the section "throughput" ran
    names = ("config", "params", "batch", "compile s", "gradfit loop", "evaluation share")
    for name in names + (_STEP_COLUMNS if stepped else ()):
        table.add_column(name, justify="left" if name == "config" else "right")
    for row in rows:
        loop = row["loop"]
        cells = [
            f"{row['config']} ({row['optimizer']})",
            f"{row['num_params']:,}",
            str(row["batch_size"]),
            f"{row['compile_time_s']:.2f}",
            _flag(_rate(loop["steps_per_s"]), row, "loop_s_per_step"),
            f"{loop['eval_share']:.1%}",
        ]
        if stepped:
            peak = row.get("fraction_of_peak")
            cells += [
                _flag(_rate(row["python_loop"]["steps_per_s"]), row, "python_loop_s_per_step"),
                _flag(_rate(row["fused"]["steps_per_s"]), row, "fused_s_per_step"),
                _rate(row["fused"]["examples_per_s"]),
                _flag(f"{row['fused_speedup']:.2f}x", row, "fused_s_per_step", "python_loop_s_per_step"),
                f"{row['gflops_per_s']:.3g}",
                ", ".join(f"{k} {v:.1%}" for k, v in peak.items()) if peak else "-",
            ]
        table.add_row(*cells)
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
    e, fit = data["growth_exponent"], data.get("growth_fit")
    if e["reverse"] is not None:
        table.caption = (
            f"growth exponent vs parameters{_fitted_over(fit, 'params')}: reverse {e['reverse']:.2f}, "
            f"forward {e['forward']:.2f}, finite differences {e['finite_difference']:.2f}, "
            f"NumPy {e['manual_numpy']:.2f} (0: constant multiple of a loss; 1: one pass per parameter)"
        )
    elif fit is not None:
        table.caption = f"no growth exponent: {fit['reason']}"
    flops = [row.get("reverse_flops_vs_loss") for row in data["rows"]]
    if table.caption and all(flops):
        table.caption += "; XLA flop count, reverse / loss: " + ", ".join(f"{f:.2f}" for f in flops)
    return table


def _fitted_over(fit: dict | None, name: str) -> str:
    """' (fitted over params = 513, 2,049: one call above 5x the 11 us dispatch floor)', or '' without a fit."""
    if not fit:
        return ""
    sizes = ", ".join(f"{size:,}" for size in fit["sizes"])
    return (
        f" (fitted over {name} = {sizes}: one call above {fit['factor']:g}x the "
        f"{_seconds(fit['dispatch_floor_s'])} dispatch floor)"
    )


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
        if "batch_size" in row:
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
    fit = study.get("growth_fit")
    floor = f"{fit['factor']:g}x the {_seconds(fit['dispatch_floor_s'])}" if fit else "several times the"
    notes = [
        f"growth: the slope of log(ratio) against log(n) over the n where one f takes over {floor} dispatch floor"
        + (f" (n = {', '.join(map(str, fit['sizes']))})" if fit and not fit["reason"] else "")
        + " (0: a constant multiple of f, the cheap gradient principle; 1: one pass per variable)"
        + (f"; none here, {fit['reason']}" if fit and fit["reason"] else "")
        + "; for the expression sizes, against log(n) over n >= 2",
        "error: norm-relative, against reverse-mode AD",
        "symbolic: SymPy's gradient lambdified to NumPy, against compiled f; in brackets, against f lambdified "
        "the same way; set-up is the one-off differentiation and lambdify",
        f"symbolic differentiation: {study['symbolic']}"
        + (f"; rows without it: {skipped}" if skipped and skipped != study["symbolic"] else ""),
        UNSTABLE_NOTE,
    ]
    return escape("\n".join(notes[:-1])) + "\n" + notes[-1]
