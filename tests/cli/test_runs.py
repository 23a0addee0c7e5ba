"""Seeing and comparing runs on real run directories: the typed summary, gradfit runs/compare/plot, metrics.csv and
TensorBoard event files against metrics.jsonl, the Python API, config init and the CLI conventions."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from conftest import InterruptAt
from logfiles import read_csv, read_events
from typer.testing import CliRunner

import gradfit
from gradfit import api, files
from gradfit.cli.app import app
from gradfit.config.load import resolve_config
from gradfit.config.schema import describe_keys
from gradfit.data import dataset
from gradfit.errors import ConfigError, DataError, Interrupted, RunDirError, TrainingFailed
from gradfit.runs import catalog, checkpoints, comparison
from gradfit.runs.metrics import RECORD_KEYS
from gradfit.runs.rundir import RunDir, Summary
from gradfit.training import session

LOGISTIC = {
    "name": "lr",
    "optimizer": {"name": "momentum", "learning_rate": 0.05},
    "runtime": {"precision": "float64"},
    "train": {
        "batch_size": 50,
        "epochs": 3,
        "log_every": 3,
        "checkpoint_every": 6,
        "eval_every": 6,
        "loggers": ["jsonl", "csv", "tensorboard"],
    },
}
DIVERGING = (
    "name=bad",
    "data.source=digits",
    "model.kind=mlp",
    "model.hidden=[8]",
    "train.steps=30",
    "train.log_every=1",
    "optimizer={name: sgd, learning_rate: 30.0}",
)


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """The built-in breast cancer table as raw features (n, 30) and text labels (n,)."""
    with open(dataset.builtin_path("breast_cancer"), newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    return np.array([[float(v) for v in row[:-1]] for row in rows]), np.array([row[-1] for row in rows])


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A folder with a completed, a failed, an interrupted and a resumed run, one with a damaged summary and one
    killed before writing any (unfinished)."""
    folder = tmp_path_factory.mktemp("made") / "runs"
    runs = {"completed": Path(gradfit.fit(LOGISTIC, out_dir=folder).run_dir)}
    with pytest.raises(TrainingFailed) as failed:
        gradfit.fit(resolve_config(None, list(DIVERGING)).config, out_dir=folder)
    runs["failed"] = Path(failed.value.summary.run_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(session, "CHUNK_SECONDS", 0.0)  # one log window a chunk: Ctrl-C stops at that log point
        for name in ("interrupted", "resumed"):
            with pytest.raises(Interrupted) as stopped:
                gradfit.fit(LOGISTIC, {"name": name, "optimizer.learning_rate": 0.02}, folder, callbacks=InterruptAt(9))
            runs[name] = Path(stopped.value.summary.run_dir)
    checkpoints.latest(runs["resumed"]).unlink()  # as if killed: the resume replays steps that were logged already
    api.resume(runs["resumed"])
    damages = {
        "unfinished": lambda path: path.unlink(),
        "damaged": lambda path: path.write_text('{"run_dir": null, "status": 3, "stop_reason": ""}'),
    }
    for name, damage in damages.items():
        runs[name] = folder / f"{name}-20261201-120000"
        shutil.copytree(runs["interrupted"], runs[name])
        damage(runs[name] / "summary.json")
    return {"folder": folder, **runs}


# ------------------------------------------------------------------------------------------------ the typed summary


def test_summary_json_reads_back_as_the_summary_fit_returned(tmp_path):
    summary = gradfit.fit(LOGISTIC, {"train.loggers": ["jsonl"]}, tmp_path)
    assert isinstance(summary, Summary) and Summary.read(Path(summary.run_dir, "summary.json")) == summary
    best = min(r["val_loss"] for r in RunDir(Path(summary.run_dir)).metrics() if r["val_loss"] is not None)
    assert summary.best["val_loss"] == best and summary.name == "lr" and summary.started.startswith("20")


def test_a_damaged_summary_names_its_file_and_key(made):
    with pytest.raises(RunDirError, match=r"damaged-20261201-120000/summary.json: not a gradfit summary \(status"):
        RunDir(made["damaged"]).summary()


def test_a_torn_last_metrics_line_is_left_out(tmp_path):
    run = RunDir(tmp_path)
    run.metrics_file.write_text('{"step": 0}\n{"step": 5}\n{"ste')
    assert run.metrics() == [{"step": 0}, {"step": 5}]


# ------------------------------------------------------------------------------------------------ gradfit runs


def test_runs_lists_every_status_with_its_metrics(made):
    result = invoke("runs", made["folder"], "--json")
    assert result.exit_code == 0, result.output
    rows = {row["run"]: row for row in json.loads(result.stdout)}
    status = {
        name: rows[Path(made[name]).name]["status"]
        for name in ("completed", "failed", "interrupted", "resumed", "unfinished", "damaged")
    }
    assert status == {
        "completed": "completed",
        "failed": "failed",
        "interrupted": "interrupted",
        "resumed": "completed",
        "unfinished": "unfinished",
        "damaged": "damaged",
    }
    completed = Summary.read(made["completed"] / "summary.json")
    row = rows[made["completed"].name]
    assert (row["steps"], row["val_loss"], row["test_accuracy"], row["best_val_loss"], row["model"]) == (
        completed.steps,
        completed.final["val_loss"],
        completed.final["test_accuracy"],
        completed.best["val_loss"],
        "logistic",
    )
    assert rows[made["unfinished"].name]["steps"] == 9  # its newest checkpoint's, read from the file name

    table = invoke("runs", made["folder"], "--status", "failed")
    assert table.exit_code == 0 and made["failed"].name in table.stdout and made["completed"].name not in table.stdout


def test_runs_sorts_best_first_and_reads_only_summaries(made, monkeypatch):
    read = files.read_text

    def no_metrics(path, *args, **kwargs):
        assert Path(path).name != "metrics.jsonl", "a listing must not read metrics.jsonl"
        return read(path, *args, **kwargs)

    monkeypatch.setattr(files, "read_text", no_metrics)
    result = invoke("runs", made["folder"], "--sort", "best_val_loss", "--json")
    losses = [row["best_val_loss"] for row in json.loads(result.stdout)]
    present = [v for v in losses if v is not None]
    assert present == sorted(present) and losses[: len(present)] == present and len(present) >= 3


def test_the_cli_offers_every_sort_key_and_status_the_catalog_has():
    from typing import get_args

    from gradfit.cli import options as cli

    assert get_args(cli.RunSort) == catalog.SORT_KEYS
    assert get_args(cli.RunStatus) == catalog.STATUSES


def test_runs_lists_a_single_run_and_refuses_a_missing_folder(made, tmp_path):
    assert [e.path for e in catalog.find_runs(made["completed"])] == [made["completed"]]
    assert catalog.find_runs(tmp_path) == []
    result = invoke("runs", tmp_path / "nowhere")
    assert result.exit_code == 2 and "no such folder" in result.output


def test_runs_lists_sweep_members_and_a_run_in_training(made, tmp_path):
    sweep = tmp_path / "lr-sweep-20261201-120000"
    for member in ("000_learning_rate=0.1", "001_learning_rate=0.2"):
        shutil.copytree(made["completed"], sweep / "members" / member)
    labels = [entry.label for entry in catalog.find_runs(tmp_path, members=True)]
    assert labels == [f"{sweep.name}/members/000_learning_rate=0.1", f"{sweep.name}/members/001_learning_rate=0.2"]
    (folded,) = catalog.find_runs(tmp_path)  # one entry for the sweep: damaged, as it has no sweep.json
    assert (folded.label, folded.kind, folded.status, folded.sweep.members) == (sweep.name, "sweep", "damaged", 2)
    assert len(catalog.find_runs(sweep)) == 2  # the sweep's own folder lists its members
    with RunDir(sweep / "members" / "000_learning_rate=0.1").locked():
        assert [entry.status for entry in catalog.find_runs(sweep)] == ["running", "completed"]
    (sweep / "members" / "001_learning_rate=0.2" / ".lock").unlink()
    os.mkfifo(sweep / "members" / "001_learning_rate=0.2" / ".lock")  # an odd lock file: no hang, not running
    assert [entry.status for entry in catalog.find_runs(sweep)] == ["completed", "completed"]


def two_runs(made, tmp_path) -> tuple[Path, Path, Path]:
    """A folder holding two copies of the completed run: (folder, good, bad)."""
    folder = tmp_path / "runs"
    good, bad = folder / "good-20261201-120000", folder / "bad-20261201-120001"
    for path in (good, bad):
        shutil.copytree(made["completed"], path)
    return folder, good, bad


def assert_listed_as_damaged(folder: Path, bad: Path, reason: str) -> None:
    result = invoke("runs", folder, "--sort", "best_val_loss", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["run"]: row for row in json.loads(result.stdout)}
    assert rows["good-20261201-120000"]["status"] == "completed"
    assert rows[bad.name]["status"] == "damaged" and reason in rows[bad.name]["stop_reason"]
    table = invoke("runs", folder, "--sort", "best_val_loss")
    assert table.exit_code == 0 and "good-20261201-120000" in table.stdout and bad.name in table.stdout
    assert reason in " ".join(table.stdout.split())  # the line under the table says why


def test_runs_lists_an_unreadable_run_folder_and_goes_on(made, tmp_path, monkeypatch):
    """As chmod 000 makes it for anyone but root (whom the permission does not stop): every look inside fails."""
    folder, good, bad = two_runs(made, tmp_path)
    stat, scandir = Path.stat, os.scandir

    def denied(path):
        if Path(path) == bad or bad in Path(path).parents:
            raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "stat", lambda self, **kw: denied(self.parent) or stat(self, **kw))
    monkeypatch.setattr(os, "scandir", lambda path=".": denied(path) or scandir(path))
    assert_listed_as_damaged(folder, bad, "Permission denied")
    compared = invoke("compare", good, bad)
    assert compared.exit_code == 2 and "cannot read the run directory (Permission denied)" in compared.output


