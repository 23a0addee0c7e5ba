"""Checkpoints, exact resume, interruption, divergence, crashes and early stopping.

"Exact" means bit-identical: a run stopped at step k (by Ctrl-C, or by SIGKILL in a real subprocess) and resumed
must give the same metrics, parameters and optimizer state, to the last bit, as the same run made in one go.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import InterruptAt, make_config
from typer.testing import CliRunner

from gradfit.cli.app import app
from gradfit.errors import ConfigError, Interrupted, RunDirError, TrainingFailed
from gradfit.runs import checkpoints, lock, rundir
from gradfit.runs.rundir import Summary
from gradfit.training.loop import Callbacks, fit
from gradfit.training.resume import resume
from gradfit.training.stopping import EarlyStopping

# chunks of one log window, so Ctrl-C (InterruptAt) stops a run exactly where a test sends it; that the
# grouping of log windows into chunks changes no result is tested in test_train.py
pytestmark = pytest.mark.usefixtures("one_window_chunks")

LOGREG_MINIBATCH = (
    "name=lr",
    "optimizer={name: momentum, learning_rate: 0.05}",
    "train.batch_size=50",
    "train.epochs=5",
    "train.log_every=4",
    "train.checkpoint_every=4",
    "runtime.precision=float64",
)
LOGREG_LBFGS = (
    "name=lbfgs",
    "optimizer.name=lbfgs",
    "optimizer.learning_rate=null",
    "train.steps=40",
    "train.log_every=5",
    "runtime.precision=float64",
)
MLP = (
    "name=mlp",
    "data.source=digits",
    "model.kind=mlp",
    "model.hidden=[16]",
    "train.batch_size=100",
    "train.epochs=4",
    "train.log_every=4",
    "train.checkpoint_every=8",
    "optimizer={name: adam, learning_rate: 0.01, schedule: {name: warmup_cosine, warmup_steps: 6}}",
)


def metrics(run_dir) -> list[dict]:
    """metrics.jsonl without wall-clock times, which differ between any two runs."""
    lines = Path(run_dir, "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


def assert_identical_runs(resumed: Summary, reference: Summary) -> None:
    """Same metrics, final parameters, final checkpoint (optimizer state included) and results, bit for bit."""
    a, b = Path(resumed.run_dir), Path(reference.run_dir)
    assert metrics(a) == metrics(b)
    for name in ("params.npz",):
        left, right = rundir.load_arrays(a / name), rundir.load_arrays(b / name)
        assert left.keys() == right.keys()
        for key in left:
            np.testing.assert_array_equal(left[key], right[key], err_msg=key, strict=True)
    (left, left_meta), (right, right_meta) = (checkpoints.load(checkpoints.latest(d)) for d in (a, b))
    assert left.keys() == right.keys() and any(k.startswith("state/opt_state/") for k in left)
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key, strict=True)
    stoppers = [dict(meta["early_stopping"] or {}) for meta in (left_meta, right_meta)]
    for stopper in stoppers:
        stopper.get("best_record", {}).pop("elapsed_s", None)
    assert stoppers[0] == stoppers[1]
    for key in ("status", "stop_reason", "steps", "params_step", "objective", "grad_norm", "final"):
        assert getattr(resumed, key) == getattr(reference, key), key


def interrupt(config, out_dir, step: int) -> tuple[Path, int]:
    """Ctrl-C at the log point of ``step``; (run directory, the step the run stopped at: ``step``)."""
    with pytest.raises(Interrupted) as stopped:
        fit(config, out_dir, InterruptAt(step))
    summary = stopped.value.summary
    assert summary.status == "interrupted" and summary.steps == step
    assert checkpoints.listing(summary.run_dir)[-1][0] == summary.steps, "Ctrl-C writes a checkpoint"
    return Path(summary.run_dir), summary.steps


@pytest.mark.parametrize(
    "overrides, stop_at",
    [
        pytest.param(LOGREG_MINIBATCH, 8, id="logreg-minibatch-float64"),  # 6 steps/epoch: resumes mid-epoch 2
        pytest.param(LOGREG_LBFGS, 15, id="logreg-lbfgs-float64"),
        pytest.param(MLP, 12, id="mlp-minibatch-float32"),  # 10 steps/epoch: crosses epoch boundaries after resume
        pytest.param(
            MLP + ("train.early_stopping={monitor: val_accuracy, patience: 100}",), 12, id="mlp-early-stopping-state"
        ),
    ],
)
def test_interrupt_and_resume_equals_one_uninterrupted_run(overrides, stop_at, tmp_path):
    config = make_config(*overrides)
    run_dir, stopped_at = interrupt(config, tmp_path / "stopped", stop_at)
    resumed = resume(run_dir, config)
    reference = fit(config, tmp_path / "reference")
    assert resumed.steps > stopped_at and resumed.resumes[0]["from_step"] == stopped_at
    assert_identical_runs(resumed, reference)


def killed_then_resumed(overrides: tuple, tmp_path: Path, kill_after: int) -> Path:
    """``gradfit train`` in a real process, SIGKILLed once its checkpoint of step ``kill_after`` exists, then
    resumed: asserts the result equals one uninterrupted run, bit for bit; returns the run directory."""
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(_yaml(make_config(*overrides)), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "gradfit", "train", str(config_file), "-q", "--out-dir", str(tmp_path / "killed")],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list((tmp_path / "killed").glob(f"*/checkpoints/step-{kill_after:08d}.npz")):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    process.kill()
    assert process.wait(timeout=30) == -signal.SIGKILL
    (run_dir,) = (tmp_path / "killed").iterdir()
    assert not (run_dir / "summary.json").exists(), "the process finished before it was killed"
    killed_at = checkpoints.listing(run_dir)[-1][0]
    assert killed_at >= kill_after

    result = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "-q"])
    assert result.exit_code == 0, result.output
    resumed = Summary.read(run_dir / "summary.json")
    reference = fit(make_config(*overrides), tmp_path / "reference")
    assert resumed.resumes[0]["from_step"] == killed_at < resumed.steps
    assert_identical_runs(resumed, reference)
    return run_dir


def test_sigkill_in_a_real_process_then_resume_equals_one_uninterrupted_run(tmp_path):
    overrides = MLP[:-3] + (
        "train.steps=600",
        "train.epochs=null",
        "train.log_every=1",
        "train.checkpoint_every=50",
        "train.keep_checkpoints=2",
    )
    run_dir = killed_then_resumed(overrides, tmp_path, 100)
    steps = [r["step"] for r in metrics(run_dir)]
    # minibatch runs log from step 1 (step 0 has no minibatch means yet)
    assert steps == sorted(set(steps)) == list(range(1, 601)), "one record per step, none duplicated or missing"


def _yaml(config) -> str:
    from gradfit.config.load import to_yaml

    return to_yaml(config)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoints_follow_the_schedule_and_only_the_newest_are_kept(tmp_path):
    # log points 0,4,...,28,30; due at the first log point past each multiple of 10 (12, 20, 30) and at the end
    config = make_config("train.steps=30", "train.log_every=4", "train.checkpoint_every=10", "train.keep_checkpoints=2")
    run_dir = Path(fit(config, tmp_path).run_dir)
    assert [step for step, _ in checkpoints.listing(run_dir)] == [20, 30]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000020.npz", "step-00000030.npz"]
    arrays, meta = checkpoints.load(checkpoints.latest(run_dir))
    assert meta["step"] == 30 and meta["finished"] == "completed all steps"
    assert meta["config"] == config.model_dump(mode="json")
    assert meta["config_hash"] == checkpoints.config_hash(meta["config"])
    assert int(arrays["state/step"]) == 30
    np.testing.assert_array_equal(arrays["state/params/w"], rundir.load_arrays(run_dir / "params.npz")["w"])
    with np.load(checkpoints.latest(run_dir), allow_pickle=False) as archive:  # plain arrays: no pickle needed
        assert all(archive[name].dtype != object for name in archive.files)


def test_without_periodic_checkpoints_there_is_still_one_at_the_end(tmp_path):
    run_dir = Path(fit(make_config("train.steps=25", "train.checkpoint_every=null"), tmp_path).run_dir)
    assert [step for step, _ in checkpoints.listing(run_dir)] == [25]


def test_changed_config_is_refused_then_forced_and_recorded(tmp_path):
    config = make_config(*LOGREG_MINIBATCH)
    run_dir, _ = interrupt(config, tmp_path, 8)
    original = (run_dir / "config.yaml").read_text()
    changed = make_config(*LOGREG_MINIBATCH, "optimizer.learning_rate=0.02", "train.epochs=6")
    with pytest.raises(ConfigError, match=r"optimizer.learning_rate: 0.05 -> 0.02.*train.epochs: 5 -> 6.*--force"):
        resume(run_dir, changed)
    assert (run_dir / "config.yaml").read_text() == original, "a refused resume changes nothing"

    summary = resume(run_dir, changed, force=True)
    assert summary.status == "completed" and summary.steps == 36
    assert summary.resumes == [
        {
            "from_step": 8,
            "checkpoint": "step-00000008.npz",
            "reproduced_checkpoint_metrics": True,
            "forced_changes": {"optimizer.learning_rate": [0.05, 0.02], "train.epochs": [5, 6]},
        }
    ]
    assert (run_dir / "config.before-step-8.yaml").read_text() == original
    assert make_config(path=run_dir / "config.yaml") == changed


def test_finished_run_is_not_resumed_unless_extended(tmp_path):
    config = make_config("train.steps=10", "train.log_every=5")
    run_dir = Path(fit(config, tmp_path).run_dir)
    with pytest.raises(RunDirError, match="already finished"):
        resume(run_dir, config)
    longer = resume(run_dir, make_config("train.steps=20", "train.log_every=5"), force=True)
    assert longer.steps == 20 and [r["step"] for r in metrics(run_dir)] == [0, 5, 10, 15, 20]


def test_changed_data_file_is_detected_before_resuming(tmp_path):
    data = tmp_path / "data.csv"
    rows = np.random.default_rng(0).normal(size=(60, 3))

    def write(x):
        data.write_text("a,b,target\n" + "".join(f"{float(r[0])!r},{float(r[1])!r},{int(r[2] > 0)}\n" for r in x))

    write(rows)
    config = make_config(f"data={{source: file, path: {data}}}", "train.steps=20", "train.log_every=2")
    run_dir, _ = interrupt(config, tmp_path / "runs", 6)
    rows[0, 0] += 1e-3  # a silent edit of one cell
    write(rows)
    with pytest.raises(RunDirError, match="the data differ from the original run"):
        resume(run_dir, config)
    summary = resume(run_dir, config, force=True)
    assert summary.resumes[0]["reproduced_checkpoint_metrics"] is False


def test_a_state_that_computes_differently_is_detected_by_the_probe(tmp_path, monkeypatch):
    # what another device or library version would do: the same data and parameters give other bits
    config = make_config("train.steps=20", "train.log_every=2")
    run_dir, _ = interrupt(config, tmp_path, 6)
    from gradfit.training.session import Session

    original = Session.probe
    monkeypatch.setattr(Session, "probe", lambda self, params: original(self, params) * (1 + 1e-15) + 1e-300)
    with pytest.raises(RunDirError, match="does not reproduce the probe objective of step 6.*--force"):
        resume(run_dir, config)
    monkeypatch.undo()
    assert resume(run_dir, config).resumes[0]["reproduced_checkpoint_metrics"] is True


def test_a_run_in_use_is_not_resumed_by_a_second_process(tmp_path):
    config = make_config("train.steps=10", "train.log_every=2")
    run_dir, _ = interrupt(config, tmp_path, 4)
    with lock.locked(run_dir):
        with pytest.raises(RunDirError, match="another gradfit process"):
            resume(run_dir, config)


def test_records_after_the_checkpoint_are_moved_aside_not_duplicated(tmp_path):
    config = make_config("train.steps=12", "train.log_every=2", "train.checkpoint_every=4")
    run_dir, _ = interrupt(config, tmp_path, 4)
    # what a SIGKILL can leave behind: records past the newest checkpoint and a torn last line
    later = [{**metrics(run_dir)[-1], "step": 6, "elapsed_s": 0.0}]
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(later[0]) + '\n{"step": 8, "epo')
    resume(run_dir, config)
    assert [r["step"] for r in metrics(run_dir)] == [0, 2, 4, 6, 8, 10, 12]
    discarded = (run_dir / "metrics.discarded.jsonl").read_text().splitlines()
    assert json.loads(discarded[0]) == later[0] and discarded[1] == '{"step": 8, "epo'


def test_a_resume_that_drops_the_derived_logs_leaves_none_cut_at_the_resume_step(tmp_path):
    pytest.importorskip("tensorboardX")
    logged = ("train.steps=12", "train.log_every=2", "train.loggers=[jsonl, csv, tensorboard]")
    run_dir, _ = interrupt(make_config(*logged), tmp_path, 4)
    assert (run_dir / "metrics.csv").exists() and list(run_dir.glob("events.out.tfevents.*"))
    result = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--set", "train.loggers=[jsonl]", "-q"])
    assert result.exit_code == 0, result.output
    summary = Summary.read(run_dir / "summary.json")
    assert summary.status == "completed" and [r["step"] for r in metrics(run_dir)] == list(range(0, 13, 2))
    assert not (run_dir / "metrics.csv").exists() and not list(run_dir.glob("events.out.tfevents.*"))
    removed = summary.resumes[0]["removed_logs"]
    assert removed[0] == "metrics.csv" and len(removed) == 2 and removed[1].startswith("events.out.tfevents.")


# ---------------------------------------------------------------------------------------------- failures


def test_divergence_names_the_last_good_checkpoint_and_keeps_it(tmp_path):
    config = make_config(
        *MLP[:-1],
        "optimizer={name: sgd, learning_rate: 30.0}",
        "train.log_every=1",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=100",
    )
    with pytest.raises(TrainingFailed) as failed:
        fit(config, tmp_path)
    summary = failed.value.summary
    run_dir, diverged_at = Path(summary.run_dir), summary.steps
    last_good = checkpoints.latest(run_dir)
    assert summary.status == "failed" and summary.stop_reason.startswith("diverged")
    assert summary.checkpoint == str(last_good)
    assert checkpoints.listing(run_dir)[-1][0] == diverged_at - 1, "no checkpoint of the diverged state"
    message = str(failed.value)
    assert f"step {diverged_at}" in message and str(last_good) in message and "--resume" in message
    assert "lower optimizer.learning_rate" in message
    arrays, _ = checkpoints.load(last_good)  # intact: the digest still matches
    assert all(np.isfinite(a).all() for k, a in arrays.items() if a.dtype.kind == "f")
    assert not (run_dir / "params.npz").exists()


def test_a_crash_mid_run_leaves_a_failed_summary(tmp_path, monkeypatch):
    calls = []

    def full_disk(path, records):
        calls.append(records[-1]["step"])
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return original(path, records)

    original = rundir.append_jsonl
    monkeypatch.setattr(rundir, "append_jsonl", full_disk)
    with pytest.raises(TrainingFailed, match="No space left on device"):
        fit(make_config("train.steps=20", "train.log_every=2"), tmp_path)
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["stop_reason"]


# ---------------------------------------------------------------------------------------------- early stopping


@pytest.mark.parametrize(
    "monitor, values, best_index, stops_after",
    [
        ("val_loss", [1.0, 0.9, 0.95, 0.9, 0.91], 1, 4),  # equal is not better
        ("val_accuracy", [0.5, 0.7, 0.7, 0.8, 0.75, 0.79], 3, None),
    ],
)
def test_early_stopping_rule(monitor, values, best_index, stops_after):
    stopper = EarlyStopping(monitor, patience=3, min_delta=0.0)
    for i, value in enumerate(values):
        stopper.update({"step": i, monitor: value})
        if stopper.exhausted:
            break
    assert stopper.best_step == best_index and stopper.best == values[best_index]
    assert (i if stopper.exhausted else None) == stops_after


def test_min_delta_is_the_smallest_improvement_that_counts():
    stopper = EarlyStopping("val_loss", patience=5, min_delta=0.1)
    for step, value in enumerate([1.0, 0.95, 0.85, 0.8]):
        stopper.update({"step": step, "val_loss": value})
    assert (stopper.best_step, stopper.bad_checks) == (2, 1)


EARLY = MLP[:-3] + (
    "train.epochs=60",
    "train.log_every=10",
    "train.eval_every=10",
    "train.checkpoint_every=null",
    "optimizer={name: adam, learning_rate: 0.03}",
    "runtime.precision=float64",
)


def test_early_stopping_stops_and_saves_the_best_parameters(tmp_path):
    summary = fit(make_config(*EARLY, "train.early_stopping={monitor: val_loss, patience: 3}"), tmp_path)
    records = metrics(summary.run_dir)
    losses = [r["val_loss"] for r in records]
    best = records[int(np.argmin(losses))]  # argmin: the first of equal values, as "equal is not better"
    assert summary.stop_reason.startswith("early stopping: val_loss")
    assert summary.steps == best["step"] + 3 * 10 < 600
    assert summary.params_step == best["step"] == summary.early_stopping["best_step"]
    assert summary.final["val_loss"] == best["val_loss"] and summary.objective == best["objective"]
    _assert_params_reproduce(summary, best)


def test_best_parameters_are_saved_whatever_stops_the_run(tmp_path):
    # patience longer than the run: it completes all steps, yet params.npz holds the best, not the last, step
    summary = fit(make_config(*EARLY, "train.early_stopping={monitor: val_loss, patience: 1000}"), tmp_path)
    records = metrics(summary.run_dir)
    best = records[int(np.argmin([r["val_loss"] for r in records]))]
    assert summary.stop_reason == "completed all steps" and summary.steps == 600
    assert summary.params_step == best["step"] < 600, "this config overfits: the best step is not the last"
    _assert_params_reproduce(summary, best)


def _assert_params_reproduce(summary: Summary, record: dict) -> None:
    """params.npz gives the logged validation loss of its step (float64, so to ~1e-12)."""
    import jax

    from gradfit.core.losses import data_loss
    from gradfit.core.models import build_model, params_from_named
    from gradfit.data.dataset import load_dataset, split_arrays

    config = make_config(path=Path(summary.run_dir, "config.yaml"))
    data = load_dataset(config)
    with jax.enable_x64(True):
        model = build_model(config.model, data.n_features, data.n_classes)
        params = params_from_named(
            model.init(jax.random.PRNGKey(0), np.float64), rundir.load_arrays(Path(summary.run_dir, "params.npz"))
        )
        x, y = split_arrays(data.val, data.n_classes, np.float64)
        assert float(data_loss(model.apply(params, x), y)) == pytest.approx(record["val_loss"], rel=1e-12)


def test_early_stopping_keeps_the_best_parameters_when_training_diverges(tmp_path):
    config = make_config(
        *MLP[:-1],
        "optimizer={name: sgd, learning_rate: 30.0}",
        "train.log_every=1",
        "train.eval_every=1",
        "train.early_stopping={monitor: val_loss, patience: 100}",
    )
    with pytest.raises(TrainingFailed) as failed:
        fit(config, tmp_path)
    summary = failed.value.summary
    assert summary.status == "failed" and summary.params_step == summary.early_stopping["best_step"]
    assert all(np.isfinite(a).all() for a in rundir.load_arrays(Path(summary.run_dir, "params.npz")).values())


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(ConfigError, match="data.val_fraction"):
        make_config("data.val_fraction=0", "train.early_stopping.monitor=val_loss")


# ---------------------------------------------------------------------------------------------- edge cases


def test_resuming_twice_with_early_stopping_firing_after_the_resumes_equals_one_run(tmp_path):
    config = make_config(
        *MLP[:-3],
        "train.epochs=30",
        "train.log_every=5",
        "train.eval_every=5",
        "train.checkpoint_every=10",
        "optimizer={name: adam, learning_rate: 0.03}",
        "train.early_stopping={monitor: val_loss, patience: 3}",
    )
    reference = fit(config, tmp_path / "reference")
    assert reference.stop_reason.startswith("early stopping") and reference.steps > 20
    run_dir, _ = interrupt(config, tmp_path / "stopped", 10)
    with pytest.raises(Interrupted):
        resume(run_dir, config, callbacks=InterruptAt(20))
    resumed = resume(run_dir, config)
    assert [r["from_step"] for r in resumed.resumes] == [10, 20]
    assert_identical_runs(resumed, reference)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("train.steps=6",), "would stop at once, at step 8 (completed all steps)"),  # fewer steps than done
        (("train.steps=8",), "would stop at once, at step 8 (completed all steps)"),
        (("train.tol=1e6",), "would stop at once, at step 8 (converged"),
    ],
)
def test_a_forced_config_that_would_stop_at_once_is_refused(overrides, message, tmp_path):
    config = make_config("train.steps=20", "train.log_every=2")
    run_dir, _ = interrupt(config, tmp_path, 8)
    before = metrics(run_dir)
    with pytest.raises(RunDirError, match=re.escape(message)):
        resume(run_dir, make_config("train.steps=20", "train.log_every=2", *overrides), force=True)
    assert metrics(run_dir) == before


def test_a_finished_run_needs_a_change_that_lets_it_train_further(tmp_path):
    config = make_config(*EARLY, "train.early_stopping={monitor: val_loss, patience: 3}")
    run_dir = Path(fit(config, tmp_path).run_dir)
    longer = make_config(
        *EARLY[:-4], "train.epochs=120", *EARLY[-3:], "train.early_stopping={monitor: val_loss, patience: 3}"
    )
    with pytest.raises(RunDirError, match="would stop at once.*early stopping.*patience"):
        resume(run_dir, longer, force=True)
    with pytest.raises(RunDirError, match="would stop at once"):  # an unrelated change does not train further
        resume(
            run_dir,
            make_config(*EARLY, "train.early_stopping={monitor: val_loss, patience: 3}", "train.keep_checkpoints=5"),
            force=True,
        )
    patient = make_config(*EARLY, "train.early_stopping={monitor: val_loss, patience: 6}")
    summary = resume(run_dir, patient, force=True)
    steps = [r["step"] for r in metrics(run_dir)]
    assert steps == sorted(set(steps)) and summary.steps > summary.resumes[0]["from_step"]


def test_resume_completes_a_run_that_finished_training_but_lost_its_outputs(tmp_path):
    config = make_config("train.steps=10", "train.log_every=5")
    first = fit(config, tmp_path)
    run_dir = Path(first.run_dir)
    (run_dir / "summary.json").unlink()  # as if killed between the final checkpoint and the summary
    (run_dir / "params.npz").unlink()
    again = resume(run_dir, config)
    assert again.status == "completed" and again.steps == 10 and again.objective == first.objective
    assert (run_dir / "params.npz").exists() and [r["step"] for r in metrics(run_dir)] == [0, 5, 10]
    with pytest.raises(RunDirError, match="already finished"):
        resume(run_dir, config)


def test_a_failing_progress_display_does_not_stop_training(tmp_path):
    class Broken(Callbacks):
        def on_log(self, record):
            raise SystemExit(1)  # what Rich does when stdout is a closed pipe

    summary = fit(make_config("train.steps=10", "train.log_every=2"), tmp_path, Broken())
    assert summary.status == "completed" and summary.steps == 10
    assert "SystemExit" in summary.progress_display_error


def test_a_resumed_run_that_diverges_does_not_leave_the_earlier_params_as_its_result(tmp_path):
    config = make_config(*MLP[:-1], "optimizer={name: sgd, learning_rate: 0.01}", "train.log_every=1")
    run_dir, _ = interrupt(config, tmp_path, 3)
    earlier = (run_dir / "params.npz").read_bytes()
    with pytest.raises(TrainingFailed):
        resume(
            run_dir,
            make_config(*MLP[:-1], "optimizer={name: sgd, learning_rate: 1.0e+4}", "train.log_every=1"),
            force=True,
        )
    assert not (run_dir / "params.npz").exists()
    assert (run_dir / "params.previous.npz").read_bytes() == earlier


def test_a_forced_resume_is_checkpointed_at_once(tmp_path):
    config = make_config("train.steps=20", "train.log_every=2", "train.checkpoint_every=100")
    run_dir, _ = interrupt(config, tmp_path, 6)
    forced = make_config(
        "train.steps=20", "train.log_every=2", "train.checkpoint_every=100", "optimizer.learning_rate=0.002"
    )
    with pytest.raises(Interrupted):
        resume(run_dir, forced, force=True, callbacks=InterruptAt(8))
    # the newest checkpoint carries the forced config, so a plain resume needs no --force
    assert resume(run_dir, forced).steps == 20
