"""Shell completion of ``--set KEY=VALUE``: the schema's keys, then the values of a choice key, through click's
completion machinery as the installed shell scripts call it (``_GRADFIT_COMPLETE``)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, get_args

import typer
from conftest import ROOT
from typer.testing import CliRunner

from gradfit.cli.app import app
from gradfit.cli.completion import allowed_values, complete_set
from gradfit.config import choices
from gradfit.config.schema import ModelConfig, describe_keys

runner = CliRunner()


def bash_completions(line: str) -> list[str]:
    """What bash's completion function receives for ``line`` with the cursor at its end (a trailing space: a new
    word), as bash hands it over when ``=`` is not a word break (see docs/guides/config.md)."""
    words = line.split()
    current = len(words) if line.endswith(" ") else len(words) - 1
    env = {"_GRADFIT_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(current)}
    result = runner.invoke(app, [], env=env, prog_name="gradfit")
    assert result.exit_code == 0, result.output
    return result.output.split()


def test_set_completes_a_key_from_the_schema():
    assert bash_completions("gradfit train configs/logreg.yaml --set optimizer.le") == ["optimizer.learning_rate="]


def test_set_completes_keys_of_nested_sections():
    line = "gradfit train configs/mlp.yaml --set "
    assert bash_completions(line + "optimizer.schedule.w") == [
        "optimizer.schedule.warmup_steps=",
        "optimizer.schedule.warmup_fraction=",
    ]
    assert bash_completions(line + "train.early_stopping.m") == [
        "train.early_stopping.monitor=",
        "train.early_stopping.min_delta=",
    ]
    assert "data.synthetic.n_samples=" in bash_completions(line + "data.syn")


def test_an_empty_word_offers_every_key_of_the_schema():
    offered = bash_completions("gradfit config show --set ")
    assert offered == [".".join(info.key) + "=" for info in describe_keys()]


def test_after_the_equals_sign_a_choice_key_offers_its_values():
    line = "gradfit train configs/logreg.yaml --set "
    assert bash_completions(line + "model.kind=") == [f"model.kind={kind}" for kind in get_args(choices.ModelKind)]
    assert bash_completions(line + "runtime.device=") == [f"runtime.device={d}" for d in get_args(choices.Device)]
    assert bash_completions(line + "runtime.device=c") == ["runtime.device=cpu"]
    assert bash_completions(line + "data.standardize=") == ["data.standardize=true", "data.standardize=false"]
    assert bash_completions(line + "train.early_stopping.monitor=")[-1] == "train.early_stopping.monitor=null"


def test_an_open_or_unknown_key_offers_no_value():
    """Nothing, so that the shell falls back to its own completion (file names, for data.path)."""
    line = "gradfit train configs/logreg.yaml --set "
    assert bash_completions(line + "optimizer.learning_rate=") == []
    assert bash_completions(line + "data.path=") == []
    assert bash_completions(line + "optimizer.nope=") == []
    assert bash_completions(line + "nope") == []


def test_the_short_name_and_the_equals_form_complete_too():
    assert bash_completions("gradfit trace -s runtime.prec") == ["runtime.precision="]
    assert bash_completions("gradfit compare-grads --set=runtime.device=g") == ["runtime.device=gpu"]


def test_zsh_shows_each_keys_description():
    env = {"_GRADFIT_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "gradfit train --set optimizer.le"}
    result = runner.invoke(app, [], env=env, prog_name="gradfit")
    assert result.exit_code == 0, result.output
    assert '"optimizer.learning_rate=":"step size (peak value when a schedule is used)"' in result.output


def test_allowed_values_spell_the_types_as_yaml():
    from typing import Literal

    assert allowed_values(Literal["a", "b"] | None) == ("a", "b", "null")
    assert allowed_values(Literal["auto"] | bool) == ("auto", "true", "false")
    assert allowed_values(float | None) == ()  # an open value: no lone "null" to insert
    assert allowed_values(list[str]) == ()


def set_options(command: Any, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """'train' -> its --set option, for every command of the tree that has one (typer's click is its own copy)."""
    found = {}
    for param in command.params:
        if "--set" in getattr(param, "opts", ()):
            found[" ".join(path)] = param
    for name, sub in getattr(command, "commands", {}).items():
        found.update(set_options(sub, (*path, name)))
    return found


def test_every_set_option_of_the_app_completes_config_keys():
    root = typer.main.get_command(app)
    options = set_options(root)
    assert {"train", "sweep", "compare-grads", "trace", "config show"} <= set(options)
    for name, option in options.items():
        context = typer.Context(root.commands[name.split()[0]], info_name=name)
        offered = [item.value for item in option.shell_complete(context, "optimizer.le")]
        assert offered == ["optimizer.learning_rate="], name
        assert "-s" in option.opts, name


def test_the_completer_pairs_each_key_with_its_description():
    assert complete_set("model.ki") == [("model.kind=", ModelConfig.model_fields["kind"].description)]
    assert complete_set("model.kind=m") == [("model.kind=mlp", "")]


def test_the_console_script_completes_and_help_stays_free_of_pydantic():
    env = {
        **os.environ,
        "_GRADFIT_COMPLETE": "complete_bash",
        "COMP_WORDS": "gradfit config show --set runtime.device=",
        "COMP_CWORD": "4",
    }
    completed = subprocess.run(["gradfit"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["runtime.device=auto", "runtime.device=cpu", "runtime.device=gpu"]
    code = (
        "import sys, gradfit.cli.app; assert 'pydantic' not in sys.modules, 'pydantic imported'; "
        "from gradfit.cli.completion import complete_set; complete_set('model.'); "
        "assert 'jax' not in sys.modules, 'jax imported'; print('ok')"
    )
    imports = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert imports.returncode == 0, imports.stderr
    assert imports.stdout.strip() == "ok"
