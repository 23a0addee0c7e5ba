"""``gradfit config init``: a commented config file with every key, its default and its meaning. No jax.

Keys the chosen model, optimizer or schedule does not use are written commented out, with what they apply to, so
the file validates as it is and switching (say, to ``optimizer.name: momentum``) is a matter of uncommenting.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from gradfit.config.schema import GradfitConfig, KeyPath, Section, describe_keys, unused_keys

WIDTH = 118


def config_template(model: str = "logistic") -> str:
    """The template for ``model`` ('logistic', 'linear' or 'mlp'): block-style YAML that ``gradfit config validate``
    accepts; a linear model's trains on the built-in numeric target (diabetes)."""
    tree: dict[str, Any] = {"name": {"logistic": "logreg"}.get(model, model), "model": {"kind": model}}
    if model == "linear":
        tree["data"] = {"source": "diabetes"}
    config = GradfitConfig.model_validate(tree)
    lines = [
        "# A gradfit config: every key with its default and what it means. Train with: gradfit train <this file>",
        "# Precedence: defaults < this file < --set KEY=VALUE. Check it with: gradfit config validate <this file>",
        "# Commented-out keys apply to other choices (another optimizer, schedule, data source): uncomment to use.",
    ]
    lines.append("")
    _section(config, (), unused_keys(config), lines, commented=False)
    return "\n".join(lines) + "\n"


def _section(section: Section, prefix: KeyPath, unused: set, lines: list[str], commented: bool) -> None:
    indent = "  " * len(prefix)
    for name, field in type(section).model_fields.items():
        key, value = prefix + (name,), getattr(section, name)
        off = commented or key in unused
        mark = "# " if off else ""
        about = field.description or ""
        if off and not commented:
            about += f" [{_applies_to(type(section), name)}]"
        if isinstance(value, Section):
            lines.append("")
            lines += _comment(indent, about)
            lines.append(f"{indent}{mark}{name}:")
            _section(value, key, unused, lines, off)
            continue
        lines += _comment(indent, about + _CHOICES.get(key, ""))
        lines.append(f"{indent}{mark}{name}: {_yaml(value)}")


def _comment(indent: str, text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - len(indent), initial_indent=f"{indent}# ", subsequent_indent=f"{indent}#   ")


def _applies_to(cls: type[Section], name: str) -> str:
    users = cls.APPLIES_TO.get(name)
    return f"only with {cls.SELECTOR}: {' or '.join(sorted(users))}" if users else "not used with these choices"


_CHOICES = {
    info.key: f" (one of: {', '.join(str(c) for c in info.choices if c is not None)})"
    for info in describe_keys()
    if info.choices and all(isinstance(c, (str, bool, int, type(None))) for c in info.choices)
}


def _yaml(value: Any) -> str:
    """One value in YAML flow style: null, true, 0.001, [128, 64], auto."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
