"""The ``gradfit`` command line: the Typer app and its commands in help order, the global options, the error edge
(the only place that prints errors and chooses exit codes) and the console script's ``main``.

jax is imported inside the commands that need it, so ``gradfit --help`` and ``gradfit config ...`` stay fast.
Exit codes: 0 success, 1 a failed training or check, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.markup import escape

from gradfit.cli import conventions
from gradfit.cli.commands import bench, config, data, gradients, runs, train, trained
from gradfit.cli.options import stderr
from gradfit.errors import GradfitError
from gradfit.training import supervise
from gradfit.version import __version__

conventions.install()


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
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
        stderr.print(
            f"[bold red]error:[/] {escape(where + (exc.strerror or str(exc)))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None


class GuardedCommand(typer.core.TyperCommand):
    """A command whose run (not its parsing or --help) goes through ``user_errors``."""

    def invoke(self, ctx: Any) -> Any:
        with user_errors():
            return super().invoke(ctx)


app = typer.Typer(
    cls=conventions.GradfitGroup,
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


COMMANDS: list[tuple[str, Callable[..., None]]] = [  # in the order --help lists them
    ("train", train.train),
    ("sweep", train.sweep),
    ("compare-grads", gradients.compare_grads),
    ("trace", gradients.trace),
    ("bench", bench.bench),
    ("eval", trained.evaluate),
    ("predict", trained.predict),
    ("inference", trained.inference),
    ("export", trained.export),
    ("runs", runs.list_runs),
    ("compare", runs.compare),
    ("plot", runs.plot),
]
GROUPS: list[tuple[str, str, list[tuple[str, Callable[..., None]]]]] = [  # listed after the commands
    (
        "config",
        "Inspect and check config files.",
        [("show", config.show), ("init", config.init), ("validate", config.validate)],
    ),
    (
        "data",
        "Convert and describe data files (CSV, .npz, converted folders).",
        [("convert", data.convert), ("describe", data.describe)],
    ),
]


def _register() -> None:
    """Every command on the app, each run through ``user_errors``; a group is a sub-app of its own."""
    for name, command in COMMANDS:
        app.command(name, cls=GuardedCommand)(command)
    for group, help_text, commands in GROUPS:
        group_app = typer.Typer(help=help_text, no_args_is_help=True)
        for name, command in commands:
            group_app.command(name, cls=GuardedCommand)(command)
        app.add_typer(group_app, name=group)


_register()


_FILE_JSON_COMMANDS = {"eval", "inference", "compare-grads", "bench"}
_CONFIG_COMMANDS = {"compare-grads", "bench"}  # their arguments are configs, which may be .json files
_OUT_DIR_COMMANDS = {"train", "sweep"}  # -o was their --out-dir; -o now always names a file (--out)


def legacy_spellings(args: list[str]) -> list[str]:
    """Old spellings that keep working, each with a note naming the new one.

    - ``--json FILE.json`` (gradfit 0.1's eval, inference, compare-grads and bench) becomes ``--json-out``: ``--json``
      is now a flag (JSON on stdout), so a following argument that names a .json file can only be the old spelling.
    - ``-o DIR`` of train and sweep becomes ``--out-dir DIR``: ``-o`` is ``--out``, the file a command writes.
    """
    if not args or args[0] not in _FILE_JSON_COMMANDS | _OUT_DIR_COMMANDS:
        return args
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if args[0] in _OUT_DIR_COMMANDS:
            if arg == "-o" or (arg.startswith("-o") and not arg.startswith("--")):
                out[i] = "--out-dir" if arg == "-o" else "--out-dir=" + arg[2:].removeprefix("=")
                _note("-o is --out-dir in gradfit train and sweep (-o now always names a file)")
            continue
        # for compare-grads and bench an existing .json file after --json may be a config: not rewritten
        old = (
            arg == "--json"
            and i + 1 < len(out)
            and out[i + 1].lower().endswith(".json")
            and not (args[0] in _CONFIG_COMMANDS and os.path.lexists(out[i + 1]))
        )
        if old or arg.startswith("--json="):
            out[i] = "--json-out" if old else "--json-out=" + arg.removeprefix("--json=")
            _note("--json FILE is now --json-out FILE")
    return out


def _note(text: str) -> None:
    stderr.print(f"[yellow]note:[/] {text}", highlight=False, soft_wrap=True)


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
