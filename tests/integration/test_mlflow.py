"""The mlflow logger against a real local MLflow store, read back with MLflow's own client: params, one point per
step and metric (also after a crash and a resume), the run's files as artifacts, the run's status, and a run that
trains on when its tracking server cannot be reached."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import pytest
from conftest import InterruptAt, make_config

from gradfit.config.load import resolve_config
from gradfit.errors import ConfigError, Interrupted
from gradfit.runs import checkpoints
from gradfit.runs.loggers import check_available
from gradfit.sweeps import plan as sweeps
from gradfit.sweeps import run as sweep_run
from gradfit.training.loop import fit
from gradfit.training.resume import resume

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_window_chunks")

LOGGED = ("name=mlf", "train.steps=12", "train.log_every=2", "train.checkpoint_every=4", "runtime.precision=float64")


@pytest.fixture
def store(tmp_path, monkeypatch) -> MlflowClient:
    """A client of a file store in ``tmp_path``, where MLFLOW_TRACKING_URI sends the runs."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # gradfit sets it too; here it is undone after the test
    return MlflowClient(tracking_uri=uri)


def jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_one_point_per_step(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    """Every finite value of metrics.jsonl is in the MLflow run at its step, and nothing else is."""
    records = jsonl(run_dir)
    keys = {k for r in records for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
    assert set(client.get_run(run_id).data.metrics) == keys
    for key in keys:
        expected = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
        expected = [(s, v) for s, v in expected if math.isfinite(v)]
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [s for s, _ in got] == [s for s, _ in expected], key
        # equal to the last bit, but for elapsed_s, which differs between a crashed session and its resume
        if key != "elapsed_s":
            assert got == expected, key


def recorded_run(run_dir: Path) -> str:
    return json.loads((run_dir / "mlflow.json").read_text())["run_id"]


def test_params_metrics_artifacts_and_status(store, tmp_path):
    summary = fit(make_config(*LOGGED, "train.loggers=[jsonl, mlflow]"), tmp_path / "runs")
    run_dir = Path(summary.run_dir)
    run = store.get_run(recorded_run(run_dir))
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert store.get_experiment(run.info.experiment_id).name == "mlf"
    params = run.data.params
    assert params["train.steps"] == "12" and params["name"] == "mlf" and params["optimizer.name"] == "adam"
    assert params["train.loggers"] == '["jsonl", "mlflow"]' and params["train.tol"] == "null"
    assert run.data.tags["gradfit.run_dir"] == str(run_dir.resolve())
    assert_one_point_per_step(store, run.info.run_id, run_dir)
    assert {"val_loss", "val_accuracy", "objective"} <= set(run.data.metrics)
    artifacts = {f.path for f in store.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "preprocessing.json", "metrics.jsonl", "summary.json", "params.npz"}
    local = Path(store.download_artifacts(run.info.run_id, "summary.json", str(tmp_path)))
    assert local.read_bytes() == (run_dir / "summary.json").read_bytes()


def test_a_resume_after_a_crash_continues_the_same_run_with_one_point_per_step(store, tmp_path):
    with pytest.raises(Interrupted) as stopped:
        fit(make_config(*LOGGED, "train.loggers=[jsonl, mlflow]"), tmp_path / "runs", InterruptAt(8))
    run_dir = Path(stopped.value.summary.run_dir)
    run_id = recorded_run(run_dir)
    assert store.get_run(run_id).info.status == "KILLED"
    assert [m.step for m in store.get_metric_history(run_id, "objective")] == [0, 2, 4, 6, 8]
    # what a SIGKILL leaves: steps 6 and 8 logged to MLflow past the newest checkpoint (step 4), so resumed again
    checkpoints.latest(run_dir).unlink()
    # a forced change: the param keeps the value the run started with, the tag says what it went on with
    resumed = resume(run_dir, make_config(*LOGGED, "train.loggers=[jsonl, mlflow]", "train.steps=16"), force=True)
    assert resumed.status == "completed" and resumed.resumes[0]["from_step"] == 4
    assert recorded_run(run_dir) == run_id
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "12" and run.data.tags["resumed_with.train.steps"] == "16"
    assert [m.step for m in store.get_metric_history(run_id, "objective")] == list(range(0, 17, 2))
    assert_one_point_per_step(store, run_id, run_dir)
    assert len(store.search_runs([run.info.experiment_id])) == 1


def test_mlflow_added_on_resume_gets_the_whole_run(store, tmp_path):
    with pytest.raises(Interrupted) as stopped:
        fit(make_config(*LOGGED), tmp_path / "runs", InterruptAt(4))
    run_dir = Path(stopped.value.summary.run_dir)
    assert not (run_dir / "mlflow.json").exists()
    resume(run_dir, make_config(*LOGGED, "train.loggers=[jsonl, mlflow]"))
    run_id = recorded_run(run_dir)
    assert [m.step for m in store.get_metric_history(run_id, "objective")] == list(range(0, 13, 2))
    assert_one_point_per_step(store, run_id, run_dir)


def test_a_sweep_files_its_members_in_one_experiment(store, tmp_path):
    overrides = [*LOGGED, "train.loggers=[jsonl, mlflow]", "optimizer.learning_rate=0.01"]
    resolved = resolve_config(None, overrides, sweep=True)
    planned = sweeps.plan_sweep(resolved, grid=["optimizer.learning_rate=[0.01, 0.1]"])
    state = sweep_run.start(resolved, planned, tmp_path)
    sweep_dir = Path(state["members"][0]["run_dir"]).parent.parent
    experiment = store.get_experiment_by_name(sweep_dir.name)
    runs = store.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(Path(m["run_dir"]).name for m in state["members"])
    for member in state["members"]:
        run_id = recorded_run(Path(member["run_dir"]))
        run = store.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["gradfit.sweep"] == sweep_dir.name
        assert run.data.params["optimizer.learning_rate"] == str(member["values"]["optimizer.learning_rate"])
        assert_one_point_per_step(store, run_id, Path(member["run_dir"]))


def test_an_unreachable_tracking_server_is_one_warning_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = fit(make_config(*LOGGED, "train.loggers=[jsonl, mlflow]"), tmp_path / "runs")
    assert summary.status == "completed" and summary.steps == 12
    about = [str(w.message) for w in caught if "mlflow" in str(w.message)]
    assert len(about) == 1 and "http://127.0.0.1:9" in about[0] and "metrics.jsonl" in about[0]
    assert [r["step"] for r in jsonl(Path(summary.run_dir))] == list(range(0, 13, 2))
    assert not (Path(summary.run_dir) / "mlflow.json").exists()


def test_without_mlflow_the_logger_is_refused_before_the_run_directory_is_made(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` sees when it is missing
    check_available(["jsonl", "csv"])
    message = r"mlflow needs mlflow: pip install 'gradfit\[mlflow\]' \(or remove it from train.loggers\)$"
    with pytest.raises(ConfigError, match=message):
        check_available(["jsonl", "mlflow"])
    with pytest.raises(ConfigError, match=message):
        fit(make_config(*LOGGED, "train.loggers=[jsonl, mlflow]"), tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
