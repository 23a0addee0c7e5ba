"""The ``gradfit`` command line. The only place that prints errors and chooses exit codes.

jax is imported inside the commands that need it, so ``gradfit --help`` and ``gradfit config ...`` stay fast.
Exit codes: 0 success, 1 a failed training or check, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

import gradfit
from gradfit.errors import GradfitError, TrainingFailed

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Inspect and check config files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

stderr = Console(stderr=True)

SET_HELP = "Override a config key, e.g. [bold]--set optimizer.learning_rate=3e-3[/] (value parsed as YAML; repeatable)."


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Precision(str, Enum):
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
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradfit {gradfit.__version__}")
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
    """


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config file (see configs/ and [bold]gradfit config show[/])."),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help=SET_HELP, metavar="KEY=VALUE"),
    out_dir: Path = typer.Option(Path("runs"), "--out-dir", "-o", help="Parent folder of the new run directory."),
    device: Optional[Device] = typer.Option(None, help="Shortcut for --set runtime.device=..."),
    precision: Optional[Precision] = typer.Option(None, help="Shortcut for --set runtime.precision=..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output, only errors."),
    json_out: bool = typer.Option(False, "--json", help="Print summary.json to stdout (progress goes to stderr)."),
) -> None:
    """Train the model a config describes and write a new run directory.

    The run directory [bold]runs/<name>-<timestamp>/[/] holds config.yaml (resolved), metrics.jsonl, params.npz, preprocessing.json and summary.json. Existing runs are never overwritten.

    [bold]Examples[/]

      gradfit train configs/logreg.yaml
      gradfit train configs/mlp.yaml --set optimizer.learning_rate=3e-3 --set train.epochs=20
      gradfit train configs/logreg.yaml --device cpu --precision float64 --json
    """
    from gradfit.config import resolve_config

    overrides = list(set_ or [])
    if device is not None:
        overrides.append(f"runtime.device={device.value}")
    if precision is not None:
        overrides.append(f"runtime.precision={precision.value}")
    console = stderr if json_out else Console()
    with user_errors():
        resolved = resolve_config(config, overrides)
        from gradfit import report
        from gradfit.train import fit

        progress = None if quiet else report.TrainProgress(console)
        try:
            summary = fit(resolved.config, out_dir=str(out_dir), callbacks=progress)
        except TrainingFailed as exc:
            if json_out and exc.summary is not None:
                typer.echo(json.dumps(exc.summary, indent=2))
            raise
        finally:
            if progress is not None:
                progress.close()
        if not quiet:
            console.print(report.summary_table(summary))
        if json_out:
            typer.echo(json.dumps(summary, indent=2))


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
    from gradfit.config import resolve_config, to_yaml
    from gradfit.report import config_table

    with user_errors():
        resolved = resolve_config(config, set_ or [])
        if as_yaml:
            typer.echo(to_yaml(resolved.config), nl=False)
            return
        table, hidden = config_table(resolved)
        console = Console()
        console.print(table)
        if hidden:
            console.print(f"({hidden} keys not used by this model/optimizer are hidden)", style="dim")


@config_app.command("validate")
def config_validate(
    configs: List[Path] = typer.Argument(..., help="One or more YAML config files."),
) -> None:
    """Check config files without training; exit 2 if any is invalid.

    [bold]Example[/]

      gradfit config validate configs/*.yaml
    """
    from gradfit.config import resolve_config
    from gradfit.errors import ConfigError

    console = Console()
    failed = 0
    for path in configs:
        try:
            resolve_config(path)
        except ConfigError as exc:
            failed += 1
            stderr.print(f"[bold red]invalid[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        else:
            console.print(f"[green]ok[/] {escape(str(path))}", highlight=False)
    if failed:
        raise typer.Exit(2)


def main() -> None:
    app(prog_name="gradfit")
