"""mkdocs hooks: the reference pages that are generated from the code at build time.

A page holds a marker such as ``<!-- generated: config-keys -->``; ``on_page_markdown`` replaces it with a table
built from the config schema, the ``--help`` of every command of the Typer app, or the package docstrings. The
reference therefore cannot drift from the code, and ``mkdocs build --strict`` fails when the code cannot be read.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELP_WIDTH = 100  # columns of the rendered --help text (wide enough for the option tables)


# ---------------------------------------------------------------------------------------------------------- config


def _yaml_value(value: Any) -> str:
    """A default as it would be written in a config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_value(item) for item in value) + "]"
    return str(value)


def _choice_names(choices: tuple | None) -> list[str]:
    """The values a key accepts, flattened from the schema's Literal types (``bool`` is true/false)."""
    names: list[str] = []
    for choice in choices or ():
        if choice is bool:
            names += ["true", "false"]
        elif typing.get_origin(choice) is typing.Literal:
            names += [_yaml_value(arg) for arg in typing.get_args(choice)]
        elif isinstance(choice, type):
            names.append(choice.__name__)
        else:
            names.append(_yaml_value(choice))
    return names


def _with_value(section: Any, key: tuple[str, ...], value: Any) -> Any:
    """A copy of ``section`` with one key changed, unvalidated: ``data.source: file`` needs no ``data.path`` here."""
    if len(key) == 1:
        return section.model_copy(update={key[0]: value})
    return section.model_copy(update={key[0]: _with_value(getattr(section, key[0]), key[1:], value)})


def _used_when(infos: list) -> dict[tuple[str, ...], str]:
    """For each key, the choices of other keys under which it is used (empty: always used).

    Found by asking the schema itself: a config is built for every value of every key with choices, and the keys
    that ``unused_keys`` reports for it are the ones that value switches off.
    """
    from gradfit.config.load import GradfitConfig, unused_keys

    switches: dict[tuple[str, ...], dict[str, set]] = {}
    for info in infos:
        for name in _choice_names(info.choices):
            raw = {"null": None, "true": True, "false": False}.get(name, name)
            config = _with_value(GradfitConfig(), info.key, raw)
            switches.setdefault(info.key, {})[name] = set(unused_keys(config))
    conditions: dict[tuple[str, ...], str] = {}
    for info in infos:
        parts = []
        for switch, unused_by_value in switches.items():
            if switch == info.key:
                continue
            used = [
                value
                for value, unused in unused_by_value.items()
                if not any(info.key[:n] in unused for n in range(1, len(info.key) + 1))
            ]
            if 0 < len(used) < len(unused_by_value):
                unused_values = [value for value in unused_by_value if value not in used]
                if len(unused_values) < len(used) and len(unused_values) == 1:
                    parts.append(f"`{'.'.join(switch)}` not `{unused_values[0]}`")
                else:
                    parts.append(f"`{'.'.join(switch)}`: " + ", ".join(f"`{value}`" for value in used))
        conditions[info.key] = "; ".join(parts)
    return conditions


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_keys_table() -> str:
    """Every key of the schema: default, accepted values, when it is used, and its meaning."""
    from gradfit.config.load import describe_keys

    infos = describe_keys()
    used_when = _used_when(infos)
    rows = ["| key | default | values | used when | meaning |", "|---|---|---|---|---|"]
    for info in infos:
        values = ", ".join(f"`{name}`" for name in _choice_names(info.choices))
        rows.append(
            f"| `{'.'.join(info.key)}` | `{_yaml_value(info.default)}` | {_cell(values)} | "
            f"{_cell(used_when[info.key])} | {_cell(info.description)} |"
        )
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------------------- cli


def _plain(markup: str) -> str:
    from rich.text import Text

    return Text.from_markup(markup).plain


def _help_text(path: list[str]) -> str:
    """``gradfit <path> --help`` as a user sees it, without colour and trailing blanks."""
    from typer.testing import CliRunner

    from gradfit.cli.app import app

    result = CliRunner().invoke(
        app, [*path, "--help"], prog_name="gradfit", env={"TERMINAL_WIDTH": str(HELP_WIDTH), "NO_COLOR": "1"}
    )
    if result.exit_code != 0:
        raise RuntimeError(f"gradfit {' '.join(path)} --help exited with {result.exit_code}: {result.output}")
    lines = [line.rstrip() for line in result.output.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines).rstrip()


def _commands(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    """Every command and command group below ``command``, depth first, in the order ``--help`` lists them."""
    import typer

    context = typer.Context(command, info_name=" ".join(["gradfit", *path]))
    found = []
    for name in command.list_commands(context):
        sub = command.get_command(context, name)
        if sub is None or getattr(sub, "hidden", False):
            continue
        found.append(([*path, name], sub))
        if hasattr(sub, "list_commands"):
            found.extend(_commands(sub, [*path, name]))
    return found


def cli_reference() -> str:
    """A section per command: its one-line purpose and its full ``--help``."""
    import typer

    from gradfit.cli.app import app

    root = typer.main.get_command(app)
    parts = ["## gradfit", "", "```text", _help_text([]), "```", ""]
    for path, command in _commands(root, []):
        level = "#" * (len(path) + 1)
        summary = _plain((command.help or "").strip().split("\n\n")[0]).replace("\n", " ")
        parts += [f"{level} gradfit {' '.join(path)}", "", summary, "", "```text", _help_text(path), "```", ""]
    return "\n".join(parts)


# -------------------------------------------------------------------------------------------------------- packages


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def _markdown(docstring: str) -> str:
    """A docstring as markdown: a blank line before each list (Python-Markdown needs one) and lines unwrapped."""
    out: list[str] = []
    for line in docstring.splitlines():
        starts_list = line.startswith("- ")
        if starts_list and out and out[-1] and not out[-1].startswith(("- ", " ")):
            out.append("")
        out.append(line)
    return "\n".join(out)


def packages_table() -> str:
    """The top-level modules of ``gradfit/`` as a table, then each package with its modules and its docstring."""
    package_root = ROOT / "gradfit"
    rows = ["| module | job |", "|---|---|"]
    for module in sorted(package_root.glob("*.py")):
        summary = _docstring(module).split("\n\n")[0]
        if module.name not in ("__init__.py", "__main__.py") and summary:
            rows.append(f"| `gradfit.{module.stem}` | {_cell(summary)} |")
    parts = ["\n".join(rows), ""]
    for init in sorted(package_root.glob("*/__init__.py")):
        package = init.parent
        modules = [path.stem for path in package.glob("*.py") if path.name != "__init__.py"]
        modules += [f"{path.parent.name}/" for path in package.glob("*/__init__.py")]  # sub-packages
        listed = ", ".join(f"`{name}`" for name in sorted(modules))
        parts += [f"### `gradfit.{package.name}`", "", f"Modules: {listed}.", "", _markdown(_docstring(init)), ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------------------ hook

GENERATORS = {
    "<!-- generated: config-keys -->": config_keys_table,
    "<!-- generated: cli -->": cli_reference,
    "<!-- generated: packages -->": packages_table,
}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace each generation marker of a page with what it stands for."""
    for marker, generate in GENERATORS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
