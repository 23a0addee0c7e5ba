"""What the commands share: the values of choice options, help texts of common options, the stderr console,
where a JSON result goes, the compile cache switch and the files a command must never write.

Typer shows a Literal's values as ``[a|b|c]`` and hands the command the chosen string. The config's choices come
from ``gradfit.config.choices`` (plain typing, which the schema uses too). The sets below belong to modules that
would bring pydantic, numpy or jax into ``gradfit --help`` (the run catalog, the bench and trace engines), so they
are spelled here and tests/cli/test_choices.py checks each one against its owner.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

from gradfit.cli.completion import complete_set  # light: the schema (pydantic) loads only when completing

if TYPE_CHECKING:
    from gradfit.config.schema import GradfitConfig

CheckPrecision = Literal["float32", "float64"]  # a gradient check, a trace, stored features
Study = Literal["helmholtz"]  # gradfit.bench.engine.STUDIES
TraceMode = Literal["forward", "reverse", "both"]  # gradfit.gradients.trace.MODES
Split = Literal["test", "val", "train"]
Scale = Literal["original", "standardized"]
RunStatus = Literal["completed", "failed", "interrupted", "running", "unfinished", "damaged"]  # catalog.STATUSES
RunSort = Literal[  # gradfit.runs.catalog.SORT_KEYS
    "started",
    "run",
    "status",
    "steps",
    "best_val_loss",
    "best_val_accuracy",
    "val_loss",
    "val_accuracy",
    "test_accuracy",
    "best_val_rmse",
    "val_rmse",
    "test_rmse",
    "wall_time_s",
]

stderr = Console(stderr=True)

SET_HELP = "Override a config key, e.g. [bold]--set optimizer.learning_rate=3e-3[/] (value parsed as YAML; repeatable)."
JSON_HELP = "Print the result as JSON, alone on stdout (tables and progress go to stderr)."
JSON_OUT_HELP = "Also write the result as JSON to this file ([bold]-[/]: stdout); an existing file needs --force."
FORCE_HELP = "Replace --json-out (or --out) if the file exists."
RUN_DIR_HELP = "A run directory made by gradfit train."


def set_option() -> Any:
    """The ``--set KEY=VALUE`` option of every command that reads a config, declared once: its help, its short
    name and its shell completion (the schema's keys, then a choice key's values; see gradfit.cli.completion)."""
    return typer.Option(None, "--set", "-s", help=SET_HELP, metavar="KEY=VALUE", autocompletion=complete_set)


@dataclasses.dataclass
class JsonOutput:
    """Where a command's JSON result goes: stdout (``--json``, or ``--json-out -``), a file (``--json-out``), both
    or neither. Checked before the work starts, so a bad target never wastes a run."""

    to_stdout: bool
    path: Path | None

    @classmethod
    def checked(cls, flag: bool, path: Path | None, force: bool, protected: Sequence[Path] = ()) -> JsonOutput:
        """The outputs ``--json`` (``flag``) and ``--json-out`` (``path``) ask for, refusing a file that exists
        without ``force`` and any of the ``protected`` files (the command's inputs)."""
        from gradfit.files import STDOUT

        if path is not None and str(path) == STDOUT:
            return cls(True, None)
        return cls(flag, None if path is None else checked_output(path, "--json-out", force, protected))

    def console(self) -> Console:
        """Where tables go: stderr when stdout carries the JSON."""
        from gradfit.cli.render.common import stdout_console

        return stderr if self.to_stdout else stdout_console()

    def emit(self, result: Any) -> None:
        """Write ``result`` as JSON to the file and/or stdout chosen."""
        from gradfit.runs.rundir import to_jsonable

        text = json.dumps(to_jsonable(result), indent=2, allow_nan=False) + "\n"
        if self.path is not None:
            from gradfit.files import write_atomic

            write_atomic(self.path, text)
        if self.to_stdout:
            typer.echo(text, nl=False)


def checked_output(path: Path, option: str, force: bool, inputs: Sequence[Path] = (), stdout: bool = True) -> Path:
    """The file a command may write for ``option`` (``gradfit.files.check_output``): never one of ``inputs`` nor a
    file gradfit keeps in a run or sweep directory (its config.yaml, sweep.json, ...), even with --force."""
    from gradfit.files import check_output
    from gradfit.runs.rundir import protected_files

    return check_output(path, option, force, [*inputs, *protected_files(Path(path).parent)], stdout)


def use_compile_cache(wanted: bool = True, quiet: bool = False) -> None:
    """Switch JAX's persistent compilation cache on, unless the user turned it off (see
    gradfit.runtime.compile_cache)."""
    from gradfit.runtime import compile_cache

    folder = compile_cache.directory()
    if wanted and folder is not None:
        problem = compile_cache.enable(folder)
        if problem and not quiet:
            stderr.print(f"[yellow]note:[/] {escape(problem)}", highlight=False, soft_wrap=True)


def data_files(config: GradfitConfig) -> list[Path]:
    """The data file a config reads, if any: never a place to write output."""
    return [Path(config.data.path)] if config.data.source == "file" and config.data.path else []
