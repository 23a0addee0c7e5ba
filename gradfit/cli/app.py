"""The ``gradfit`` command line. The only place that prints errors and chooses exit codes.

jax is imported inside the commands that need it, so ``gradfit --help`` and ``gradfit config ...`` stay fast.
Exit codes: 0 success, 1 a failed training or check, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from gradfit.training import supervise
from gradfit.errors import ConfigError, GradfitError, RunDirError, TrainingFailed
from gradfit.version import __version__

def _no_type_after_flags() -> None:
    """Typer shows ``<bool>`` after every flag, as if ``--json`` took a value; a flag takes none, so show nothing."""
    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "flags_plain", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.flags_plain = True
    option.display_type_rich = display_type_rich


_no_type_after_flags()

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Inspect and check config files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
data_app = typer.Typer(help="Convert and describe data files (CSV, .npz, converted folders).", no_args_is_help=True)
app.add_typer(data_app, name="data")

stderr = Console(stderr=True)

SET_HELP = "Override a config key, e.g. [bold]--set optimizer.learning_rate=3e-3[/] (value parsed as YAML; repeatable)."


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Precision(str, Enum):
    float32 = "float32"
    float64 = "float64"
    bfloat16 = "bfloat16"


class CheckPrecision(str, Enum):
    float32 = "float32"
    float64 = "float64"


@contextlib.contextmanager
def user_errors():
    """Turn library errors into a red message and an exit code, never a traceback."""
    try:
        yield
    except GradfitError as exc:
        label = "[bold yellow]interrupted:[/]" if exc.exit_code == 130 else "[bold red]error:[/]"
        stderr.print(f"{label} {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:  # outside a training loop (which saves its state itself)
        stderr.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except BrokenPipeError:  # stdout was closed by its reader (`| head`): it has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit's final flush does not fail again
        raise typer.Exit(0) from None
    except OSError as exc:  # a full disk, a folder without write permission: not the input's fault
        where = f"{exc.filename}: " if exc.filename else ""
        stderr.print(f"[bold red]error:[/] {escape(where + (exc.strerror or str(exc)))}", highlight=False,
                     soft_wrap=True)
        raise typer.Exit(1) from None


JSON_HELP = "Print the result as JSON, alone on stdout (tables and progress go to stderr)."
JSON_OUT_HELP = "Also write the result as JSON to this file ([bold]-[/]: stdout); an existing file needs --force."
FORCE_HELP = "Replace --json-out (or --out) if the file exists."


@dataclasses.dataclass
class JsonOutput:
    """Where a command's JSON result goes: stdout (``--json``, or ``--json-out -``), a file (``--json-out``), both
    or neither. Checked before the work starts, so a bad target never wastes a run."""

    to_stdout: bool
    path: Optional[Path]

    @classmethod
    def checked(cls, flag: bool, path: Optional[Path], force: bool, protected=()) -> "JsonOutput":
        from gradfit.files import STDOUT, check_output

        if path is not None and str(path) == STDOUT:
            return cls(True, None)
        return cls(flag, None if path is None else check_output(path, "--json-out", force, protected))

    def console(self) -> Console:
        """Where tables go: stderr when stdout carries the JSON."""
        from gradfit.cli.render import stdout_console

        return stderr if self.to_stdout else stdout_console()

    def emit(self, result) -> None:
        from gradfit.runs.rundir import to_jsonable

        text = json.dumps(to_jsonable(result), indent=2, allow_nan=False) + "\n"
        if self.path is not None:
            from gradfit.files import write_atomic

            write_atomic(self.path, text)
        if self.to_stdout:
            typer.echo(text, nl=False)


def _use_compile_cache(wanted: bool = True, quiet: bool = False) -> None:
    """Switch JAX's persistent compilation cache on, unless the user turned it off (see gradfit.runtime.compile_cache)."""
    from gradfit.runtime import compile_cache

    folder = compile_cache.directory()
    if wanted and folder is not None:
        problem = compile_cache.enable(folder)
        if problem and not quiet:
            stderr.print(f"[yellow]note:[/] {escape(problem)}", highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradfit {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Train models from YAML configs with JAX, and trust the gradient.

    [bold]Examples[/]

      gradfit train configs/logreg.yaml
      gradfit train configs/mlp.yaml --set optimizer.learning_rate=3e-3 --set train.epochs=20
      gradfit config show configs/mlp.yaml
      gradfit compare-grads configs/mlp.yaml
      gradfit trace --param w[3]
      gradfit bench --quick
      gradfit eval runs/logreg-20261126-101500 --data new.csv
      gradfit predict runs/mlp-20261126-101500 unlabeled.csv --out predictions.csv --proba
      gradfit inference runs/logreg-20261126-101500
    """


@app.command()
def train(
    config: Optional[Path] = typer.Argument(
        None, help="YAML config file (see configs/ and [bold]gradfit config show[/]); with --resume, defaults to "
                   "the run's own config.yaml."),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help=SET_HELP, metavar="KEY=VALUE"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o",
                                           help="Parent folder of the new run directory (default: runs)."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                          help="Continue this run in place from its newest checkpoint."),
    force: bool = typer.Option(False, "--force", help="With --resume: continue even though the config differs "
                                                      "(the changes are recorded in summary.json). Also replaces "
                                                      "an existing --json-out file."),
    device: Optional[Device] = typer.Option(None, help="Shortcut for --set runtime.device=..."),
    precision: Optional[Precision] = typer.Option(None, help="Shortcut for --set runtime.precision=..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output, only errors."),
    json_flag: bool = typer.Option(False, "--json", help="Print summary.json alone on stdout (progress goes to "
                                                         "stderr)."),
    json_file: Optional[Path] = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    no_compile_cache: bool = typer.Option(
        False, "--no-compile-cache", help="Compile from scratch instead of loading compiled programs from JAX's "
                                          "persistent cache (folder: $GRADFIT_COMPILE_CACHE, default "
                                          "~/.cache/gradfit/jax; GRADFIT_COMPILE_CACHE=off also turns it off)."),
    devices: Optional[str] = typer.Option(
        None, "--devices", metavar="auto|N|ID,ID", rich_help_panel="Scaling out",
        help="Shortcut for --set runtime.devices=...: every device of the platform (auto), the first N, or these "
             "device ids (one id: 3,). The minibatch is split across them."),
    distributed: bool = typer.Option(
        False, "--distributed", rich_help_panel="Scaling out",
        help="Join a group of processes (jax.distributed), one per host or GPU set, forming one mesh; only process "
             "0 writes. Start the same command in every process."),
    coordinator: Optional[str] = typer.Option(
        None, "--coordinator", metavar="HOST:PORT", rich_help_panel="Scaling out",
        help="Process 0's address (default: $JAX_COORDINATOR_ADDRESS, or SLURM/Open MPI detection)."),
    num_processes: Optional[int] = typer.Option(
        None, "--num-processes", min=1, rich_help_panel="Scaling out",
        help="Processes in the group (default: $JAX_NUM_PROCESSES, or detected)."),
    process_id: Optional[int] = typer.Option(
        None, "--process-id", min=0, rich_help_panel="Scaling out",
        help="This process's number, 0 to N-1 (default: $JAX_PROCESS_ID, or detected)."),
    init_timeout: int = typer.Option(
        supervise.INIT_TIMEOUT_S, "--init-timeout", min=1, metavar="SECONDS", rich_help_panel="Scaling out",
        help="Give up (exit 2) when the group has not formed within this time."),
    heartbeat_timeout: int = typer.Option(
        supervise.HEARTBEAT_TIMEOUT_S, "--heartbeat-timeout", min=2, metavar="SECONDS", rich_help_panel="Scaling out",
        help="A process silent for this long counts as lost, and the others stop (exit 1)."),
) -> None:
    """Train the model a config describes and write a new run directory, or resume a stopped run.

    The run directory [bold]runs/<name>-<timestamp>/[/] holds config.yaml (resolved), metrics.jsonl, params.npz, preprocessing.json, summary.json and checkpoints/. Existing runs are never overwritten. Ctrl-C finishes the steps in flight, writes a checkpoint and prints the command that resumes the run; a resumed run continues bit-identically to one that was never stopped.

    [bold]Examples[/]

      gradfit train configs/logreg.yaml
      gradfit train configs/mlp.yaml --set optimizer.learning_rate=3e-3 --set train.epochs=20
      gradfit train configs/logreg.yaml --device cpu --precision float64 --json
      gradfit train --resume runs/mlp-20261126-101500
      gradfit train configs/mlp.yaml --devices 4
      gradfit train configs/mlp.yaml --distributed --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0
    """
    from gradfit.config.load import resolve_config

    overrides = list(set_ or [])
    if devices is not None:
        overrides.append(f"runtime.devices={_devices_value(devices)}")
    if device is not None:
        overrides.append(f"runtime.device={device.value}")
    if precision is not None:
        overrides.append(f"runtime.precision={precision.value}")
    with user_errors():
        if resume is None:
            if config is None:
                raise GradfitError("missing CONFIG: gradfit train CONFIG, or gradfit train --resume RUN_DIR")
            if force and json_file is None:
                raise GradfitError("--force applies with --resume or --json-out")
        else:
            if out_dir is not None:
                raise GradfitError("--out-dir does not apply with --resume: the run continues in its own folder")
            from gradfit.runs.rundir import RunDir

            config = config or RunDir.open(resume).config_file
        if not distributed:
            given = [flag for flag, value in (("--coordinator", coordinator), ("--num-processes", num_processes),
                                              ("--process-id", process_id)) if value is not None]
            if given:
                raise GradfitError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} with --distributed")
        resolved = resolve_config(config, overrides)
        from gradfit.cli import render
        from gradfit.runs.rundir import own_files

        protected = [config, *_data_files(resolved.config), *([] if resume is None else own_files(resume))]
        output = JsonOutput.checked(json_flag, json_file, force, protected)
        console = output.console()
        progress = None if quiet else render.TrainProgress(console)
        try:
            if progress is not None:
                progress.on_stage("starting JAX")  # from the first second, not after the imports and compiling
            _use_compile_cache(not no_compile_cache, quiet)
            if distributed:
                from gradfit.runtime import mesh as scale

                if progress is not None:
                    progress.on_stage("joining the other processes")
                scale.start_processes(coordinator, num_processes, process_id, init_timeout, heartbeat_timeout)
            callbacks = supervise.Telling(progress) if distributed else progress
            from gradfit import api

            if resume is None:
                summary = api.fit(resolved.config, out_dir=out_dir or Path("runs"), callbacks=callbacks)
            else:
                summary = api.resume(resume, resolved.config, force=force, callbacks=callbacks)
        except TrainingFailed as exc:
            if exc.summary is not None:
                output.emit(exc.summary)
            raise
        finally:
            if progress is not None:
                progress.close()
        if not quiet:
            console.print(render.summary_table(summary))
        output.emit(summary)


class Metric(str, Enum):
    val_loss = "val_loss"
    val_accuracy = "val_accuracy"


@app.command()
def sweep(
    config: Optional[Path] = typer.Argument(
        None, help="YAML config: the base of every member; its [bold]sweep:[/] section, if any, is the plan."),
    grid: Optional[List[str]] = typer.Option(
        None, "--grid", "-g", metavar="KEY=[V,...]", help="Try these values of a config key (repeatable: every "
        "combination), e.g. [bold]--grid optimizer.learning_rate=[1e-3,3e-3,1e-2][/]."),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Train each setting with N seeds (seed, seed+1, "
                                                                     "...): mean +- std in the ranking."),
    random: Optional[int] = typer.Option(None, "--random", min=1, metavar="N",
                                         help="Draw N settings at random from --space (combined with --grid)."),
    space: Optional[List[str]] = typer.Option(
        None, "--space", metavar="KEY=DIST", help="A random-search range: [bold]KEY={log_uniform: [1e-4, 1e-1]}[/], "
        "{uniform: [lo, hi]}, {int_uniform: [lo, hi]} or a list of choices (repeatable)."),
    metric: Optional[Metric] = typer.Option(None, help="Rank settings by this (default val_loss, or the section's)."),
    parallel: Optional[str] = typer.Option(
        None, "--parallel", metavar="auto|K", help="Members trained side by side in one program (auto: as many as the "
                                                   "device memory holds, estimated before allocating)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help=SET_HELP, metavar="KEY=VALUE"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o",
                                           help="Parent folder of the new sweep directory (default: runs)."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="SWEEP_DIR",
                                          help="Finish this sweep's unfinished members (interrupted ones continue "
                                               "from their checkpoints, bit for bit)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output, only errors and the ranking."),
    json_flag: bool = typer.Option(False, "--json", help="Print sweep.json alone on stdout (tables go to stderr)."),
    json_file: Optional[Path] = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    no_compile_cache: bool = typer.Option(False, "--no-compile-cache",
                                          help="Compile from scratch instead of using JAX's persistent cache."),
) -> None:
    """Train many settings of one config in one compiled program, and rank them.

    Members that differ only in values (learning rate, l2, momentum, b1/b2, eps, weight decay, clip norm, the final fraction of a schedule, the seed) train side by side under jax.vmap in one program; members that differ in shapes or choices (hidden sizes, activation, optimizer, batch size, precision, ...) form groups, compiled once each. Every member is a normal run directory (eval, predict, inference and train --resume accept it) under [bold]runs/<name>-sweep-<timestamp>/members/[/], next to sweep.json (members, groups, ranking). A diverging member is marked and the others go on. Ctrl-C checkpoints every member in training (exit 130); --resume finishes the rest. Exit code 0 when a member completed, 1 when none did.

    [bold]Examples[/]

      gradfit sweep configs/mlp.yaml --grid optimizer.learning_rate=[1e-3,3e-3,1e-2] --grid model.l2=[0,1e-4] --seeds 4
      gradfit sweep configs/mlp.yaml --random 16 --space "optimizer.learning_rate={log_uniform: [1e-4, 1e-1]}"
      gradfit sweep configs/sweeps/mlp-lr.yaml --metric val_accuracy --json
      gradfit sweep --resume runs/mlp-sweep-20261201-101500
    """
    from gradfit.config.load import resolve_config

    with user_errors():
        options = dict(grid=grid or [], seeds=seeds, random=random, space=space or [],
                       metric=None if metric is None else metric.value,
                       parallel=None if parallel is None else (int(parallel) if parallel.isdigit() else parallel))
        if resume is not None:
            given = [f"--{k}" for k, v in options.items() if v not in (None, [])] + \
                (["CONFIG"] if config else []) + (["--set"] if set_ else []) + (["--out-dir"] if out_dir else [])
            if given:
                raise GradfitError(f"{', '.join(given)} do(es) not apply with --resume: the sweep continues as planned "
                                   "(its sweep.yaml)")
        elif config is None:
            raise GradfitError("missing CONFIG: gradfit sweep CONFIG --grid KEY=[...], or gradfit sweep --resume "
                               "SWEEP_DIR")
        from gradfit.sweeps import plan as sweeps

        plan = None
        if resume is None:
            resolved = resolve_config(config, list(set_ or []), sweep=True)
            plan = sweeps.plan_sweep(resolved, **options)
            protected = [config, *_data_files(resolved.config)]
        else:
            protected = [resume / "sweep.json", resume / "sweep.yaml"]
        output = JsonOutput.checked(json_flag, json_file, force, protected)
        console = output.console()
        from gradfit.cli import render

        progress = None if quiet else render.SweepProgress(console)
        state = None
        try:
            if progress is not None:
                progress.on_stage("starting JAX")
            _use_compile_cache(not no_compile_cache, quiet)
            from gradfit.sweeps import run as sweeping

            if resume is None:
                state = sweeping.start(resolved, plan, out_dir or Path("runs"), progress)
            else:
                state = sweeping.resume(resume, progress)
        except TrainingFailed as exc:
            if exc.summary is not None:
                console.print(render.sweep_ranking(exc.summary))
                output.emit(exc.summary)
            raise
        finally:
            if progress is not None:
                progress.close()
        console.print(render.sweep_ranking(state))
        output.emit(state)


def _devices_value(text: str) -> str:
    """--devices 0,2 -> [0,2] for --set; auto and N pass as they are."""
    return f"[{text}]" if "," in text else text


def _data_files(config) -> list[Path]:
    """The data file a config reads, if any: never a place to write output."""
    return [Path(config.data.path)] if config.data.source == "file" and config.data.path else []


def _problem_config(config: Optional[Path], at: Optional[Path], overrides: Optional[List[str]]):
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
    protected = [*([] if config is None else [config]), *_data_files(resolved.config),
                 *([] if at is None else own_files(at))]
    return config, resolved, protected


@app.command("compare-grads")
def compare_grads(
    config: Optional[Path] = typer.Argument(
        None, help="YAML config; omit for the shipped configs/logreg.yaml (breast cancer, l2 = 0.001)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help=SET_HELP, metavar="KEY=VALUE"),
    at: Optional[Path] = typer.Option(None, "--at", help="Check at the parameters of this run directory."),
    precision: CheckPrecision = typer.Option(CheckPrecision.float64,
                                             help="Precision of the gradient checked (finite differences are float64 either way)."),
    sweep: bool = typer.Option(False, "--sweep", help="Also tabulate the error against h from 1e-1 to 1e-10."),
    step: Optional[float] = typer.Option(None, "--step", min=1e-15, max=1.0,
                                         help="Finite-difference step factor instead of eps^(1/3)."),
    full: bool = typer.Option(False, "--full", help="Check every coordinate, however many parameters."),
    directions: int = typer.Option(8, min=1, help="Random directions per group (directional mode)."),
    coordinates: int = typer.Option(16, min=0, help="Sampled coordinates per group (directional mode)."),
    max_rows: int = typer.Option(10_000, "--rows", min=1, help="Use at most this many training rows."),
    seed: int = typer.Option(0, min=0, help="Seed for the directions and the coordinate sample."),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
    json_file: Optional[Path] = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Check the gradient: reverse-mode AD against forward mode, finite differences and the hand-derived gradient.

    The loss is the config's training objective (with its L2 term) at the parameters training starts from (logistic regression, which starts at zero: a seeded random point). Models up to 5,000 parameters are checked entry by entry; larger ones along random directions and sampled coordinates per parameter group, and a failing direction is narrowed down to its worst entry. Finite differences are taken in float64 with a noise estimate measured from the loss itself; a recheck at a smaller step overturns a failure only when the disagreement shrinks as truncation error does. Exit code 0 when the gradient passes (or is inconclusive: the differences could not resolve an entry), 1 when it fails, 2 for bad input.

    [bold]Examples[/]

      gradfit compare-grads
      gradfit compare-grads configs/mlp.yaml --json-out check.json
      gradfit compare-grads configs/mlp.yaml --at runs/mlp-20261126-101500
      gradfit compare-grads configs/logreg.yaml --sweep
    """
    with user_errors():
        config, resolved, protected = _problem_config(config, at, set_)
        source = str(config) if config else "configs/logreg.yaml (built in: breast cancer, l2 = 0.001)"
        output = JsonOutput.checked(json_flag, json_file, force, protected)
        console = output.console()
        _use_compile_cache()
        from gradfit.gradients import gradcheck
        from gradfit.gradients import problem
        from gradfit.cli import render

        options = gradcheck.CheckOptions(precision=precision.value, step=step, full=True if full else None,
                                         directions=directions, coordinates=coordinates, seed=seed)
        checked = problem.from_config(resolved.config, None if at is None else str(at), max_rows)
        result = gradcheck.check_gradient(checked.loss_fn, checked.params, checked.manual_grad, options,
                                          args=checked.args, sweep=sweep)
        console.print(f"problem: {escape(source)}\n{escape(checked.description)}\n{result.num_params:,} parameters, "
                      f"reverse AD in {result.precision}, {result.mode} check, finite-difference step "
                      f"{result.step_rule}", highlight=False)
        for table in render.gradcheck_tables(result):
            console.print(table)
        if result.sweep is not None:
            console.print(render.sweep_table(result.sweep, result.sweep_shape))
        style = {"pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow"}[result.verdict]
        console.print(f"verdict: [{style}]{result.verdict.upper()}[/]")
        output.emit(result.to_json())
        if result.verdict == "fail":
            raise typer.Exit(1)


class Study(str, Enum):
    helmholtz = "helmholtz"


class TraceMode(str, Enum):
    forward = "forward"
    reverse = "reverse"
    both = "both"


@app.command()
def trace(
    config: Optional[Path] = typer.Argument(
        None, help="YAML config; omit for the shipped configs/logreg.yaml (breast cancer, l2 = 0.001)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help=SET_HELP, metavar="KEY=VALUE"),
    rows: int = typer.Option(1, "--rows", min=1, help="Training rows the loss is traced on."),
    param: Optional[str] = typer.Option(None, "--param", metavar="NAME[INDEX]",
                                        help="theta_j, e.g. w[3] or layers/0/w[2,5]; default: the first weight."),
    mode: TraceMode = typer.Option(TraceMode.both, help="Tangents (forward), adjoints (reverse), or both."),
    at: Optional[Path] = typer.Option(None, "--at", help="Trace at the parameters of this run directory."),
    precision: CheckPrecision = typer.Option(CheckPrecision.float64, help="Precision of the trace's arithmetic."),
    graph: Optional[Path] = typer.Option(None, "--graph", metavar="FILE.dot",
                                         help="Also write the computational graph as Graphviz DOT (and SVG); "
                                              "- prints only the DOT text."),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
    json_file: Optional[Path] = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
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
    """
    with user_errors():
        config, resolved, protected = _problem_config(config, at, set_)
        from gradfit.files import STDOUT, check_output

        to_stdout = graph is not None and str(graph) == STDOUT  # the DOT text itself, for a pipe into `dot`
        if to_stdout and json_flag:
            raise ConfigError("--graph - and --json both write to standard output; send one to a file")
        if graph is not None and json_file is not None and Path(graph).resolve() == Path(json_file).resolve():
            raise ConfigError(f"--graph and --json-out both name {graph}; choose two files")
        output = JsonOutput.checked(json_flag, json_file, force, [*protected, *([graph] if graph else [])])
        if graph is not None and not to_stdout:
            check_output(graph, "--graph", force, [*protected, *([json_file] if json_file else [])])
        console = output.console()
        from gradfit.gradients import problem
        from gradfit.cli import render
        from gradfit.gradients import trace as engine
        from gradfit.core.precision import Precision

        point = problem.from_config(resolved.config, None if at is None else str(at), rows, start=True)
        chosen = Precision(precision.value)
        with chosen.scope():
            params, args = point.cast(chosen.param_dtype)
            result = engine.evaluation_trace(point.loss_fn, params, args, param, mode.value, point.manual_grad)
        if to_stdout:
            typer.echo(engine.to_dot(result), nl=False)
            return
        source = str(config) if config else "configs/logreg.yaml (built in)"
        console.print(f"problem: {escape(source)}\n{escape(point.description)}, in {precision.value}",
                      highlight=False)
        for table in render.trace_tables(result):
            console.print(table)
        if graph is not None:
            console.print(escape(engine.write_graph(result, graph, force)), highlight=False)
        output.emit(result.to_json())


@app.command()
def bench(
    configs: Optional[List[Path]] = typer.Argument(
        None, help="Configs to time; omit for the built-in suite (the logreg and mlp configs)."),
    device: Device = typer.Option(Device.auto, help="auto, cpu, or gpu (an error when JAX sees none)."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes and fewer repeats: well under a minute on 2 cores."),
    no_peers: bool = typer.Option(False, "--no-peers", help="Skip the NumPy / scikit-learn / PyTorch comparisons."),
    study: Optional[Study] = typer.Option(
        None, "--study", help="Run one study alone: helmholtz, the gradient of a free energy by every method "
                              "(reverse, forward, finite differences, by hand, SymPy) as n grows."),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
    json_file: Optional[Path] = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Measure speed: compile time, steps/s, the cost of a gradient, AD modes vs finite differences, and peers.

    Every time is a median over repeats after a warm-up call, with the device synchronized (block_until_ready); compile time is reported apart from steady-state speed.

    [bold]Examples[/]

      gradfit bench --quick
      gradfit bench --device gpu
      gradfit bench configs/mlp.yaml --device cpu --json-out bench.json
      gradfit bench --quick --json | jq .gradient_cost
      gradfit bench --study helmholtz
    """
    from gradfit.config.load import resolve_config

    with user_errors():
        if study is not None and configs:
            raise ConfigError(f"--study {study.value} runs one study on its own functions; drop the configs")
        chosen = None
        if configs:
            chosen = {}
            for path in configs:
                config = resolve_config(path).config
                chosen[config.name if config.name not in chosen else str(path)] = config
        protected = [*(configs or []), *(f for c in (chosen or {}).values() for f in _data_files(c))]
        output = JsonOutput.checked(json_flag, json_file, force, protected)
        from dataclasses import replace

        from gradfit.bench import engine
        from gradfit.cli.render import bench_tables

        engine.split_cpu()  # before JAX starts: the scaling table compares 1, 2 and 4 devices

        console = output.console()
        options = replace(engine.QUICK if quick else engine.FULL, peers=not no_peers)
        with console.status("benchmarking") as status:
            def progress(section: str) -> None:
                status.update(f"benchmarking: {section}")

            if study is not None:
                result = engine.run_study(study.value, options, device.value, progress)
            else:
                result = engine.run_bench(chosen, options, device.value, progress)
        for table in bench_tables(result):
            console.print(table)
        output.emit(result)


class Split(str, Enum):
    test = "test"
    val = "val"
    train = "train"


class Scale(str, Enum):
    original = "original"
    standardized = "standardized"


RUN_DIR_HELP = "A run directory made by gradfit train."
BATCH_HELP = "Rows per batch: files are read and predicted this many rows at a time, never loaded whole."


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    data: Optional[Path] = typer.Option(None, "--data", help="A labelled CSV or .npz to evaluate on, instead of a "
                                                             "split of the run's own data."),
    split: Split = typer.Option(Split.test, help="Which split of the run's data, without --data."),
    target: Optional[str] = typer.Option(None, help="Label column of a --data CSV [default: the run's data.target]."),
    batch_rows: int = typer.Option(65_536, "--batch-rows", min=1, help=BATCH_HELP),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
    json_file: Optional[Path] = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Evaluate a trained model: log loss, accuracy, precision/recall/F1 per class and macro, ROC AUC, confusion matrix.

    New data get the run's saved standardization and label mapping; their feature columns must be the run's (matched by name, in any order).

    [bold]Examples[/]

      gradfit eval runs/logreg-20261126-101500
      gradfit eval runs/logreg-20261126-101500 --data new.csv --json-out metrics.json
      gradfit eval runs/mlp-20261126-101500 --json | jq .accuracy
      gradfit eval runs/mlp-20261126-101500 --split val
    """
    with user_errors():
        from gradfit.runs.rundir import own_files

        output = JsonOutput.checked(json_flag, json_file, force, [*own_files(run_dir), *([data] if data else [])])
        _use_compile_cache()
        from gradfit import api
        from gradfit.core import metrics
        from gradfit.cli import render
        from gradfit.trained import run as trained

        run = api.load_run(run_dir)
        y, log_probs, source = trained.evaluate(run, data, split.value, target or run.config.data.target, batch_rows)
        result = metrics.classification_metrics(y, log_probs, run.classes)
        console = output.console()
        for table in render.eval_tables(result, source):
            console.print(table)
        output.emit({"run_dir": str(run_dir), "data": source, **result})


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    data: Path = typer.Argument(..., help="CSV (with a header) or .npz (array X) of features; a label column, if "
                                          "present, is ignored."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the predictions CSV here ([bold]-[/]: stdout, "
                                                                 "the default)."),
    proba: bool = typer.Option(False, "--proba", help="Add one probability column per class, p_<label>."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    target: Optional[str] = typer.Option(None, help="Name of a label column to ignore [default: the run's data.target]."),
    batch_rows: int = typer.Option(65_536, "--batch-rows", min=1, help=BATCH_HELP),
) -> None:
    """Predict labels (and probabilities) for new rows, in the original label values.

    Output columns: [bold]line[/] (of the input CSV; [bold]row[/] for .npz), [bold]prediction[/], and with --proba one [bold]p_<label>[/] per class. The file is written to a temporary name and renamed when complete, so a failure never leaves a partial or overwritten file.

    [bold]Examples[/]

      gradfit predict runs/mlp-20261126-101500 unlabeled.csv --out predictions.csv --proba
      gradfit predict runs/logreg-20261126-101500 new.npz | head
    """
    with user_errors():
        from gradfit import api
        from gradfit.trained import run as trained
        from gradfit.files import STDOUT, check_output, write_atomic_stream
        from gradfit.runs.rundir import own_files

        if out is not None:
            out = None if str(out) == STDOUT else check_output(out, "--out", force, [*own_files(run_dir), data])
        _use_compile_cache()
        run = api.load_run(run_dir)
        label_column = target or run.config.data.target
        if out is None:
            trained.write_predictions(run, data, sys.stdout, proba, label_column, batch_rows)
            return
        with write_atomic_stream(out) as handle:
            rows = trained.write_predictions(run, data, handle, proba, label_column, batch_rows)
        stderr.print(f"wrote {rows:,} predictions to {escape(str(out))}", highlight=False)


@app.command()
def inference(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    scale: Scale = typer.Option(Scale.original, help="Coefficients per unit of the raw features (original), or per "
                                                     "standard deviation (standardized)."),
    level: float = typer.Option(0.95, min=0.5, max=0.9999, help="Confidence level of the intervals."),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
    json_file: Optional[Path] = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Coefficient table of a logistic regression: estimates, standard errors, z, p-values, confidence intervals.

    Standard errors come from the inverse Hessian (jax.hessian, float64) of the total negative log-likelihood on the training split, at the run's parameters; with model.l2 > 0 the penalized Hessian is used, and the output says so. Separation (checked on the data with a linear program), constant features, a singular or ill-conditioned Hessian and an unconverged fit are detected and explained instead of printing huge or NaN numbers. Exit code 1 when any problem is reported (the numbers are then withheld or not to be trusted).

    [bold]Examples[/]

      gradfit inference runs/logreg-20261126-101500
      gradfit inference runs/logreg-20261126-101500 --scale standardized --json-out coefficients.json
    """
    with user_errors():
        from gradfit.runs.rundir import own_files

        output = JsonOutput.checked(json_flag, json_file, force, own_files(run_dir))
        _use_compile_cache()
        from gradfit import api
        from gradfit.cli import render

        run = api.load_run(run_dir)
        result = run.inference(scale.value, level)
        console = output.console()
        negative, positive = run.classes
        for table in render.inference_tables(result, positive, negative):
            console.print(table)
        for problem in result.problems:
            console.print(f"[bold red]problem:[/] {escape(problem)}", soft_wrap=True, highlight=False)
        for note in result.notes:
            console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True, highlight=False)
        output.emit({"run_dir": str(run_dir), "positive_class": positive, "negative_class": negative,
                     "converged": result.converged, **dataclasses.asdict(result)})
        if result.problems:
            raise typer.Exit(1)


class RunStatus(str, Enum):
    completed = "completed"
    failed = "failed"
    interrupted = "interrupted"
    running = "running"
    unfinished = "unfinished"
    damaged = "damaged"


class RunSort(str, Enum):
    started = "started"
    run = "run"
    status = "status"
    steps = "steps"
    best_val_loss = "best_val_loss"
    best_val_accuracy = "best_val_accuracy"
    val_loss = "val_loss"
    val_accuracy = "val_accuracy"
    test_accuracy = "test_accuracy"
    wall_time_s = "wall_time_s"


@app.command("runs")
def runs_(
    folder: Path = typer.Argument(Path("runs"), help="A folder of run directories (also lists the members of the "
                                                     "sweeps in it), or one run directory."),
    sort: RunSort = typer.Option(RunSort.started, "--sort", metavar="COLUMN",
                                 help="Order by started (newest first), run, status, steps, best_val_loss, "
                                      "best_val_accuracy, val_loss, val_accuracy, test_accuracy or wall_time_s (best "
                                      "first for metrics)."),
    status: Optional[RunStatus] = typer.Option(None, "--status", metavar="STATUS",
                                               help="Only runs with this status: completed, failed, interrupted, "
                                                    "running, unfinished or damaged."),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List runs: status, model, dataset, steps, best and final validation metrics, test accuracy, wall time.

    Reads only each run's summary.json, so it stays fast on a folder of thousands of runs. Status is what the summary says, [bold]running[/] while a gradfit process holds the run, [bold]unfinished[/] for a run killed before writing one (resume it), [bold]damaged[/] for an unreadable summary.

    [bold]Examples[/]

      gradfit runs
      gradfit runs runs/ --sort best_val_loss --status completed
      gradfit runs --json | jq '.[0].run'
    """
    with user_errors():
        from gradfit.runs import catalog
        from gradfit.cli import render

        rows = [entry.row() for entry in catalog.find_runs(folder)]
        if status is not None:
            rows = [row for row in rows if row["status"] == status.value]
        rows = catalog.sort_rows(rows, sort.value)
        if json_flag:
            JsonOutput(True, None).emit(rows)
            return
        console = render.stdout_console()
        console.print(render.runs_table(rows, str(folder)))
        for line in render.damaged_runs(rows):
            console.print(line, highlight=False, soft_wrap=True)


@app.command()
def compare(
    run_dirs: List[Path] = typer.Argument(..., help="Two or more run directories.", metavar="RUN RUN..."),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Compare runs: the config keys on which they differ ([bold]key: a -> b[/]) and their metrics side by side.

    [bold]Examples[/]

      gradfit compare runs/mlp-20261126-101500 runs/mlp-20261126-103000
      gradfit compare runs/mlp-sweep-20261126-110000/members/* --json
    """
    with user_errors():
        from gradfit.runs import catalog
        from gradfit.cli import render

        comparison = catalog.compare(run_dirs)
        if json_flag:
            JsonOutput(True, None).emit(comparison.to_json())
            return
        console = render.stdout_console()
        for table in render.comparison_tables(comparison):
            console.print(table)


@app.command()
def plot(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories whose curves to draw, overlaid.",
                                          metavar="RUN..."),
    out: Path = typer.Option(..., "--out", "-o", help="The image to write: .png, .svg or .pdf."),
    metric: str = typer.Option("batch_objective,val_loss,val_accuracy", "--metric", "-m",
                               help="Comma-separated metrics of metrics.jsonl, one panel each: batch_objective "
                                    "(every log point), objective, train_loss and grad_norm (whole training split, "
                                    "at evaluations), val_loss, val_accuracy, learning_rate."),
    log_y: bool = typer.Option(False, "--log-y", help="Logarithmic y axes (accuracies stay linear)."),
    size: str = typer.Option("1200x400", "--size", metavar="WxH", help="Image size in pixels."),
    force: bool = typer.Option(False, "--force", help="Replace --out if the file exists."),
) -> None:
    """Draw training curves from metrics.jsonl: one panel per metric, one line per run (needs matplotlib).

    [bold]Examples[/]

      gradfit plot runs/mlp-20261126-101500 --out curves.png
      gradfit plot runs/mlp-* --metric val_loss,val_accuracy --log-y --out curves.svg
      pip install 'gradfit\\[plot]'   # matplotlib, if it is missing
    """
    with user_errors():
        from gradfit.runs import catalog
        from gradfit.runs import plot as plotting
        from gradfit.files import check_output
        from gradfit.runs.rundir import RunDir

        width, _, height = size.lower().partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise GradfitError(f"--size {size!r}: expected WIDTHxHEIGHT in pixels, e.g. 1200x400")
        metrics = [name.strip() for name in metric.split(",") if name.strip()]
        folders = [RunDir.open(path) for path in run_dirs]
        out = check_output(out, "--out", force, [path for run in folders for path in run.own_files()], stdout=False)
        labels = catalog.labels([run.path for run in folders])
        plotting.plot_curves([(label, run.metrics()) for label, run in zip(labels, folders)], metrics, out,
                             log_y=log_y, size=(int(width), int(height)))
        stderr.print(f"wrote {escape(str(out))}", highlight=False, soft_wrap=True)


@config_app.command("show")
def config_show(
    config: Optional[Path] = typer.Argument(None, help="YAML config file; omit for the built-in defaults."),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help=SET_HELP, metavar="KEY=VALUE"),
    as_yaml: bool = typer.Option(False, "--yaml", help="Print the resolved config as YAML instead of a table."),
) -> None:
    """Show the resolved config: every key, its value and where it came from (default, file:line or --set).

    Keys the chosen model, optimizer or schedule does not use are left out.

    [bold]Examples[/]

      gradfit config show configs/mlp.yaml --set model.hidden=[256,256]
      gradfit config show --yaml > my.yaml
    """
    from gradfit.config.load import resolve_config, to_yaml
    from gradfit.cli.render import config_table, stdout_console

    with user_errors():
        resolved = resolve_config(config, set_ or [])
        if as_yaml:
            typer.echo(to_yaml(resolved.config), nl=False)
            return
        table, hidden = config_table(resolved)
        console = stdout_console()
        console.print(table)
        if hidden:
            console.print(f"({hidden} keys not used by this model/optimizer are hidden)", style="dim")


class TemplateModel(str, Enum):
    logistic = "logistic"
    mlp = "mlp"


@config_app.command("init")
def config_init(
    path: Path = typer.Argument(Path("gradfit.yaml"), help="The config file to write."),
    model: TemplateModel = typer.Option(TemplateModel.logistic, "--model", help="The model the template is for."),
    force: bool = typer.Option(False, "--force", help="Replace the file if it exists."),
) -> None:
    """Write a commented config: every key, its default and what it means (keys for other choices commented out).

    [bold]Examples[/]

      gradfit config init my.yaml --model mlp
      gradfit config init - | less
    """
    with user_errors():
        from gradfit.files import STDOUT, check_output, write_atomic
        from gradfit.config.template import config_template

        from gradfit.runs.rundir import RunDir

        text = config_template(model.value)
        if str(path) == STDOUT:
            typer.echo(text, nl=False)
            return
        folder = RunDir(path.parent)
        protected = folder.own_files() if folder.is_run() else []  # a run's config.yaml is its record
        write_atomic(check_output(path, "gradfit config init", force, protected), text)
        stderr.print(f"wrote {escape(str(path))}; check it with: gradfit config validate {escape(str(path))}",
                     highlight=False, soft_wrap=True)


@config_app.command("validate")
def config_validate(
    configs: List[Path] = typer.Argument(..., help="One or more YAML config files."),
) -> None:
    """Check config files without training; exit 2 if any is invalid. A config with a sweep: section is checked
    whole: the section and every member's config.

    [bold]Example[/]

      gradfit config validate configs/*.yaml configs/sweeps/*.yaml
    """
    from gradfit.sweeps import plan as sweeps
    from gradfit.config.load import resolve_config
    from gradfit.errors import ConfigError

    console = Console()
    failed = 0
    for path in configs:
        try:
            resolved = resolve_config(path, sweep=True)
            plan = None if resolved.sweep is None else sweeps.plan_sweep(resolved)
        except ConfigError as exc:
            failed += 1
            stderr.print(f"[bold red]invalid[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        else:
            what = "" if plan is None else f" (a sweep of {len(plan.members)} members, {plan.settings} settings)"
            console.print(f"[green]ok[/] {escape(str(path))}{what}", highlight=False)
    if failed:
        raise typer.Exit(2)


@contextlib.contextmanager
def _progress_bar(what: str, quiet: bool):
    """A Rich progress bar on stderr (none with --quiet): yields a callback (done, total)."""
    if quiet:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(escape(what)), BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=stderr,
                  transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


DATA_TARGET_HELP = "Label column of a CSV (an .npz holds labels as y)."


@data_app.command("convert")
def data_convert(
    source: Path = typer.Argument(..., help="A CSV with a header, an .npz (X, y, optional feature_names) or a "
                                            "converted folder."),
    out_dir: Path = typer.Argument(..., help="The folder to write: X.npy, y.npy and meta.json."),
    target: str = typer.Option("target", help=DATA_TARGET_HELP),
    dtype: Optional[CheckPrecision] = typer.Option(None, help="Store features as float32 (half the disk, rounded) "
                                                              "or float64 [default: the source's; float64 for a CSV]."),
    force: bool = typer.Option(False, "--force", help="Replace OUT_DIR if it is a converted folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Convert a table into a folder that training memory-maps and can stream (data.path: OUT_DIR).

    One pass in flat memory (blocks of rows), with the checks and messages training uses; features in the column order of the file, labels stored as indices into the sorted classes. Written under a temporary name and renamed when complete.

    [bold]Examples[/]

      gradfit data convert big.csv big/ --target label
      gradfit train configs/mlp.yaml --set data.source=file --set data.path=big --set data.in_memory=false
    """
    with user_errors():
        from gradfit.data.convert import convert

        with _progress_bar(f"converting {source}", quiet or json_flag) as progress:
            done = convert(source, out_dir, target, dtype.value if dtype else None, force, progress)
        if json_flag:
            typer.echo(json.dumps({**dataclasses.asdict(done), "mb_per_s": done.mb_per_s}, indent=2))
            return
        from gradfit.files import format_bytes

        stderr.print(f"wrote {escape(done.out_dir)}: {done.rows:,} rows x {done.features:,} features ({done.dtype}), "
                     f"{len(done.classes)} classes, {format_bytes(done.bytes_out)} in {done.seconds:.1f} s "
                     f"({done.mb_per_s:,.0f} MB/s of input)", highlight=False, soft_wrap=True)


@data_app.command("describe")
def data_describe(
    path: Path = typer.Argument(..., help="A CSV, an .npz or a converted folder."),
    target: str = typer.Option("target", help=DATA_TARGET_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Rows, columns, classes with counts, and per feature mean, std, min, max and non-finite cells.

    One streamed pass in float64 (flat memory). Non-finite cells are counted, not refused; a column whose variance overflows float64 is named.

    [bold]Examples[/]

      gradfit data describe data/breast_cancer.csv
      gradfit data describe big/ --json | jq .classes
    """
    with user_errors():
        from gradfit.data.convert import describe

        with _progress_bar(f"reading {path}", quiet or json_flag) as progress:
            result = describe(path, target, progress)
        output = JsonOutput(json_flag, None)
        console = output.console()
        from gradfit.cli.render import describe_tables

        for table in describe_tables(result):
            console.print(table)
        for name in result["overflow"]:
            console.print(f"[bold red]overflow:[/] column '{escape(name)}': its mean or variance overflows float64; "
                          "training refuses cells beyond 1e150 in magnitude", soft_wrap=True, highlight=False)
        output.emit(result)


_FILE_JSON_COMMANDS = {"eval", "inference", "compare-grads", "bench"}
_CONFIG_COMMANDS = {"compare-grads", "bench"}  # their arguments are configs, which may be .json files


def legacy_spellings(args: list[str]) -> list[str]:
    """``--json FILE.json`` (gradfit 0.1's eval, inference, compare-grads and bench) becomes ``--json-out``.

    ``--json`` is now a flag (JSON on stdout); a following argument that names a .json file can only be the old
    spelling, so it keeps working, with a note.
    """
    if not args or args[0] not in _FILE_JSON_COMMANDS:
        return args
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        # for compare-grads and bench an existing .json file after --json may be a config: not rewritten
        old = arg == "--json" and i + 1 < len(out) and out[i + 1].lower().endswith(".json") and \
            not (args[0] in _CONFIG_COMMANDS and os.path.lexists(out[i + 1]))
        if old or arg.startswith("--json="):
            out[i] = "--json-out" if old else "--json-out=" + arg.removeprefix("--json=")
            stderr.print("[yellow]note:[/] --json FILE is now --json-out FILE", highlight=False, soft_wrap=True)
    return out


def main() -> None:
    """The console script. Once the command is done, output is flushed, exit handlers run and the process ends
    at once: tearing down jaxlib's runtime and a thousand modules at interpreter exit took 0.3 s of a 2 s warm
    ``gradfit train`` (every file is written and closed before this point)."""
    try:
        app(prog_name="gradfit")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if code == 0 or supervise.WORKER not in os.environ:  # a failed process of a group must not wait at JAX's
        atexit._run_exitfuncs()  # shutdown barrier for the others, which may be gone
    os._exit(code)
