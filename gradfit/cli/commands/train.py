"""``gradfit train`` and ``gradfit sweep``: train one config, or many settings of it, and show the progress."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from gradfit.cli.options import (
    FORCE_HELP,
    JSON_OUT_HELP,
    JsonOutput,
    data_files,
    set_option,
    use_compile_cache,
)
from gradfit.config.choices import Device, Metric, Precision
from gradfit.errors import GradfitError, TrainingFailed
from gradfit.training import supervise

if TYPE_CHECKING:
    from collections.abc import Callable

    from gradfit.cli.render.progress import SweepProgress, TrainProgress
    from gradfit.config.load import ResolvedConfig
    from gradfit.runs.rundir import Summary
    from gradfit.sweeps.plan import Sweep
    from gradfit.sweeps.run import SweepCallbacks
    from gradfit.training.loop import Callbacks


# The --distributed options in the order mesh.start_processes takes them: coordinator, number of processes, this
# process's id, the init and heartbeat timeouts, and where the coordinator listens.
ProcessGroup = tuple[str | None, int | None, int | None, int, int, str | None]


def train(
    config: Path | None = typer.Argument(
        None,
        help="YAML config file (see configs/ and [bold]gradfit config show[/]); with --resume, defaults to "
        "the run's own config.yaml.",
    ),
    set_: list[str] | None = set_option(),
    out_dir: Path | None = typer.Option(
        None, "--out-dir", metavar="DIR", help="Parent folder of the new run directory (default: runs)."
    ),
    resume: Path | None = typer.Option(
        None, "--resume", metavar="RUN_DIR", help="Continue this run in place from its newest checkpoint."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="With --resume: continue even though the config differs "
        "(the changes are recorded in summary.json). Also replaces "
        "an existing --json-out file.",
    ),
    device: Device | None = typer.Option(None, help="Shortcut for --set runtime.device=..."),
    precision: Precision | None = typer.Option(None, help="Shortcut for --set runtime.precision=..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output, only errors."),
    json_flag: bool = typer.Option(
        False, "--json", help="Print summary.json alone on stdout (progress goes to stderr)."
    ),
    json_file: Path | None = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    no_compile_cache: bool = typer.Option(
        False,
        "--no-compile-cache",
        help="Compile from scratch instead of loading compiled programs from JAX's "
        "persistent cache (folder: $GRADFIT_COMPILE_CACHE, default "
        "~/.cache/gradfit/jax; GRADFIT_COMPILE_CACHE=off also turns it off).",
    ),
    devices: str | None = typer.Option(
        None,
        "--devices",
        metavar="auto|N|ID,ID",
        rich_help_panel="Scaling out",
        help="Shortcut for --set runtime.devices=...: every device of the platform (auto), the first N, or these "
        "device ids (one id: 3,). The minibatch is split across them.",
    ),
    distributed: bool = typer.Option(
        False,
        "--distributed",
        rich_help_panel="Scaling out",
        help="Join a group of processes (jax.distributed), one per host or GPU set, forming one mesh; only process "
        "0 writes. Start the same command in every process.",
    ),
    coordinator: str | None = typer.Option(
        None,
        "--coordinator",
        metavar="HOST:PORT",
        rich_help_panel="Scaling out",
        help="Process 0's address (default: $JAX_COORDINATOR_ADDRESS, or SLURM/Open MPI detection).",
    ),
    num_processes: int | None = typer.Option(
        None,
        "--num-processes",
        min=1,
        rich_help_panel="Scaling out",
        help="Processes in the group (default: $JAX_NUM_PROCESSES, or detected).",
    ),
    process_id: int | None = typer.Option(
        None,
        "--process-id",
        min=0,
        rich_help_panel="Scaling out",
        help="This process's number, 0 to N-1 (default: $JAX_PROCESS_ID, or detected).",
    ),
    init_timeout: int = typer.Option(
        supervise.INIT_TIMEOUT_S,
        "--init-timeout",
        min=1,
        metavar="SECONDS",
        rich_help_panel="Scaling out",
        help="Give up (exit 2) when the group has not formed within this time.",
    ),
    heartbeat_timeout: int = typer.Option(
        supervise.HEARTBEAT_TIMEOUT_S,
        "--heartbeat-timeout",
        min=2,
        metavar="SECONDS",
        rich_help_panel="Scaling out",
        help="A process silent for this long counts as lost, and the others stop (exit 1).",
    ),
    coordinator_bind: str | None = typer.Option(
        None,
        "--coordinator-bind",
        metavar="ADDRESS",
        rich_help_panel="Scaling out",
        help="Where process 0's coordinator listens: an address of its host, or HOST:PORT (default: "
        "$JAX_COORDINATOR_BIND_ADDRESS, else the --coordinator address). 0.0.0.0 or [::] listens on every "
        "interface: the coordinator authenticates no one, so only on a trusted network.",
    ),
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
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    from gradfit.config.load import resolve_config

    overrides = [*(set_ or []), *_runtime_overrides(devices, device, precision)]
    config = _config_to_train(config, resume, out_dir, force, json_file)
    if not distributed:
        _refuse_group_options(coordinator, num_processes, process_id, coordinator_bind)
    resolved = resolve_config(config, overrides)
    from gradfit.cli.render.progress import TrainProgress
    from gradfit.cli.render.training import summary_table
    from gradfit.runs.rundir import own_files

    protected = [config, *data_files(resolved.config), *([] if resume is None else own_files(resume))]
    output = JsonOutput.checked(json_flag, json_file, force, protected)
    console = output.console()
    progress = None if quiet else TrainProgress(console)
    group: ProcessGroup | None = (
        (coordinator, num_processes, process_id, init_timeout, heartbeat_timeout, coordinator_bind)
        if distributed
        else None
    )
    summary = _fit(resolved, resume, out_dir, force, group, progress, output, not no_compile_cache)
    if not quiet:
        console.print(summary_table(summary))
    output.emit(summary)


def _runtime_overrides(devices: str | None, device: str | None, precision: str | None) -> list[str]:
    """The ``--set`` overrides that --devices, --device and --precision stand for."""
    overrides = []
    if devices is not None:
        overrides.append(f"runtime.devices={_devices_value(devices)}")
    if device is not None:
        overrides.append(f"runtime.device={device}")
    if precision is not None:
        overrides.append(f"runtime.precision={precision}")
    return overrides


def _devices_value(text: str) -> str:
    """--devices 0,2 -> [0,2] for --set; auto and N pass as they are."""
    return f"[{text}]" if "," in text else text


def _config_to_train(
    config: Path | None, resume: Path | None, out_dir: Path | None, force: bool, json_file: Path | None
) -> Path:
    """The config file of a new run (which must be given), or of a resumed one (its own config.yaml by default);
    refuses the options that do not apply."""
    if resume is None:
        if config is None:
            raise GradfitError("missing CONFIG: gradfit train CONFIG, or gradfit train --resume RUN_DIR")
        if force and json_file is None:
            raise GradfitError("--force applies with --resume or --json-out")
        return config
    if out_dir is not None:
        raise GradfitError("--out-dir does not apply with --resume: the run continues in its own folder")
    from gradfit.runs.rundir import RunDir

    return config or RunDir.open(resume).config_file


def _refuse_group_options(
    coordinator: str | None, num_processes: int | None, process_id: int | None, coordinator_bind: str | None
) -> None:
    """Without --distributed, the options that say how to join a group are a mistake."""
    given = [
        flag
        for flag, value in (
            ("--coordinator", coordinator),
            ("--num-processes", num_processes),
            ("--process-id", process_id),
            ("--coordinator-bind", coordinator_bind),
        )
        if value is not None
    ]
    if given:
        raise GradfitError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} with --distributed")


def _fit(
    resolved: ResolvedConfig,
    resume: Path | None,
    out_dir: Path | None,
    force: bool,
    group: ProcessGroup | None,
    progress: TrainProgress | None,
    output: JsonOutput,
    compile_cache: bool,
) -> Summary:
    """Start JAX (joining the group, if any), then train a new run or resume one. A failed run's summary still
    goes to ``output``; the progress display is closed however training ends."""
    quiet = progress is None
    telling = supervise.Telling(progress) if group is not None else None
    try:
        if progress is not None:
            progress.on_stage("starting JAX")  # from the first second, not after the imports and compiling
        use_compile_cache(compile_cache, quiet)
        if group is not None:
            from gradfit.runtime import mesh

            if progress is not None:
                progress.on_stage("joining the other processes")
            mesh.start_processes(*group)
        # the engine looks its hooks up by name; the display does not subclass Callbacks, which would import jax
        # before the spinner starts
        callbacks = cast("Callbacks | None", telling or progress)
        from gradfit import api

        if resume is None:
            return api.fit(resolved.config, out_dir=out_dir or Path("runs"), callbacks=callbacks, progress=False)
        return api.resume(resume, resolved.config, force=force, callbacks=callbacks, progress=False)
    except TrainingFailed as exc:
        if exc.summary is not None:
            output.emit(exc.summary)
        instead = exc if telling is None else telling.lost(exc, sys.argv[1:])
        if instead is not exc:  # another process than 0 lost the group: it says how to resume, in case 0 died
            raise instead from None
        raise
    finally:
        if progress is not None:
            progress.close()


def sweep(
    config: Path | None = typer.Argument(
        None, help="YAML config: the base of every member; its [bold]sweep:[/] section, if any, is the plan."
    ),
    grid: list[str] | None = typer.Option(
        None,
        "--grid",
        "-g",
        metavar="KEY=[V,...]",
        help="Try these values of a config key (repeatable: every "
        "combination), e.g. [bold]--grid optimizer.learning_rate=[1e-3,3e-3,1e-2][/].",
    ),
    seeds: int | None = typer.Option(
        None, "--seeds", min=1, help="Train each setting with N seeds (seed, seed+1, ...): mean +- std in the ranking."
    ),
    random: int | None = typer.Option(
        None, "--random", min=1, metavar="N", help="Draw N settings at random from --space (combined with --grid)."
    ),
    space: list[str] | None = typer.Option(
        None,
        "--space",
        metavar="KEY=DIST",
        help="A random-search range: [bold]KEY={log_uniform: [1e-4, 1e-1]}[/], "
        "{uniform: [lo, hi]}, {int_uniform: [lo, hi]} or a list of choices (repeatable).",
    ),
    metric: Metric | None = typer.Option(
        None,
        help="Rank settings by this (default: the section's, else val_rmse for a numeric target, val_loss for "
        "classes).",
    ),
    parallel: str | None = typer.Option(
        None,
        "--parallel",
        metavar="auto|K",
        help="Members trained side by side in one program (auto: as many as the "
        "device memory holds, estimated before allocating).",
    ),
    set_: list[str] | None = set_option(),
    out_dir: Path | None = typer.Option(
        None, "--out-dir", metavar="DIR", help="Parent folder of the new sweep directory (default: runs)."
    ),
    resume: Path | None = typer.Option(
        None,
        "--resume",
        metavar="SWEEP_DIR",
        help="Finish this sweep's unfinished members (interrupted ones continue from their checkpoints, bit for bit).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output, only errors and the ranking."),
    json_flag: bool = typer.Option(False, "--json", help="Print sweep.json alone on stdout (tables go to stderr)."),
    json_file: Path | None = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    no_compile_cache: bool = typer.Option(
        False, "--no-compile-cache", help="Compile from scratch instead of using JAX's persistent cache."
    ),
) -> None:
    """Train many settings of one config in one compiled program, and rank them.

    Members that differ only in values (learning rate, l2, momentum, b1/b2, eps, weight decay, clip norm, the final fraction of a schedule, the seed) train side by side under jax.vmap in one program; members that differ in shapes or choices (hidden sizes, activation, optimizer, batch size, precision, ...) form groups, compiled once each. Every member is a normal run directory (eval, predict, inference and train --resume accept it) under [bold]runs/<name>-sweep-<timestamp>/members/[/], next to sweep.json (members, groups, ranking). A diverging member is marked and the others go on. Ctrl-C checkpoints every member in training (exit 130); --resume finishes the rest. Exit code 0 when a member completed, 1 when none did.

    [bold]Examples[/]

      gradfit sweep configs/mlp.yaml --grid optimizer.learning_rate=[1e-3,3e-3,1e-2] --grid model.l2=[0,1e-4] --seeds 4
      gradfit sweep configs/mlp.yaml --random 16 --space "optimizer.learning_rate={log_uniform: [1e-4, 1e-1]}"
      gradfit sweep configs/sweeps/mlp-lr.yaml --metric val_accuracy --json
      gradfit sweep --resume runs/mlp-sweep-20261201-101500
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    from gradfit.config.load import resolve_config

    options = _plan_options(grid, seeds, random, space, metric, parallel)
    if resume is None:
        if config is None:
            raise GradfitError(
                "missing CONFIG: gradfit sweep CONFIG --grid KEY=[...], or gradfit sweep --resume SWEEP_DIR"
            )
        from gradfit.sweeps import plan as sweeps

        resolved = resolve_config(config, list(set_ or []), sweep=True)
        launch = _starting(resolved, sweeps.plan_sweep(resolved, **options), out_dir or Path("runs"))
        protected = [config, *data_files(resolved.config)]
    else:
        _refuse_with_resume(options, config, set_, out_dir)
        launch = _resuming(resume)
        protected = [resume / "sweep.json", resume / "sweep.yaml"]
    output = JsonOutput.checked(json_flag, json_file, force, protected)
    console = output.console()
    from gradfit.cli.render.progress import SweepProgress
    from gradfit.cli.render.training import sweep_ranking

    progress = None if quiet else SweepProgress(console)
    try:
        if progress is not None:
            progress.on_stage("starting JAX")
        use_compile_cache(not no_compile_cache, quiet)
        state = launch(progress)
    except TrainingFailed as exc:
        if exc.summary is not None:
            console.print(sweep_ranking(exc.summary))
            output.emit(exc.summary)
        raise
    finally:
        if progress is not None:
            progress.close()
    console.print(sweep_ranking(state))
    output.emit(state)