def test_runs_lists_a_folder_it_may_not_read(made, tmp_path):
    folder, _, bad = two_runs(made, tmp_path)
    bad.chmod(0)
    try:
        if os.access(bad, os.R_OK | os.X_OK):
            pytest.skip("permissions do not stop this user (root)")
        assert_listed_as_damaged(folder, bad, "Permission denied")
    finally:
        bad.chmod(0o755)


def test_a_summary_with_a_value_of_the_wrong_type_is_damaged_not_a_crash(made, tmp_path):
    folder, _, bad = two_runs(made, tmp_path)
    summary = json.loads((bad / "summary.json").read_text())
    summary["best"]["val_loss"] = "oops"
    (bad / "summary.json").write_text(json.dumps(summary))
    assert_listed_as_damaged(folder, bad, "best.val_loss")
    with pytest.raises(RunDirError, match=r"summary.json: not a gradfit summary \(best.val_loss: .*number"):
        gradfit.load_run(bad)  # what gradfit eval and predict read


# ------------------------------------------------------------------------------------------------ gradfit compare


def test_compare_shows_the_config_differences_and_the_metrics_side_by_side(made):
    a, b = made["completed"], made["resumed"]
    result = invoke("compare", a, b, "--json")
    assert result.exit_code == 0, result.output
    compared = json.loads(result.stdout)
    assert compared["config"] == {"name": ["lr", "resumed"], "optimizer.learning_rate": [0.05, 0.02]}
    summaries = [Summary.read(run / "summary.json") for run in (a, b)]
    assert compared["metrics"]["test_loss"] == [s.final["test_loss"] for s in summaries]
    assert compared["metrics"]["steps"] == [s.steps for s in summaries]

    table = invoke("compare", a, b)
    assert "optimizer.learning_rate │ 0.05 -> 0.02" in table.stdout
    assert invoke("compare", a).exit_code == 2


