"""What the slow commands show while they work: compare-grads' stages, parameter groups and methods on stderr (the
result alone on stdout), its step-size sweep under its new name and its old one, and the gradient check's progress
hooks."""

from __future__ import annotations

import io
import json

import jax.numpy as jnp
import numpy as np
from conftest import CONFIGS
from rich.console import Console
from typer.testing import CliRunner

from gradfit.cli.app import app
from gradfit.cli.render.progress import GradcheckProgress
from gradfit.gradients.gradcheck import CheckOptions, check_gradient, planted_error

runner = CliRunner()
STAGES = ["starting JAX...", "loading data...", "compiling the loss and its gradient..."]


def invoke(*args: str):
    return runner.invoke(app, ["compare-grads", *args], env={"COLUMNS": "200"})


def test_compare_grads_tells_its_stages_on_stderr_and_the_old_sweep_spelling_still_works():
    result = invoke("--sweep", "--json")  # JSON alone on stdout; the tables and the progress on stderr
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sweep"]["shape"] == "V"
    lines = result.stderr.splitlines()
    assert lines[0] == "note: --sweep is now --step-sweep"  # one line, before any work
    assert lines[1:4] == STAGES  # not a terminal: a plain line per stage, in order
    groups = [line for line in lines if line.startswith("group ")]
    assert groups == ["group 1 of 2: b (1 entry)...", "group 2 of 2: w (30 entries)..."]
    assert lines.index("step-size sweep...") > lines.index(groups[-1])
    assert "verdict: PASS" in result.stderr


def test_compare_grads_step_sweep_with_quiet_prints_the_result_and_no_progress(tmp_path):
    out = tmp_path / "check.json"
    result = invoke("--step-sweep", "--quiet", "--json-out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.startswith("problem: configs/logreg.yaml")  # the tables, untouched by any progress
    assert "Finite-difference error against the step h" in result.stdout and "verdict: PASS" in result.stdout
    assert json.loads(out.read_text())["sweep"]["shape"] == "V"


def test_help_names_the_step_sweep_and_hides_the_old_spelling():
    result = runner.invoke(app, ["compare-grads", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--step-sweep" in result.output and "--quiet" in result.output
    assert "--sweep " not in result.output.replace("--step-sweep", "")


class Recorder:
    """Every hook call of a gradient check, in order; raises on ``fail_on`` (a display whose pipe closed)."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple] = []
        self.fail_on = fail_on

    def _record(self, *call) -> None:
        self.calls.append(call)
        if call[0] == self.fail_on:
            raise BrokenPipeError("stderr closed")

    def on_stage(self, message):
        self._record("stage", message)

    def on_group(self, index, total, name, size):
        self._record("group", index, total, name, size)

    def on_method(self, method):
        self._record("method", method)


def loss(p):
    return jnp.sum(jnp.sin(p["a"]) * p["b"][0]) + jnp.sum(p["b"] ** 3)


PARAMS = {"a": jnp.linspace(-1.0, 1.0, 5), "b": jnp.array([0.3, -0.7])}


def manual(p):
    return {
        "a": np.cos(p["a"]) * p["b"][0],
        "b": 3 * np.asarray(p["b"]) ** 2 + np.array([np.sum(np.sin(p["a"])), 0.0]),
    }


def test_the_check_tells_each_group_and_method_as_it_starts():
    told = Recorder()
    report = check_gradient(loss, PARAMS, manual, CheckOptions(precision="float32"), sweep=True, callbacks=told)
    assert report.verdict == "pass"
    assert told.calls[0] == ("stage", "compiling the loss and its gradient")
    assert told.calls[-1] == ("stage", "step-size sweep")
    steps = ["noise", "finite_difference", "forward", "manual", "float64"]  # float32: float64 reverse AD too
    assert told.calls[1:-1] == [
        *[("group", 0, 2, "a", 5), *[("method", m) for m in steps]],
        *[("group", 1, 2, "b", 2), *[("method", m) for m in steps]],
    ]


def test_a_failing_direction_is_told_as_narrowed_and_a_failing_display_does_not_stop_the_check():
    params = {"w": jnp.linspace(-1.0, 1.0, 40)}
    bugged = planted_error(lambda p: jnp.sum(jnp.sin(p["w"]) ** 2), 7, 0.01)
    told = Recorder()
    options = CheckOptions(full=False, coordinates=4)  # directional: 40 entries > 4 sampled coordinates
    assert check_gradient(bugged, params, options=options, callbacks=told).verdict == "fail"
    assert ("method", "bisect") in told.calls
    broken = Recorder(fail_on="group")
    assert check_gradient(bugged, params, options=options, callbacks=broken).verdict == "fail"
    assert broken.calls[-1][0] == "group"  # dropped at its first failure; the check went on without it


def test_a_terminal_sees_a_spinner_then_a_bar_over_the_groups_and_nothing_is_left_behind():
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    display = GradcheckProgress(console)
    display.on_stage("loading data")
    assert display.status is not None and display.progress is None
    display.on_group(0, 3, "layers/0/w", 8192)
    display.on_method("finite_difference")
    assert display.status is None and display.progress is not None  # the spinner gave way to the bar
    task = display.progress.tasks[0]
    assert task.description == "layers/0/w (8,192 entries): finite differences"
    assert (task.completed, task.total) == (0, 3)
    display.on_group(1, 3, "layers/0/b", 128)
    assert display.progress.tasks[0].completed == 1
    display.on_stage("step-size sweep")  # after the groups: the bar gives way to a spinner again
    assert display.progress is None and display.status is not None
    display.close()
    assert display.status is None and display.progress is None
    assert "finite differences" in console.file.getvalue()  # it was drawn, then erased (transient)


def test_elsewhere_a_plain_line_per_stage_and_group_and_none_per_method():
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    display = GradcheckProgress(console)
    display.on_stage("loading data")
    display.on_group(0, 1, "w", 1)
    display.on_method("forward")
    display.close()
    assert console.file.getvalue().splitlines() == ["loading data...", "group 1 of 1: w (1 entry)..."]


def test_gradfit_train_shows_its_own_progress_once_and_none_with_quiet(monkeypatch, tmp_path):
    from gradfit.training import progress

    monkeypatch.setattr(progress, "default_on", lambda: True)  # as on a terminal, where gradfit.fit would show its own
    train = ["train", str(CONFIGS / "logreg.yaml"), "--set", "train.steps=3", "--out-dir", str(tmp_path)]
    shown = runner.invoke(app, train, env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("run directory: ") == 1
    quiet = runner.invoke(app, [*train, "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output == ""
