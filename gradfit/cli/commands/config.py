"""``gradfit config show``, ``init`` and ``validate``: look at, write and check config files without training."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from gradfit.cli.options import checked_output, set_option, stderr
from gradfit.config.choices import ModelKind


def show(
    config: Path | None = typer.Argument(None, help="YAML config file; omit for the built-in defaults."),
    set_: list[str] | None = set_option(),
    as_yaml: bool = typer.Option(False, "--yaml", help="Print the resolved config as YAML instead of a table."),
) -> None:
    """Show the resolved config: every key, its value and where it came from (default, file:line or --set).

    Keys the chosen model, optimizer or schedule does not use are left out.

    [bold]Examples[/]

      gradfit config show configs/mlp.yaml --set model.hidden=[256,256]
      gradfit config show --yaml > my.yaml
    """
    from gradfit.cli.render.common import stdout_console
    from gradfit.cli.render.training import config_table
    from gradfit.config.load import resolve_config, to_yaml

    resolved = resolve_config(config, set_ or [])
    if as_yaml:
        typer.echo(to_yaml(resolved.config), nl=False)
        return
    table, hidden = config_table(resolved)
    console = stdout_console()
    console.print(table)
    if hidden:
        console.print(f"({hidden} keys not used by this model/optimizer are hidden)", style="dim")


def init(
    path: Path = typer.Argument(Path("gradfit.yaml"), help="The config file to write."),
    model: ModelKind = typer.Option("logistic", "--model", help="The model the template is for."),
    force: bool = typer.Option(False, "--force", help="Replace the file if it exists."),
) -> None:
    """Write a commented config: every key, its default and what it means (keys for other choices commented out).

    [bold]Examples[/]

      gradfit config init my.yaml --model mlp
      gradfit config init - | less
    """
    from gradfit.config.template import config_template
    from gradfit.files import STDOUT, write_atomic

    text = config_template(model)
    if str(path) == STDOUT:
        typer.echo(text, nl=False)
        return
    write_atomic(checked_output(path, "gradfit config init", force), text)
    stderr.print(
        f"wrote {escape(str(path))}; check it with: gradfit config validate {escape(str(path))}",
        highlight=False,
        soft_wrap=True,
    )


def validate(
    configs: list[Path] = typer.Argument(..., help="One or more YAML config files."),
) -> None:
    """Check config files without training; exit 2 if any is invalid. A config with a sweep: section is checked
    whole: the section and every member's config.

    [bold]Example[/]

      gradfit config validate configs/*.yaml configs/sweeps/*.yaml
    """
    from gradfit.config.load import resolve_config
    from gradfit.errors import ConfigError
    from gradfit.sweeps import plan as sweeps

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
