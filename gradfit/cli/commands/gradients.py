"""``gradfit compare-grads`` and ``gradfit trace``: check the gradient of a config's loss, and show how it is
computed operation by operation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from gradfit.cli.options import (
    FORCE_HELP,
    JSON_HELP,
    JSON_OUT_HELP,
    CheckPrecision,
    JsonOutput,
    TraceMode,
    checked_output,
    data_files,
    set_option,
    stderr,
    use_compile_cache,
)
from gradfit.errors import ConfigError, RunDirError

if TYPE_CHECKING:
    from gradfit.cli.render.progress import GradcheckProgress
    from gradfit.config.load import GradfitConfig, ResolvedConfig
    from gradfit.gradients.check_report import Report
    from gradfit.gradients.problem import Problem


def _problem_config(
    config: Path | None, at: Path | None, overrides: list[str] | None
) -> tuple[Path | None, ResolvedConfig, list[Path]]:
    """(config path or None, resolved config, files never to write) for compare-grads and trace: the config
    given, else the run's (``--at``), else the shipped configs/logreg.yaml (``EXAMPLES``)."""
    from gradfit.config.load import EXAMPLES, resolve_config
    from gradfit.runs.rundir import own_files

    if config is None and at is not None:
        from gradfit.runs.rundir import RunDir

        config = RunDir(at).config_file
        if not config.is_file():
            raise RunDirError(f"{at}: not a gradfit run directory (no config.yaml); pass the config as well")
    resolved = resolve_config(config, [*([] if config else EXAMPLES["logreg"]), *(overrides or [])])
    protected = [
        *([] if config is None else [config]),
        *data_files(resolved.config),
        *([] if at is None else own_files(at)),
    ]
    return config, resolved, protected


