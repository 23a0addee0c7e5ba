"""The training loop: accuracy targets, agreement with scikit-learn, determinism, compilation, run directories."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import CONFIGS, make_config, requires_gpu, requires_no_gpu

from gradfit.config.load import resolve_config
from gradfit.core.losses import make_objective
from gradfit.data.dataset import load_dataset
from gradfit.data.shuffle import permuted
from gradfit.errors import ConfigError, DeviceError, TrainingFailed
from gradfit.runs.rundir import Summary, create_run_dir, load_arrays
from gradfit.training.loop import fit
from gradfit.training.plan import Plan
from gradfit.training.prepare import prepare
from gradfit.training.programs import TrainState, make_train_step

TINY_MLP = (
    "name=tiny",
    "data.source=digits",
    "model.kind=mlp",
    "model.hidden=[16]",
    "train.epochs=3",
    "train.batch_size=100",
    "train.log_every=4",
    "optimizer.learning_rate=0.01",
)


def read_metrics(run_dir) -> list[dict]:
    with open(f"{run_dir}/metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("config_file", ["logreg.yaml", "mlp.yaml", "multinomial.yaml"])
def test_shipped_configs_reach_95_percent_test_accuracy(config_file, out_dir):
    summary = fit(make_config(path=CONFIGS / config_file), out_dir=out_dir)
    assert summary.status == "completed"
    assert summary.final["test_accuracy"] >= 0.95
    assert summary.rows["test"] > 100  # the accuracy is measured on a real held-out split


@pytest.mark.parametrize("config_file", ["linear.yaml", "mlp-regression.yaml"])
def test_shipped_regression_configs_explain_half_the_variance_of_diabetes(config_file, out_dir):
    # scikit-learn's LinearRegression on the same split reaches R^2 0.47 on the test rows: the target is noisy
    summary = fit(make_config(path=CONFIGS / config_file), out_dir=out_dir)
    assert summary.status == "completed"
    assert summary.final["val_r2"] > 0.45 and summary.final["test_r2"] > 0.4
    assert summary.final["test_rmse"] < 60  # in the target's units: its std is 77


def test_lbfgs_float64_objective_matches_scikit_learn(out_dir):
    sklearn = pytest.importorskip("sklearn.linear_model")
    lam = 0.01
    config = make_config(
        "runtime.precision=float64",
        f"model.l2={lam}",
        "train.steps=300",
        "train.tol=1e-10",
        "data.val_fraction=0",
        "data.test_fraction=0",
        path=CONFIGS / "logreg.yaml",
    )
    summary = fit(config, out_dir=out_dir)
    data = load_dataset(config)
    n = len(data.train)
    # scikit-learn minimizes C * sum(log-loss) + ||w||^2 / 2, i.e. ours times C*n when C = 1 / (lam * n)
    clf = sklearn.LogisticRegression(C=1 / (lam * n), tol=1e-12, max_iter=100_000).fit(data.train.x, data.train.y)
    w, b = clf.coef_[0], clf.intercept_[0]
    reference = np.mean(np.logaddexp(0, -data.train.y * (data.train.x @ w + b))) + lam / 2 * w @ w
    assert summary.objective == pytest.approx(reference, rel=1e-6)
    assert summary.stop_reason.startswith("converged")


def test_multinomial_lbfgs_float64_objective_matches_scikit_learn(out_dir):
    # logistic regression on the 10 digit classes is softmax regression: scikit-learn's multinomial objective,
    # every class with its own coefficients, C * sum(log-loss) + ||W||^2 / 2, is ours times C*n when C = 1/(lam n)
    sklearn = pytest.importorskip("sklearn.linear_model")
    lam = 0.01
    config = make_config(
        "data.source=digits",
        "runtime.precision=float64",
        f"model.l2={lam}",
        "train.steps=1000",
        "train.tol=1e-11",
        "data.val_fraction=0",
        "data.test_fraction=0",
        path=CONFIGS / "logreg.yaml",
    )
    summary = fit(config, out_dir=out_dir)
    data = load_dataset(config)
    x, y, n = data.train.x, data.train.y, len(data.train)
    clf = sklearn.LogisticRegression(C=1 / (lam * n), tol=1e-12, max_iter=100_000).fit(x, y)
    logits = x @ clf.coef_.T + clf.intercept_
    log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    reference = -np.mean(log_probs[np.arange(n), y]) + lam / 2 * np.sum(clf.coef_**2)
    assert summary.objective == pytest.approx(reference, rel=1e-8)
    with np.load(Path(summary.run_dir) / "params.npz") as params:
        assert params["w"].shape == (64, 10) and params["b"].shape == (10,)
        np.testing.assert_allclose(params["w"], clf.coef_.T, atol=1e-4)  # the same optimum, not only its value


def test_same_config_and_seed_give_identical_runs(out_dir):
    config = make_config(*TINY_MLP)
    first, second = fit(config, out_dir=out_dir), fit(config, out_dir=out_dir)
    assert first.run_dir != second.run_dir
    strip = lambda records: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]  # noqa: E731
    assert strip(read_metrics(first.run_dir)) == strip(read_metrics(second.run_dir))
    a, b = load_arrays(f"{first.run_dir}/params.npz"), load_arrays(f"{second.run_dir}/params.npz")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    other_seed = fit(make_config(*TINY_MLP, "seed=1"), out_dir=out_dir)
    assert other_seed.objective != first.objective


def test_training_chunk_is_compiled_once():
    compiles = []

    def count(event, **kwargs):  # a compilation, or a load from the persistent cache where the tests use one
        if event in ("/jax/compilation_cache/compile_requests_use_cache", "/jax/core/compile/backend_compile"):
            compiles.append(event)

    def count_duration(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration" and not jax.config.jax_compilation_cache_dir:
            compiles.append(event)

    jax.monitoring.register_event_listener(count)
    jax.monitoring.register_event_duration_secs_listener(count_duration)
    try:
        run = prepare(make_config(*TINY_MLP))
        chunk = jax.jit(run.chunk, donate_argnums=0)
        state, _ = chunk(run.state, run.train_data, jnp.int32(4))
        after_first = len(compiles)
        assert after_first >= 1
        state, _ = chunk(state, run.train_data, jnp.int32(4))
        state, metrics = chunk(state, run.train_data, jnp.int32(3))  # a shorter last chunk reuses the program too
        assert len(compiles) == after_first
    finally:
        jax.monitoring.unregister_event_listener(count)
        jax.monitoring.unregister_event_duration_listener(count_duration)
    assert int(state.step) == 11 and np.isfinite(metrics["windows"]).all()


def test_minibatches_follow_a_fresh_permutation_per_epoch():
    # a spy objective: x is the identity, so the gradient with respect to p marks the rows of the minibatch
    n, batch = 10, 3
    plan = Plan(
        total_steps=9, steps_per_epoch=n // batch, batch_size=batch, log_every=1, eval_every=9, eval_gradient=False
    )
    step = jax.jit(make_train_step(lambda p, x, y: jnp.sum(x @ p), optax.sgd(1.0), plan, n, lbfgs=False))
    key = jax.random.PRNGKey(3)
    data = {"x": jnp.eye(n), "y": jnp.zeros(n), "shuffle_key": key}
    state = TrainState(jnp.zeros(n), optax.sgd(1.0).init(jnp.zeros(n)), jnp.int32(0))
    seen = []
    for _ in range(plan.total_steps):
        before = state.params
        state, _ = step(state, data)
        seen.append(sorted(np.flatnonzero(np.asarray(before - state.params)).tolist()))
    for epoch in range(3):
        rows = seen[3 * epoch : 3 * epoch + 3]
        visited = sum(rows, [])
        assert len(visited) == len(set(visited)) == 9  # every row at most once; one row dropped per epoch
        expected = np.asarray(permuted(jax.random.fold_in(key, epoch), n, jnp.arange(9))).reshape(3, 3)
        assert rows == [sorted(r) for r in expected.tolist()]  # keyed by (seed, epoch)
    assert seen[0:3] != seen[3:6]


@pytest.mark.parametrize(
    "overrides",
    [
        TINY_MLP + ("train.eval_every=6", "train.checkpoint_every=10"),
        ("optimizer.name=lbfgs", "train.steps=40", "train.log_every=3", "train.tol=1e-4"),
    ],
    ids=["minibatch", "full-batch-tol"],
)
def test_grouping_log_windows_into_chunks_changes_no_number(overrides, out_dir, monkeypatch):
    from gradfit.training import session

    config = make_config(*overrides)
    monkeypatch.setattr(session, "CHUNK_SECONDS", 0.0)  # one log window per dispatch
    single = fit(config, out_dir=out_dir)
    monkeypatch.setattr(session, "CHUNK_SECONDS", 1e9)  # as many windows per dispatch as allowed
    grouped = fit(config, out_dir=out_dir)
    strip = lambda records: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]  # noqa: E731
    assert strip(read_metrics(single.run_dir)) == strip(read_metrics(grouped.run_dir))
    a, b = load_arrays(f"{single.run_dir}/params.npz"), load_arrays(f"{grouped.run_dir}/params.npz")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert single.steps == grouped.steps and single.objective == grouped.objective


OPTIMIZERS = [
    ("sgd", "optimizer.learning_rate=0.5"),
    ("momentum", "optimizer.learning_rate=0.1"),
    ("nesterov", "optimizer.learning_rate=0.1"),
    ("adam", "optimizer.learning_rate=0.05"),
    ("adamw", "optimizer.learning_rate=0.05"),
    ("rmsprop", "optimizer.learning_rate=0.01"),
    ("adagrad", "optimizer.learning_rate=0.1"),
    ("lbfgs", None),
]


# every optimizer on the logistic model; on the MLP the two that differ most (test_models checks every optimizer's
# update rule on a quadratic)
CASES = [("logistic", *o) for o in OPTIMIZERS] + [("mlp", *o) for o in OPTIMIZERS if o[0] in ("adam", "lbfgs")]


@pytest.mark.parametrize("kind,name,lr", CASES, ids=[f"{c[1]}-{c[0]}" for c in CASES])
def test_every_optimizer_lowers_the_objective(kind, name, lr, out_dir):
    overrides = [f"model.kind={kind}", f"optimizer.name={name}", "train.steps=30", "train.log_every=10"]
    if kind == "mlp":
        overrides += ["model.hidden=[8, 8]", "model.activation=tanh"]
    if lr:
        overrides.append(lr)
    summary = fit(make_config(*overrides), out_dir=out_dir)
    records = read_metrics(summary.run_dir)
    assert records[0]["step"] == 0 and records[-1]["step"] == summary.steps
    assert summary.objective < 0.5 * records[0]["objective"]
    assert summary.final["val_accuracy"] > 0.9


@pytest.mark.parametrize("precision,dtype", [("float32", np.float32), ("float64", np.float64)])
def test_precision_sets_the_parameter_dtype(precision, dtype, out_dir):
    summary = fit(make_config(f"runtime.precision={precision}", "train.steps=5"), out_dir=out_dir)
    params = load_arrays(f"{summary.run_dir}/params.npz")
    assert {a.dtype for a in params.values()} == {np.dtype(dtype)}
    assert jnp.zeros(1).dtype == jnp.float32  # float64 was enabled for that run only


def test_run_directory_contents(out_dir):
    config = make_config(
        "name=contents",
        "train.steps=12",
        "train.log_every=5",
        "optimizer.learning_rate=0.1",
        "optimizer.schedule.name=cosine",
    )
    summary = fit(config, out_dir=out_dir)
    run_dir = summary.run_dir
    assert run_dir.startswith(str(out_dir / "contents-"))

    saved = resolve_config(f"{run_dir}/config.yaml").config
    assert saved == config  # loadable by `gradfit train`, nothing lost
    assert "jax" in open(f"{run_dir}/config.yaml", encoding="utf-8").readline(200) + open(
        f"{run_dir}/config.yaml", encoding="utf-8"
    ).read(400)

    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [0, 5, 10, 12]  # the last chunk is shorter
    for record in records:
        assert set(record) >= {
            "step",
            "epoch",
            "train_loss",
            "val_loss",
            "val_accuracy",
            "grad_norm",
            "learning_rate",
            "elapsed_s",
        }
    # cosine schedule: lr of the last step taken, decaying to final_fraction * lr
    assert records[1]["learning_rate"] == pytest.approx(
        0.1 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 4 / 12))), rel=1e-5
    )

    params = load_arrays(f"{run_dir}/params.npz")
    assert set(params) == {"w", "b"} and params["w"].shape == (30,)
    preprocessing = json.load(open(f"{run_dir}/preprocessing.json", encoding="utf-8"))
    assert preprocessing["classes"] == ["benign", "malignant"]
    assert len(preprocessing["standardize"]["mean"]) == 30

    on_disk = json.load(open(f"{run_dir}/summary.json", encoding="utf-8"))
    assert on_disk == summary.to_json() and Summary.read(Path(run_dir, "summary.json")) == summary
    for key in (
        "run_dir",
        "model",
        "dataset",
        "device",
        "steps",
        "epochs",
        "stop_reason",
        "wall_time_s",
        "compile_time_s",
        "steps_per_s",
        "objective",
        "final",
    ):
        assert key in on_disk
    assert set(on_disk["final"]) == {"train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy"}
    assert on_disk["objective"] == pytest.approx(records[-1]["objective"])


def test_final_metrics_are_null_for_empty_splits(out_dir):
    summary = fit(make_config("train.steps=3", "data.val_fraction=0", "data.test_fraction=0"), out_dir=out_dir)
    assert summary.final["val_loss"] is None and summary.final["test_accuracy"] is None
    assert read_metrics(summary.run_dir)[-1]["val_accuracy"] is None


def test_objective_in_summary_is_the_regularized_training_loss(out_dir):
    config = make_config("model.l2=0.1", "train.steps=20", "optimizer.learning_rate=0.1", "runtime.precision=float64")
    summary = fit(config, out_dir=out_dir)
    params = load_arrays(f"{summary.run_dir}/params.npz")
    data = load_dataset(config)
    margin = data.train.y * (data.train.x @ params["w"] + params["b"])
    loss = np.mean(np.logaddexp(0, -margin))
    assert summary.final["train_loss"] == pytest.approx(loss, rel=1e-10)
    assert summary.objective == pytest.approx(loss + 0.05 * params["w"] @ params["w"], rel=1e-10)


def test_stops_when_the_gradient_norm_is_below_tol(out_dir):
    summary = fit(make_config("optimizer.name=lbfgs", "train.steps=500", "train.tol=1e-3"), out_dir=out_dir)
    assert summary.stop_reason.startswith("converged") and summary.steps < 500
    assert summary.grad_norm < 1e-3


def test_divergence_fails_cleanly_without_saving_params(out_dir):
    config = make_config(*TINY_MLP, "optimizer={name: sgd, learning_rate: 1.0e+4}")
    with pytest.raises(TrainingFailed, match=r"diverged at step \d+.*lower optimizer.learning_rate") as info:
        fit(config, out_dir=out_dir)
    assert info.value.exit_code == 1
    (run_dir,) = out_dir.iterdir()
    summary = json.load(open(run_dir / "summary.json", encoding="utf-8"))
    assert summary["status"] == "failed" and "diverged" in summary["stop_reason"]
    assert not (run_dir / "params.npz").exists()


def test_bad_settings_fail_before_the_run_directory_exists(out_dir):
    with pytest.raises(ConfigError, match=r"batch_size=5000 exceeds the 341 training rows"):
        fit(make_config("train.batch_size=5000"), out_dir=out_dir)
    with pytest.raises(ConfigError, match="warmup_steps=10 must be below the run's 5 steps"):
        fit(make_config("train.steps=5", "optimizer.schedule={name: warmup_cosine, warmup_steps: 10}"), out_dir=out_dir)
    assert not out_dir.exists()


def test_steps_and_epochs_with_minibatches(out_dir):
    config = make_config(
        *TINY_MLP[:-3], "train.steps=25", "train.epochs=null", "train.batch_size=100", "train.log_every=10"
    )
    summary = fit(config, out_dir=out_dir)
    per_epoch = summary.rows["train"] // 100
    assert summary.steps == 25 and summary.epochs == pytest.approx(25 / per_epoch)


def test_run_directories_never_collide(tmp_path):
    now = dt.datetime(2026, 11, 26, 10, 15, 0)
    first = create_run_dir(tmp_path, "x", now)
    (first / "keep.txt").write_text("user data")
    second, third = create_run_dir(tmp_path, "x", now), create_run_dir(tmp_path, "x", now)
    assert [p.name for p in (first, second, third)] == [
        "x-20261126-101500",
        "x-20261126-101500-2",
        "x-20261126-101500-3",
    ]
    assert (first / "keep.txt").read_text() == "user data"


@requires_no_gpu
def test_gpu_request_without_gpu_is_a_clear_error(out_dir):
    with pytest.raises(DeviceError, match=r"JAX sees no GPU.*jax\[cuda"):
        fit(make_config("runtime.device=gpu"), out_dir=out_dir)
    assert not out_dir.exists()


@requires_gpu
def test_trains_on_the_gpu(out_dir):
    summary = fit(make_config(*TINY_MLP, "runtime.device=gpu"), out_dir=out_dir)
    assert summary.device.startswith("gpu") and summary.final["val_accuracy"] > 0.8


def test_objective_helper_matches_model_loss():
    run = prepare(make_config("runtime.device=cpu"))
    objective = make_objective(run.model.apply, 0.0)
    value = objective(run.state.params, run.data["x"], run.data["y"])
    assert float(value) == pytest.approx(np.log(2), rel=1e-6)  # zero weights: log(1 + e^0)


# ------------------------------------------------------------------------------------ schedule and numbers


@pytest.mark.parametrize(
    "n_train, n_val, batch, tol, log_every, expected",
    [
        (1000, 250, 50, False, 10, 170),  # ceil(20 * (1000 + 250) / 150) = 167 -> whole log points
        (1000, 250, 50, True, 10, 440),  # with the gradient: ceil(20 * (3000 + 250) / 150) = 434 -> 440
        (341, 114, None, False, 5, 5),  # full batch: ceil(20 * 114 / 1023) = 3 -> one log point
        (341, 0, None, False, 5, 100),  # nothing to evaluate but the end
    ],
)
def test_auto_evaluation_schedule_keeps_evaluations_at_5_percent(n_train, n_val, batch, tol, log_every, expected):
    from gradfit.training.plan import auto_eval_every

    every = auto_eval_every(n_train, n_val, batch, tol, log_every, total_steps=100)
    assert every == expected and every % log_every == 0
    if n_val or batch:  # the work of one evaluation is at most 5% of the steps' between two
        eval_cost = n_val + (0 if batch is None else n_train * (3 if tol else 1))
        assert (
            eval_cost <= 0.05 * every * 3 * (batch or n_train) < eval_cost + 0.05 * log_every * 3 * (batch or n_train)
        )


def test_evaluations_follow_the_schedule_and_end_the_run(out_dir):
    summary = fit(make_config(*TINY_MLP, "train.epochs=null", "train.steps=22", "train.eval_every=8"), out_dir=out_dir)
    records = read_metrics(summary.run_dir)
    assert [r["step"] for r in records] == [4, 8, 12, 16, 20, 22]  # log points, evaluations, the end
    evaluated = [r["step"] for r in records if r["val_loss"] is not None]
    assert evaluated == [8, 16, 22] and summary.evaluations == 3
    assert records[0]["batch_objective"] is not None and records[0]["objective"] is None  # a plain log point
    end = records[-1]
    assert end["grad_norm"] is not None  # the last evaluation has the full-split gradient norm
    assert [r["grad_norm"] for r in records if r["step"] in (8, 16)] == [None, None]  # no tol: not computed
    assert summary.objective == end["objective"] and summary.grad_norm == end["grad_norm"]


def test_accuracies_are_exact_fractions(out_dir):
    summary = fit(make_config("train.steps=12"), out_dir=out_dir)  # float32
    rows = summary.rows
    for split in ("val", "test"):
        correct = summary.final[f"{split}_accuracy"] * rows[split]
        assert correct == round(correct)  # no float32 rounding: 110/114 is 0.9649122807..., not 0.9649122953
        assert summary.final[f"{split}_accuracy"] == round(correct) / rows[split]


def test_summary_times_training_and_evaluation_apart(out_dir):
    summary = fit(make_config(*TINY_MLP), out_dir=out_dir)
    for key in ("trace_time_s", "compile_time_s", "train_time_s", "eval_time_s"):
        assert getattr(summary, key) > 0, key
    assert summary.steps_per_s == pytest.approx(summary.steps / summary.train_time_s)
    assert summary.train_time_s + summary.eval_time_s < summary.wall_time_s
    assert summary.compile_cache in ("hit", "miss", "partial", "off")
    assert summary.log_every == 4 and summary.eval_every >= 4


def test_full_batch_tol_stops_at_the_first_step_below_it(out_dir):
    summary = fit(
        make_config("optimizer.name=lbfgs", "train.steps=200", "train.log_every=7", "train.tol=1e-3"), out_dir=out_dir
    )
    records = read_metrics(summary.run_dir)
    assert summary.stop_reason.startswith("converged") and records[-1]["step"] == summary.steps
    assert records[-1]["grad_norm"] < 1e-3
    previous = fit(
        make_config("optimizer.name=lbfgs", f"train.steps={summary.steps - 1}", "train.log_every=1"), out_dir=out_dir
    )
    assert previous.grad_norm >= 1e-3  # one step earlier it was not yet below tol
    assert records[-1]["val_loss"] is not None  # the run ends with an evaluation


def test_bfloat16_trains_with_float32_parameters(out_dir):
    summary = fit(make_config(*TINY_MLP, "runtime.precision=bfloat16"), out_dir=out_dir)
    params = load_arrays(f"{summary.run_dir}/params.npz")
    assert {a.dtype for a in params.values()} == {np.dtype(np.float32)}
    records = read_metrics(summary.run_dir)
    assert records[-1]["batch_objective"] < 0.5 * records[0]["batch_objective"]
    assert summary.final["val_accuracy"] > 0.8


def test_a_full_batch_run_already_below_tol_stops_at_step_0_with_its_outputs(out_dir):
    summary = fit(make_config("optimizer.name=lbfgs", "train.steps=50", "train.tol=10"), out_dir=out_dir)
    assert summary.status == "completed" and summary.steps == 0
    assert summary.stop_reason.startswith("converged") and summary.checkpoint.endswith("step-00000000.npz")
    (record,) = read_metrics(summary.run_dir)
    assert record["step"] == 0 and record["val_loss"] is not None  # the run still ends with an evaluation
    assert summary.final["test_accuracy"] is not None