def _plan_options(
    grid: list[str] | None,
    seeds: int | None,
    random: int | None,
    space: list[str] | None,
    metric: str | None,
    parallel: str | None,
) -> dict[str, Any]:
    """The plan's command-line options, named as ``plan_sweep`` takes them (and as their flags, less the --)."""
    return dict(
        grid=grid or [],
        seeds=seeds,
        random=random,
        space=space or [],
        metric=metric,
        parallel=int(parallel) if parallel is not None and parallel.isascii() and parallel.isdigit() else parallel,
    )


def _refuse_with_resume(
    options: dict[str, Any], config: Path | None, set_: list[str] | None, out_dir: Path | None
) -> None:
    """A resumed sweep continues as planned: the options that would plan another are refused."""
    given = (
        [f"--{k}" for k, v in options.items() if v not in (None, [])]
        + (["CONFIG"] if config else [])
        + (["--set"] if set_ else [])
        + (["--out-dir"] if out_dir else [])
    )
    if given:
        raise GradfitError(
            f"{', '.join(given)} do(es) not apply with --resume: the sweep continues as planned (its sweep.yaml)"
        )


def _starting(resolved: ResolvedConfig, plan: Sweep, out_dir: Path) -> Callable[[SweepProgress | None], dict]:
    """Trains a new sweep of ``plan`` when called (JAX is imported then, after the spinner starts)."""

    def launch(progress: SweepProgress | None) -> dict:
        from gradfit.sweeps import run as sweeping

        return sweeping.start(resolved, plan, out_dir, cast("SweepCallbacks | None", progress))

    return launch


def _resuming(sweep_dir: Path) -> Callable[[SweepProgress | None], dict]:
    """Finishes the sweep in ``sweep_dir`` when called."""

    def launch(progress: SweepProgress | None) -> dict:
        from gradfit.sweeps import run as sweeping

        return sweeping.resume(sweep_dir, cast("SweepCallbacks | None", progress))

    return launch