def compare_grads(
    config: Path | None = typer.Argument(
        None, help="YAML config; omit for the shipped configs/logreg.yaml (breast cancer, l2 = 0.001)."
    ),
    set_: list[str] | None = set_option(),
    at: Path | None = typer.Option(None, "--at", help="Check at the parameters of this run directory."),
    precision: CheckPrecision = typer.Option(
        "float64", help="Precision of the gradient checked (finite differences are float64 either way)."
    ),
    step_sweep: bool = typer.Option(
        False, "--step-sweep", help="Also tabulate the finite-difference error against the step h, 1e-1 to 1e-10."
    ),
    old_sweep: bool = typer.Option(False, "--sweep", hidden=True),  # gradfit 0.1's spelling of --step-sweep
    step: float | None = typer.Option(
        None, "--step", min=1e-15, max=1.0, help="Finite-difference step factor instead of eps^(1/3)."
    ),
    full: bool = typer.Option(False, "--full", help="Check every coordinate, however many parameters."),
    directions: int = typer.Option(8, min=1, help="Random directions per group (directional mode)."),
    coordinates: int = typer.Option(16, min=0, help="Sampled coordinates per group (directional mode)."),
    max_rows: int = typer.Option(10_000, "--rows", min=1, help="Use at most this many training rows."),
    seed: int = typer.Option(0, min=0, help="Seed for the directions and the coordinate sample."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress on stderr; the tables and the verdict still print."
    ),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
    json_file: Path | None = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Check the gradient: reverse-mode AD against forward mode, finite differences and the hand-derived gradient.

    The loss is the config's training objective (with its L2 term) at the parameters training starts from (logistic regression, which starts at zero: a seeded random point). Models up to 5,000 parameters are checked entry by entry; larger ones along random directions and sampled coordinates per parameter group, and a failing direction is narrowed down to its worst entry. Finite differences are taken in float64 with a noise estimate measured from the loss itself; a recheck at a smaller step overturns a failure only when the disagreement shrinks as truncation error does. Exit code 0 when the gradient passes (or is inconclusive: the differences could not resolve an entry), 1 when it fails, 2 for bad input. Progress (loading, compiling, each parameter group and method) goes to stderr, erased before the tables on a terminal.

    [bold]Examples[/]

      gradfit compare-grads
      gradfit compare-grads configs/mlp.yaml --json-out check.json
      gradfit compare-grads configs/mlp.yaml --at runs/mlp-20261126-101500
      gradfit compare-grads configs/logreg.yaml --step-sweep
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    config, resolved, protected = _problem_config(config, at, set_)
    source = str(config) if config else "configs/logreg.yaml (built in: breast cancer, l2 = 0.001)"
    output = JsonOutput.checked(json_flag, json_file, force, protected)
    console = output.console()
    if old_sweep:
        stderr.print("[yellow]note:[/] --sweep is now --step-sweep", highlight=False, soft_wrap=True)
    from gradfit.cli.render.progress import GradcheckProgress

    progress = None if quiet else GradcheckProgress(stderr)  # stderr, whichever console the tables go to
    options = {  # gradcheck.CheckOptions, made once jax is imported
        "precision": precision,
        "step": step,
        "full": True if full else None,
        "directions": directions,
        "coordinates": coordinates,
        "seed": seed,
    }
    try:
        checked, result = _check(resolved.config, at, max_rows, step_sweep or old_sweep, options, progress)
    finally:
        if progress is not None:
            progress.close()  # before the tables: a terminal's spinner is erased, not printed over
    _print_check(console, source, checked, result)
    output.emit(result.to_json())
    if result.verdict == "fail":
        raise typer.Exit(1)


def _check(
    config: GradfitConfig,
    at: Path | None,
    max_rows: int,
    sweep: bool,
    options: dict[str, Any],
    progress: GradcheckProgress | None,
) -> tuple[Problem, Report]:
    """Set up the problem and check it (``options``: the fields of ``CheckOptions``), telling ``progress`` each
    stage as it starts."""
    if progress is not None:
        progress.on_stage("starting JAX")  # from the first second: importing jax takes seconds
    use_compile_cache()
    from gradfit.gradients import gradcheck, problem

    if progress is not None:
        progress.on_stage("loading data")
    checked = problem.from_config(config, None if at is None else str(at), max_rows)
    result = gradcheck.check_gradient(
        checked.loss_fn,
        checked.params,
        checked.manual_grad,
        gradcheck.CheckOptions(**options),
        args=checked.args,
        sweep=sweep,
        callbacks=progress,
    )
    return checked, result


def _print_check(console: Console, source: str, checked: Problem, result: Report) -> None:
    """The problem checked, a table per parameter group, the step sweep (if asked for) and the verdict."""
    from gradfit.cli.render import gradients as rendering

    console.print(
        f"problem: {escape(source)}\n{escape(checked.description)}\n{result.num_params:,} parameters, "
        f"reverse AD in {result.precision}, {result.mode} check, finite-difference step "
        f"{result.step_rule}",
        highlight=False,
    )
    for table in rendering.gradcheck_tables(result):
        console.print(table)
    if result.sweep is not None:
        console.print(rendering.sweep_table(result.sweep, result.sweep_shape))
    style = {"pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow"}[result.verdict]
    console.print(f"verdict: [{style}]{result.verdict.upper()}[/]")


def trace(
    config: Path | None = typer.Argument(
        None, help="YAML config; omit for the shipped configs/logreg.yaml (breast cancer, l2 = 0.001)."
    ),
    set_: list[str] | None = set_option(),
    rows: int = typer.Option(1, "--rows", min=1, help="Training rows the loss is traced on."),
    param: str | None = typer.Option(
        None, "--param", metavar="NAME[INDEX]", help="theta_j, e.g. w[3] or layers/0/w[2,5]; default: the first weight."
    ),
    mode: TraceMode = typer.Option("both", help="Tangents (forward), adjoints (reverse), or both."),
    at: Path | None = typer.Option(None, "--at", help="Trace at the parameters of this run directory."),
    precision: CheckPrecision = typer.Option("float64", help="Precision of the trace's arithmetic."),
    graph: Path | None = typer.Option(
        None,
        "--graph",
        metavar="FILE.dot",
        help="Also write the computational graph as Graphviz DOT (and SVG); - prints only the DOT text.",
    ),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
    json_file: Path | None = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Show the evaluation trace of the loss: every intermediate v_k with its value, forward tangent and adjoint.

    The training objective's jaxpr, evaluated operation by operation on a few rows at the parameters training starts from (or a run's): the primal value of each v_k, its tangent dv_k/dtheta_j (forward mode, one JVP per operation) and its adjoint dL/dv_k (reverse mode, one VJP per operation), as in Baydin et al. 2018, tables 2 and 3. The last table sets dL/dtheta_j from forward mode, reverse mode and the hand-derived gradient side by side.

    [bold]Examples[/]

      gradfit trace
      gradfit trace --param w[3] --mode reverse
      gradfit trace configs/mlp.yaml --rows 2 --param layers/1/w[0,0] --graph mlp.dot
      gradfit trace --at runs/logreg-20261130-101500 --json
      gradfit trace --graph - | dot -Tpng > graph.png
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    config, resolved, protected = _problem_config(config, at, set_)
    to_stdout = _check_trace_outputs(graph, json_flag, json_file)
    output = JsonOutput.checked(json_flag, json_file, force, [*protected, *([graph] if graph else [])])
    if graph is not None and not to_stdout:
        checked_output(graph, "--graph", force, [*protected, *([json_file] if json_file else [])])
    console = output.console()
    from gradfit.cli.render.gradients import trace_tables
    from gradfit.core.precision import Precision
    from gradfit.gradients import problem
    from gradfit.gradients import trace as engine

    point = problem.from_config(resolved.config, None if at is None else str(at), rows, start=True)
    chosen = Precision(precision)
    with chosen.scope():
        params, args = point.cast(chosen.param_dtype)
        result = engine.evaluation_trace(point.loss_fn, params, args, param, mode, point.manual_grad)
    if to_stdout:
        typer.echo(engine.to_dot(result), nl=False)
        return
    source = str(config) if config else "configs/logreg.yaml (built in)"
    console.print(f"problem: {escape(source)}\n{escape(point.description)}, in {precision}", highlight=False)
    for table in trace_tables(result):
        console.print(table)
    if graph is not None:
        console.print(escape(engine.write_graph(result, graph, force)), highlight=False)
    output.emit(result.to_json())


def _check_trace_outputs(graph: Path | None, json_flag: bool, json_file: Path | None) -> bool:
    """Refuses --graph and the JSON output where they would collide; True when the DOT text goes to stdout."""
    from gradfit.files import STDOUT

    to_stdout = graph is not None and str(graph) == STDOUT  # the DOT text itself, for a pipe into `dot`
    if to_stdout and json_flag:
        raise ConfigError("--graph - and --json both write to standard output; send one to a file")
    if graph is not None and json_file is not None and Path(graph).resolve() == Path(json_file).resolve():
        raise ConfigError(f"--graph and --json-out both name {graph}; choose two files")
    return to_stdout