def test_compare_reads_an_older_config_with_its_defaults(made, tmp_path):
    """A key an older config.yaml does not spell is its default, not a difference."""
    older = tmp_path / "older"
    shutil.copytree(made["completed"], older)
    text = (older / "config.yaml").read_text()
    (older / "config.yaml").write_text("\n".join(line for line in text.splitlines() if "loggers" not in line))
    compared = comparison.compare([made["completed"], older])
    assert compared.config == {"train.loggers": [["jsonl", "csv", "tensorboard"], ["jsonl"]]}
    assert compared.labels == [made["completed"].name, "older"]


# ------------------------------------------------------------------------------------------------ gradfit plot


def test_plot_draws_one_line_per_run_at_the_requested_size(made, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    from PIL import Image

    out = tmp_path / "curves.png"
    result = invoke(
        "plot", made["completed"], made["resumed"], "--metric", "batch_objective", "--size", "500x300", "--out", out
    )
    assert result.exit_code == 0, result.output
    rgb = np.asarray(Image.open(out).convert("RGB"), dtype=int)
    assert rgb.shape == (300, 500, 3)
    tab10 = np.array(matplotlib.colormaps["tab10"].colors) * 255
    counts = [int((np.abs(rgb - colour).max(axis=-1) <= 10).sum()) for colour in tab10[:3]]
    assert counts[0] > 100 and counts[1] > 100 and counts[2] == 0, counts

    again = invoke("plot", made["completed"], "--out", out)
    assert again.exit_code == 2 and "--force" in again.output
    own = invoke("plot", made["completed"], "--out", made["completed"] / "metrics.jsonl", "--force")
    assert own.exit_code == 2 and own.output.count("\n") <= 3


def test_plot_defaults_to_the_metrics_every_run_logs():
    from gradfit.runs.plot import PLOT_METRICS_DEFAULT

    option = next(p for p in typer.main.get_command(app).commands["plot"].params if p.name == "metric")
    assert option.default is None  # the first run's kind of target picks val_accuracy or val_rmse
    assert ",".join(PLOT_METRICS_DEFAULT) in option.help


def test_plot_without_matplotlib_says_how_to_install_it(made, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    result = invoke("plot", made["completed"], "--out", tmp_path / "c.png")
    assert result.exit_code == 2 and "pip install 'gradfit[plot]'" in result.output
    assert not (tmp_path / "c.png").exists()


# ------------------------------------------------------------------------------------------------ loggers


@pytest.mark.parametrize("name", ["completed", "resumed"])
def test_csv_and_tensorboard_hold_exactly_what_metrics_jsonl_holds(made, name):
    pytest.importorskip("tensorboardX")
    records = RunDir(made[name]).metrics()
    header, rows = read_csv(made[name] / "metrics.csv")
    assert tuple(header) == RECORD_KEYS
    assert rows == [{key: record.get(key) for key in RECORD_KEYS} for record in records]

    points = read_events(made[name])
    assert len(points) == len({(tag, step) for tag, step, _ in points}), "a step logged twice"
    expected = {
        (key, r["step"]): r[key] for r in records for key in RECORD_KEYS if key != "step" and r.get(key) is not None
    }
    assert {(tag, step) for tag, step, _ in points} == set(expected)
    assert all(value == pytest.approx(expected[tag, step], rel=1e-6) for tag, step, value in points)


def test_a_resumed_run_logs_each_step_once(made):
    assert (made["resumed"] / "metrics.discarded.jsonl").exists(), "the resume replayed no logged step"
    steps = [record["step"] for record in RunDir(made["resumed"]).metrics()]
    assert steps == sorted(set(steps)) and steps[-1] == Summary.read(made["resumed"] / "summary.json").steps


def test_loggers_may_change_on_resume_and_config_yaml_says_so(made, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(made["interrupted"], run)
    checkpoints.latest(run).unlink()  # steps past the checkpoint were logged: the derived logs must drop them
    summary = api.resume(run, overrides={"train.loggers": ["jsonl"]})  # no --force: it computes the same
    assert summary.status == "completed" and RunDir(run).config().train.loggers == ["jsonl"]
    # a log no longer asked for would end at the resume step: it is removed, and summary.json says so
    assert not (run / "metrics.csv").exists() and not list(run.glob("events.out.tfevents.*"))
    assert summary.resumes[0]["removed_logs"][0] == "metrics.csv"


def test_an_unknown_logger_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"train.loggers"):
        resolve_config(None, ["train.loggers=[jsonl, wandb]"])


# ------------------------------------------------------------------------------------------------ Python API


def test_the_python_api_round_trips_a_run(made, tmp_path):
    run = gradfit.load_run(made["completed"])
    assert run.summary == Summary.read(made["completed"] / "summary.json")
    x, y = breast_cancer()

    result = invoke("eval", made["completed"], "--data", dataset.builtin_path("breast_cancer"), "--json")
    assert run.evaluate(x, y) == {k: v for k, v in json.loads(result.stdout).items() if k not in ("run_dir", "data")}

    out = tmp_path / "p.csv"
    assert invoke("predict", made["completed"], dataset.builtin_path("breast_cancer"), "--out", out).exit_code == 0
    with open(out, newline="", encoding="utf-8") as handle:
        assert list(run.predict(x)) == [row["prediction"] for row in csv.DictReader(handle)]
    assert np.allclose(run.predict_proba(x).sum(axis=1), 1.0)
    assert len(run.inference().coefficients) == x.shape[1] + 1


def test_the_python_api_raises_the_same_errors(made):
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        gradfit.fit({"optimizer": {"learning_rat": 0.1}})
    with pytest.raises(RunDirError, match="has no params.npz"):
        gradfit.load_run(made["failed"])
    run = gradfit.load_run(made["completed"])
    with pytest.raises(DataError, match=r"expected an \(n, 30\) array"):
        run.predict(np.zeros((2, 3)))


# ------------------------------------------------------------------------------------------------ CLI conventions


@pytest.mark.parametrize("model", ["logistic", "linear", "mlp"])
def test_config_init_writes_every_key_and_validates(tmp_path, model):
    path = tmp_path / "c.yaml"
    assert invoke("config", "init", path, "--model", model).exit_code == 0
    text = path.read_text()
    name = {"logistic": "logreg"}.get(model, model)
    data = ["data.source=diabetes"] if model == "linear" else []  # a numeric target to fit
    assert resolve_config(path).config == resolve_config(None, [f"model.kind={model}", f"name={name}", *data]).config
    for info in describe_keys():  # at its depth, set or commented out
        assert re.search(rf"^{'  ' * (len(info.key) - 1)}(# )?{info.key[-1]}:", text, re.MULTILINE), info.key
    assert invoke("config", "validate", path).exit_code == 0
    refused = invoke("config", "init", path)
    assert refused.exit_code == 2 and "--force" in refused.output and path.read_text() == text


def test_config_init_never_replaces_a_sweeps_plan_or_state_even_with_force(tmp_path):
    sweep = tmp_path / "mlp-sweep-20261207-101500"
    (sweep / "members").mkdir(parents=True)
    kept = {sweep / "sweep.yaml": "name: mlp\nsweep: {seeds: 2}\n", sweep / "sweep.json": '{"members": []}\n'}
    for path, text in kept.items():
        path.write_text(text)
    for path in kept:
        refused = invoke("config", "init", path, "--force")
        assert refused.exit_code == 2 and "gradfit keeps" in refused.output, refused.output
    assert {path: path.read_text() for path in kept} == kept
    assert invoke("config", "init", sweep / "another.yaml").exit_code == 0  # the folder itself is not off limits


def test_help_shows_no_type_after_flags_and_offers_completion():
    train = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "120"})
    assert "--json" in train.output and "<bool>" not in train.output
    assert "--install-completion" in CliRunner().invoke(app, ["--help"]).output


def test_a_table_title_never_breaks_a_path_mid_word(made, tmp_path):
    from rich.console import Console

    from gradfit.cli.render import trained as render

    x, y = breast_cancer()
    source = str(tmp_path / "a-folder-with-a-rather-long-name" / "and-a-data-file-named-at-length.csv")
    titled = 0
    for table in render.eval_tables(gradfit.load_run(made["completed"]).evaluate(x, y), source):
        console = Console(width=len(source) + 10, file=io.StringIO())
        console.print(table)
        if "Evaluation" in console.file.getvalue():
            titled += 1
            assert any(source in line for line in console.file.getvalue().splitlines())
    assert titled == 1
