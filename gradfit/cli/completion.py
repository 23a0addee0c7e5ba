"""Shell completion of ``--set KEY=VALUE``: the config's keys from the schema, then the values of a choice key.

``optimizer.le<TAB>`` offers ``optimizer.learning_rate=`` (with the key's description where the shell shows one);
``model.kind=<TAB>`` offers ``model.kind=logistic``, ``model.kind=linear``, ... A key whose value is open (a
number, a path) offers nothing, so the shell falls back to its own completion (file names).

The schema, and so pydantic, is imported only when a completion is asked for: ``gradfit --help`` never loads it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from typing import Any, Literal, Union, get_args, get_origin


@dataclasses.dataclass(frozen=True)
class SchemaKey:
    """A leaf key of the config: ``optimizer.schedule.name``, its description and the values it is limited to."""

    key: str
    description: str
    values: tuple[str, ...]  # as YAML spells them: logistic, true, null; () when the value is open


def complete_set(incomplete: str) -> list[tuple[str, str]]:
    """The completions of a ``--set`` word as (completion, help) pairs: keys (``optimizer.learning_rate=``, with
    their descriptions) before the ``=``, a choice key's values (``model.kind=mlp``) after it."""
    key, equals, value = incomplete.partition("=")
    if not equals:
        return [(f"{entry.key}=", entry.description) for entry in schema_keys() if entry.key.startswith(key)]
    entry = next((entry for entry in schema_keys() if entry.key == key), None)
    if entry is None:
        return []
    return [(f"{key}={choice}", "") for choice in entry.values if choice.startswith(value)]


@functools.cache
def schema_keys() -> tuple[SchemaKey, ...]:
    """Every leaf key of the schema, in the order of its sections (what ``--set`` can set one value of)."""
    from rich.markup import escape

    from gradfit.config.schema import GradfitConfig

    return tuple(
        SchemaKey(".".join(path), escape(description), values) for path, description, values in _walk(GradfitConfig)
    )


def _walk(model: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str, tuple[str, ...]]]:
    """(key path, description, values) of every leaf field of a pydantic model, into its nested sections."""
    from pydantic import BaseModel

    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _walk(annotation, (*prefix, name))
        else:
            found.append(((*prefix, name), field.description or "", allowed_values(annotation)))
    return found


def allowed_values(annotation: Any) -> tuple[str, ...]:
    """The values a key's type names outright, as YAML spells them: a Literal's, true and false for a boolean,
    null beside them when the key is optional. () for an open type (a number, a string, a list)."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    named: list[str] = []
    for member in members:
        if get_origin(member) is Literal:
            named += [_yaml(value) for value in get_args(member)]
        elif member is bool:
            named += ["true", "false"]
    if named and type(None) in members:
        named.append("null")
    return tuple(named)


def _yaml(value: Any) -> str:
    """A Literal's value as it is written in a config (the schema's choices are words; None and booleans too)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
