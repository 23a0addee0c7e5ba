"""How every command spells what it shows: the value an option takes in ``--help``, and a usage error.

- An option that takes a value shows one upper-case value name (``N``, ``NUMBER``, ``FILE``, ``DIR``, ``PATH``,
  ``TEXT``) or its choices (``auto|cpu|gpu``), with a range folded in (``N>=1``); a flag shows nothing. Typer's own
  display mixes ``<int range> [x>=1]``, ``<path>`` and ``INTEGER``.
- The usage line writes an argument as ``CONFIG`` (required), ``[CONFIG]`` (optional) or ``RUN...`` (repeated).
- A usage error (a missing argument, an unknown option) prints the usage line, the help hint and
  ``error: <message>``, as every other error does; Typer draws a box titled ``Error``.

Both are installed on Typer's classes when the app is built (``install``), so tests and the console script agree.
"""

from __future__ import annotations

import sys
from typing import Any

import typer.core
from rich.markup import escape
from typer._click.exceptions import ClickException, NoArgsIsHelpError

# what Typer's display type (``<int range>``, ``<path>``, ``<str>``) becomes
_VALUE_NAMES = {"int": "N", "float": "NUMBER", "str": "TEXT", "path": "PATH", "bool": "BOOL"}


def value_name(param: Any, ctx: Any) -> str | None:
    """What ``--help`` shows after an option or argument: None for a flag, else its metavar or a value name."""
    if getattr(param, "is_flag", False):
        return None
    if param.metavar is not None:
        return param.metavar
    shown = str(param.display_type(ctx)).strip("<>")
    if "|" not in shown:  # choices are shown as they are: auto|cpu|gpu
        shown = _VALUE_NAMES.get(shown.removesuffix(" range"), "VALUE")
        bounds = param.help_range()  # "x>=1", "0<=x<=1"
        shown = bounds.replace("x", shown) if bounds else shown
    return shown


def usage_error(exc: ClickException) -> None:
    """Print a click error (bad usage) the way gradfit prints every error, on stderr."""
    from gradfit.cli.options import stderr

    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        stderr.print(escape(ctx.get_usage()), highlight=False, soft_wrap=True)
        stderr.print(f"Try '{escape(ctx.command_path)} --help' for help.", highlight=False, soft_wrap=True)
    stderr.print(f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False, soft_wrap=True)


class GradfitGroup(typer.core.TyperGroup):
    """The app's top group: runs the command line and prints click's usage errors as ``error:`` lines."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.get("standalone_mode", True)
        kwargs["standalone_mode"] = False  # errors come back here, to be printed the gradfit way
        if not standalone:
            return super().main(*args, **kwargs)
        try:
            result = super().main(*args, **kwargs)
        except NoArgsIsHelpError as exc:  # `gradfit config`: its help, as Typer shows it
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
            sys.exit(exc.exit_code)
        except ClickException as exc:
            usage_error(exc)
            sys.exit(exc.exit_code)
        except typer.Abort:
            from gradfit.cli.options import stderr

            stderr.print("[yellow]aborted[/]")
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


def install() -> None:
    """Show value names, not Typer's types, in every ``--help`` (once per process)."""
    for cls in (typer.core.TyperOption, typer.core.TyperArgument):
        if "help_range" not in vars(cls):
            setattr(cls, "help_range", cls._get_number_range_help_str)  # noqa: B010 (a new attribute)
            setattr(cls, "_get_number_range_help_str", _no_range)  # noqa: B010 (folded into the value name)
            setattr(cls, "display_type_rich", value_name)  # noqa: B010
    typer.core.TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]


def _usage_name(self: Any) -> str:
    """An argument on the usage line as click writes it: ``CONFIG`` required, ``[CONFIG]`` optional, ``RUN...``
    repeated (Typer writes ``{config}`` and ``{RUN...}...``)."""
    name = self.metavar or self.display_name_raw.upper()
    if self.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name if self.required else f"[{name}]"


def _no_range(self: Any) -> None:
    return None
