"""gradfit eval and predict: metrics against scikit-learn, predictions against the trained parameters in memory,
batching, .npz input, column checks, bad files and run directories, and the --out file's atomicity.

The in-memory reference loads params.npz and preprocessing.json itself and applies the model with
gradfit.core.models.build_model, so it shares with ``predict`` only the model's forward function.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_config, write_csv
from typer.testing import CliRunner

from gradfit.cli.app import app
from gradfit.config.load import resolve_config
from gradfit.core.metrics import classification_metrics, roc_auc
from gradfit.core.models import build_model
from gradfit.data.dataset import builtin_path
from gradfit.errors import TrainingFailed
from gradfit.training.loop import fit

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # keep Rich from wrapping messages mid-sentence
PROBA_ABS = 1e-6  # float32 runs: written probabilities vs the in-memory forward pass


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env=WIDE)


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of any CSV (a predictions file or a data file)."""
    with open(path, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


# -------------------------------------------------------------------------------------------- fixtures

FEATURES = ["f0", "f1", "f2", "f3"]


def trained(summary, data, x, labels, folder) -> dict:
    """What a module fixture hands its tests: the run, its training file, the file's features and labels."""
    run_dir = Path(summary.run_dir)
    return {"run_dir": run_dir, "data": data, "x": x, "labels": labels, "summary": summary, "folder": folder}


@pytest.fixture(scope="module")
def yes_no(tmp_path_factory):
    """A float32 logistic regression trained on a 300-row CSV with string labels "yes"/"no"."""
    folder = tmp_path_factory.mktemp("yes_no")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 4)) * [1.0, 2.0, 3.0, 4.0] + [0.0, 1.0, 2.0, 3.0]
    labels = np.where(x @ [1.0, -0.5, 0.3, 0.2] + rng.logistic(size=300) > 0.5, "yes", "no")
    data = write_csv(
        folder / "train.csv",
        FEATURES + ["target"],
        [[repr(float(v)) for v in row] + [label] for row, label in zip(x, labels)],
    )
    summary = fit(
        make_config(
            f"data={{source: file, path: {data}}}", "name=yesno", "train.steps=60", "optimizer.learning_rate=0.05"
        ),
        out_dir=folder / "runs",
    )
    return trained(summary, data, x, labels, folder)


@pytest.fixture(scope="module")
def threes_and_sevens(tmp_path_factory):
    """A float32 binary MLP (one logit) on the 3s and 7s of the digits, labels the integers 3 and 7."""
    folder = tmp_path_factory.mktemp("digits37")
    with open(builtin_path("digits"), newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    t = header.index("target")
    kept = [row for row in rows if row[t] in ("3", "7")]
    data = write_csv(folder / "train.csv", header, kept)
    summary = fit(
        make_config(
            f"data={{source: file, path: {data}}}",
            "name=d37",
            "model.kind=mlp",
            "model.hidden=[16]",
            "train.steps=40",
            "optimizer.learning_rate=0.01",
            "train.log_every=20",
        ),
        out_dir=folder / "runs",
    )
    x = np.array([[float(v) for i, v in enumerate(row) if i != t] for row in kept])
    labels = np.array([int(row[t]) for row in kept])
    return trained(summary, data, x, labels, folder)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A float32 10-class MLP trained on the built-in digits; its 'training file' is the built-in CSV."""
    folder = tmp_path_factory.mktemp("digits")
    summary = fit(
        make_config(
            "data.source=digits",
            "name=digits",
            "model.kind=mlp",
            "model.hidden=[16]",
            "train.steps=40",
            "optimizer.learning_rate=0.01",
            "train.log_every=20",
        ),
        out_dir=folder / "runs",
    )
    data = builtin_path("digits")
    raw = np.loadtxt(data, delimiter=",", skiprows=1)
    with open(data, encoding="utf-8") as f:
        t = f.readline().strip().split(",").index("target")
    return trained(summary, data, np.delete(raw, t, axis=1), raw[:, t].astype(int), folder)


def in_memory(run_dir: Path, x_raw: np.ndarray) -> tuple[np.ndarray, list]:
    """(class probabilities (n, K) float64, classes) from params.npz, applied as training applied them."""
    config = resolve_config(run_dir / "config.yaml").config
    record = json.loads((run_dir / "preprocessing.json").read_text(encoding="utf-8"))
    classes = record["classes"]
    with np.load(run_dir / "params.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    if config.model.kind == "logistic":
        params = {"w": arrays["w"], "b": arrays["b"]}
    else:
        params = {
            "layers": [{"w": arrays[f"layers/{i}/w"], "b": arrays[f"layers/{i}/b"]} for i in range(len(arrays) // 2)]
        }
    assert config.runtime.precision == "float32"
    x = (x_raw - np.array(record["standardize"]["mean"])) / np.array(record["standardize"]["std"])
    model = build_model(config.model, x.shape[1], len(classes))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    logits = model.apply(params, jnp.asarray(x, jnp.float32))
    if logits.ndim == 1:
        p1 = jax.nn.sigmoid(logits)
        probabilities = jnp.stack([1 - p1, p1], axis=1)
    else:
        probabilities = jax.nn.softmax(logits)
    return np.asarray(probabilities, np.float64), classes


def assert_predictions_match(path: Path, probabilities: np.ndarray, classes: list, first_line: int = 2) -> None:
    header, rows = read_rows(path)
    assert header == ["line", "prediction"] + [f"p_{c}" for c in classes]
    assert [int(r[0]) for r in rows] == list(range(first_line, first_line + len(probabilities)))
    expected = [str(classes[i]) for i in probabilities.argmax(axis=1)]
    assert [r[1] for r in rows] == expected
    written = np.array([[float(v) for v in r[2:]] for r in rows])
    np.testing.assert_allclose(written, probabilities, rtol=0, atol=PROBA_ABS)


# ------------------------------------------------------------------------------------ metrics vs sklearn


def log_softmax(logits: np.ndarray) -> np.ndarray:
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


@pytest.mark.parametrize("k", [2, 4])
def test_classification_metrics_match_scikit_learn(k):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(k)
    n = 500
    y = rng.integers(0, k, n)
    logits = rng.standard_normal((n, k)) + 1.5 * np.eye(k)[y]
    if k == 2:
        logits[:, 0] = 0.0
        logits[:, 1] = np.round(logits[:, 1] * 4) / 4  # many tied scores for the ROC AUC
    else:
        logits[:, 3] -= 10.0  # class 3 is never predicted: precision 0/0 -> 0, as sklearn's zero_division=0
    log_probs = log_softmax(logits)
    classes = ["neg", "pos"] if k == 2 else [10, 20, 30, 40]
    result = classification_metrics(y, log_probs, classes)
    predicted = log_probs.argmax(axis=1)
    labels = list(range(k))
    tol = dict(rel=1e-12, abs=1e-12)

    assert result["rows"] == n and result["classes"] == classes
    assert result["log_loss"] == pytest.approx(skm.log_loss(y, np.exp(log_probs), labels=labels), **tol)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted), **tol)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, predicted, labels=labels, zero_division=0)
    for i, row in enumerate(result["per_class"]):
        assert row["class"] == classes[i]
        assert row["precision"] == pytest.approx(precision[i], **tol)
        assert row["recall"] == pytest.approx(recall[i], **tol)
        assert row["f1"] == pytest.approx(f1[i], **tol)
        assert row["support"] == support[i]
    for name in ("precision", "recall", "f1"):
        reference = getattr(skm, f"{name}_score")(y, predicted, labels=labels, average="macro", zero_division=0)
        assert result[f"{name}_macro"] == pytest.approx(reference, **tol), name
    assert result["confusion_matrix"] == skm.confusion_matrix(y, predicted, labels=labels).tolist()
    if k == 2:
        assert len(np.unique(log_probs[:, 1])) < n / 4  # the ties are really there
        assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y, log_probs[:, 1]), **tol)
    else:
        assert result["roc_auc"] is None
        assert result["per_class"][3]["precision"] == 0.0 and result["per_class"][3]["f1"] == 0.0


def test_roc_auc_of_a_single_class_is_none_and_ties_count_one_half():
    assert roc_auc(np.array([True, True]), np.array([0.1, 0.2])) is None
    assert roc_auc(np.array([False, True]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([False, True, True]), np.array([0.1, 0.5, 0.1])) == 0.75


# ------------------------------------------------------------------------------------ predict round trip


@pytest.mark.parametrize("name", ["yes_no", "threes_and_sevens", "digits"])
def test_predictions_on_the_training_file_equal_the_in_memory_model(name, request, tmp_path):
    run = request.getfixturevalue(name)
    out = tmp_path / "p.csv"
    result = invoke("predict", run["run_dir"], run["data"], "--proba", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {len(run['x']):,} predictions" in result.output
    probabilities, classes = in_memory(run["run_dir"], run["x"])
    assert_predictions_match(out, probabilities, classes)
    # predictions are in the original label values: "yes"/"no", the integers 3/7, or the digits 0-9
    predicted = {r[1] for r in read_rows(out)[1]}
    allowed = {"yes_no": {"yes", "no"}, "threes_and_sevens": {"3", "7"}, "digits": {str(d) for d in range(10)}}
    assert predicted <= allowed[name] and len(predicted) >= 2
    # and the model learned something, so the comparison is not between two constant outputs
    accuracy = np.mean([r[1] for r in read_rows(out)[1]] == run["labels"].astype(str))
    assert accuracy > 0.6


def test_predict_without_proba_writes_stdout(yes_no):
    result = invoke("predict", yes_no["run_dir"], yes_no["data"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "line,prediction" and len(lines) == 301
    probabilities, classes = in_memory(yes_no["run_dir"], yes_no["x"])
    assert [line.split(",")[1] for line in lines[1:]] == [classes[i] for i in probabilities.argmax(axis=1)]


def predict_with_batches(run: dict, folder: Path, batch_rows: list[str]) -> list[bytes]:
    outputs = []
    for rows in batch_rows:
        out = folder / f"p{rows}.csv"
        result = invoke("predict", run["run_dir"], run["data"], "--proba", "--batch-rows", rows, "--out", out)
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    return outputs


@pytest.mark.parametrize("name", ["yes_no", "digits"])
def test_batch_size_changes_no_label_and_no_probability_beyond_rounding(name, request, tmp_path):
    run = request.getfixturevalue(name)
    predict_with_batches(run, tmp_path, ["1", "7", "65536"])
    tables = [read_rows(tmp_path / f"p{rows}.csv") for rows in ("1", "7", "65536")]
    assert tables[0][0] == tables[1][0] == tables[2][0]
    for _, rows in tables[:2]:
        assert [r[:2] for r in rows] == [r[:2] for r in tables[2][1]]  # lines and labels exactly
        probabilities = np.array([[float(v) for v in r[2:]] for r in rows])
        reference = np.array([[float(v) for v in r[2:]] for r in tables[2][1]])
        np.testing.assert_allclose(probabilities, reference, rtol=0, atol=PROBA_ABS)


@pytest.mark.parametrize("name", ["yes_no", "digits"])
def test_batch_size_does_not_change_the_output_file(name, request, tmp_path):
    run = request.getfixturevalue(name)
    outputs = predict_with_batches(run, tmp_path, ["7", "65536", "1000000"])
    assert outputs[0] == outputs[1] == outputs[2]  # a row's numbers do not depend on the batching


def test_npz_input_gives_the_csv_predictions(yes_no, tmp_path):
    csv_rows = {}
    for batch in ("7", "65536"):  # same batch size on both sides: an .npz is read in slices of it
        out = tmp_path / f"csv{batch}.csv"
        result = invoke("predict", yes_no["run_dir"], yes_no["data"], "--proba", "--batch-rows", batch, "--out", out)
        assert result.exit_code == 0, result.output
        csv_rows[batch] = read_rows(out)[1]
    x = yes_no["x"]
    variants = {
        "named.npz": dict(X=x, feature_names=np.array(FEATURES)),
        # (ascontiguousarray: NumPy's column indexing returns a Fortran-ordered array; that case is tested below)
        "reordered.npz": dict(
            X=np.ascontiguousarray(x[:, [3, 1, 0, 2]]), feature_names=np.array(["f3", "f1", "f0", "f2"])
        ),
        "plain.npz": dict(X=x),  # no names: the columns are taken in training order
        "labelled.npz": dict(X=x, y=yes_no["labels"], feature_names=np.array(FEATURES)),
        "compressed.npz": dict(X=x),
    }
    for filename, arrays in variants.items():
        (np.savez_compressed if filename == "compressed.npz" else np.savez)(tmp_path / filename, **arrays)
        for batch in ("7", "65536"):
            out = tmp_path / f"{filename}{batch}.csv"
            result = invoke(
                "predict", yes_no["run_dir"], tmp_path / filename, "--proba", "--batch-rows", batch, "--out", out
            )
            assert result.exit_code == 0, (filename, result.output)
            header, rows = read_rows(out)
            assert header[0] == "row" and [int(r[0]) for r in rows] == list(range(len(x)))
            assert [r[1:] for r in rows] == [r[1:] for r in csv_rows[batch]], (filename, batch)
    # eval reads the labels of an .npz like those of the CSV
    metrics = []
    for data in (yes_no["data"], tmp_path / "labelled.npz"):
        result = invoke("eval", yes_no["run_dir"], "--data", data, "--json-out", tmp_path / "m.json", "--force")
        assert result.exit_code == 0, result.output
        metrics.append({k: v for k, v in json.loads((tmp_path / "m.json").read_text()).items() if k != "data"})
    assert metrics[0] == metrics[1]


def test_npz_with_fortran_ordered_x_is_accepted_as_in_training(tmp_path):
    rng = np.random.default_rng(0)
    x = np.asfortranarray(rng.standard_normal((200, 3)))
    np.savez(tmp_path / "data.npz", X=x, y=(x[:, 0] + rng.logistic(size=200) > 0).astype(int))
    run_dir = fit(
        make_config(f"data={{source: file, path: {tmp_path / 'data.npz'}}}", "train.steps=5"), out_dir=tmp_path / "runs"
    ).run_dir  # training reads it
    result = invoke("predict", run_dir, tmp_path / "data.npz")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 201


# ---------------------------------------------------------------------------------------------- eval


@pytest.mark.parametrize("name", ["yes_no", "digits"])
def test_eval_on_the_test_split_matches_the_training_summary(name, request, tmp_path):
    run = request.getfixturevalue(name)
    result = invoke("eval", run["run_dir"], "--json-out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    final = run["summary"].final
    assert metrics["rows"] == run["summary"].rows["test"]
    assert metrics["accuracy"] == pytest.approx(final["test_accuracy"], abs=1e-6)
    assert metrics["log_loss"] == pytest.approx(final["test_loss"], abs=1e-6)
    assert metrics["data"].startswith("the test split of")
    assert "Evaluation on the test split" in result.output and "Confusion matrix" in result.output
    val = invoke("eval", run["run_dir"], "--split", "val", "--json-out", tmp_path / "v.json")
    assert val.exit_code == 0, val.output
    v = json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))
    assert v["accuracy"] == pytest.approx(final["val_accuracy"], abs=1e-6)
    assert v["log_loss"] == pytest.approx(final["val_loss"], abs=1e-6)


def test_eval_on_a_labelled_file_matches_the_in_memory_model(yes_no, tmp_path):
    result = invoke("eval", yes_no["run_dir"], "--data", yes_no["data"], "--json-out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    probabilities, classes = in_memory(yes_no["run_dir"], yes_no["x"])
    y = np.array([classes.index(label) for label in yes_no["labels"]])
    assert metrics["rows"] == 300 and metrics["classes"] == ["no", "yes"] and metrics["data"] == str(yes_no["data"])
    assert metrics["accuracy"] == np.mean(probabilities.argmax(axis=1) == y)
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log(probabilities[np.arange(300), y])), abs=1e-6)
    assert np.sum(metrics["confusion_matrix"]) == 300
    assert [row["support"] for row in metrics["per_class"]] == [int(np.sum(y == 0)), int(np.sum(y == 1))]
    # a label column under another name, with --target
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(yes_no["data"].read_text().replace(",target\n", ",label\n", 1))
    again = invoke("eval", yes_no["run_dir"], "--data", renamed, "--target", "label", "--json-out", tmp_path / "r.json")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "r.json").read_text())["accuracy"] == metrics["accuracy"]
    missing = invoke("eval", yes_no["run_dir"], "--data", renamed)
    assert missing.exit_code == 2 and "no label column 'target'" in missing.output


def test_eval_on_integer_labels(threes_and_sevens, tmp_path):
    result = invoke(
        "eval", threes_and_sevens["run_dir"], "--data", threes_and_sevens["data"], "--json-out", tmp_path / "m.json"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert metrics["classes"] == [3, 7]
    probabilities, _ = in_memory(threes_and_sevens["run_dir"], threes_and_sevens["x"])
    y = (threes_and_sevens["labels"] == 7).astype(int)
    assert metrics["accuracy"] == np.mean(probabilities.argmax(axis=1) == y)


# ------------------------------------------------------------------------------------- columns and cells


def head(run: dict, rows: int = 10) -> tuple[list[str], list[list[str]]]:
    header, body = read_rows(run["data"])
    return header, body[:rows]


def test_mismatched_columns_exit_2_naming_them(yes_no, tmp_path):
    header, body = head(yes_no)  # f0,f1,f2,f3,target
    cases = {
        "missing": ([h for h in header if h != "f2"], [r[:2] + r[3:] for r in body], ["missing 'f2'"]),
        "extra": (header + ["f9"], [r + ["1.0"] for r in body], ["unexpected 'f9'"]),
        "renamed": (["f0", "f1", "g2", "f3", "target"], body, ["missing 'f2'", "unexpected 'g2'"]),
    }
    for case, (columns, rows, expected) in cases.items():
        path = write_csv(tmp_path / f"{case}.csv", columns, rows)
        for command in (("predict", yes_no["run_dir"], path), ("eval", yes_no["run_dir"], "--data", path)):
            result = invoke(*command)
            assert result.exit_code == 2, (case, command[0], result.output)
            assert "the feature columns do not match the 4 the run was trained on" in result.output, case
            for text in expected:
                assert text in result.output, (case, result.output)
            assert "Traceback" not in result.output


def test_columns_are_matched_by_name(yes_no, tmp_path):
    header, body = read_rows(yes_no["data"])
    reference = tmp_path / "reference.csv"
    assert invoke("predict", yes_no["run_dir"], yes_no["data"], "--proba", "--out", reference).exit_code == 0
    order = [4, 2, 0, 3, 1]  # target,f2,f0,f3,f1
    shuffled = write_csv(tmp_path / "shuffled.csv", [header[i] for i in order], [[r[i] for i in order] for r in body])
    unlabelled = write_csv(tmp_path / "unlabelled.csv", header[:4], [r[:4] for r in body])
    for path in (shuffled, unlabelled):
        out = tmp_path / f"out-{path.name}"
        result = invoke("predict", yes_no["run_dir"], path, "--proba", "--out", out)
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == reference.read_bytes(), path.name


def test_a_label_never_seen_in_training_exits_2_naming_it(yes_no, tmp_path):
    header, body = head(yes_no)
    body[4][4] = "maybe"
    path = write_csv(tmp_path / "unknown.csv", header, body)
    result = invoke("eval", yes_no["run_dir"], "--data", path)
    assert result.exit_code == 2, result.output
    assert "'maybe' were not seen in training" in result.output and "'no', 'yes'" in result.output


@pytest.mark.parametrize(
    "cell, message",
    [
        ("abc", "column 'f2' has non-numeric value 'abc'"),
        ("nan", "column 'f2' is missing (an empty cell or NA); set data.missing"),
        ("", "column 'f2' is missing (an empty cell or NA); set data.missing"),
        ("inf", "column 'f2' is inf"),
    ],
)
def test_a_bad_cell_exits_2_naming_line_and_column(yes_no, tmp_path, cell, message):
    header, body = head(yes_no)
    body[6][2] = cell  # data row 7: line 8 of the file
    path = write_csv(tmp_path / "bad.csv", header, body)
    for command in (
        ("predict", yes_no["run_dir"], path, "--out", tmp_path / "p.csv"),
        ("eval", yes_no["run_dir"], "--data", path),
    ):
        result = invoke(*command)
        assert result.exit_code == 2, (command[0], result.output)
        assert f"bad.csv:8: {message}" in result.output, result.output
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("change", ["more", "fewer"])
def test_a_ragged_row_exits_2_naming_the_line(yes_no, tmp_path, change):
    header, body = head(yes_no)
    body[3] = body[3] + ["5.0"] if change == "more" else body[3][:3] + body[3][4:]  # line 5 of the file
    path = write_csv(tmp_path / "ragged.csv", header, body)
    for command in (("predict", yes_no["run_dir"], path), ("eval", yes_no["run_dir"], "--data", path)):
        result = invoke(*command)
        assert result.exit_code == 2, (command[0], result.output)
        fields = 6 if change == "more" else 4
        assert f"ragged.csv:5: {fields} fields but the header has 5 columns" in result.output, result.output


# ----------------------------------------------------------------------------------- run directories


def commands(run_dir, data) -> list[tuple]:
    return [("eval", run_dir), ("predict", run_dir, data), ("inference", run_dir)]


def test_a_path_that_is_not_a_run_exits_2_for_every_command(yes_no, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        empty: "not a gradfit run directory",
        yes_no["data"]: "not a directory",
        tmp_path / "nowhere": "no such run directory",
    }
    for path, message in cases.items():
        for command in commands(path, yes_no["data"]):
            result = invoke(*command)
            assert result.exit_code == 2, (command, result.output)
            assert message in result.output and "Traceback" not in result.output, (command, result.output)


def test_a_failed_run_without_parameters_exits_2_saying_so(tmp_path):
    config = make_config(
        "data.source=digits",
        "model.kind=mlp",
        "model.hidden=[16]",
        "train.batch_size=100",
        "train.epochs=4",
        "train.log_every=1",
        "optimizer={name: sgd, learning_rate: 30.0}",
    )
    with pytest.raises(TrainingFailed) as failed:
        fit(config, tmp_path / "runs")
    run_dir = Path(failed.value.summary.run_dir)
    assert not (run_dir / "params.npz").exists()
    for command in commands(run_dir, builtin_path("digits")):
        result = invoke(*command)
        assert result.exit_code == 2, (command, result.output)
        assert "has no params.npz (status failed: diverged" in result.output, result.output
        assert "only runs that saved parameters can be used" in result.output


# --------------------------------------------------------------------------------------- --out file


def test_out_is_not_overwritten_without_force(yes_no, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("precious\n")
    result = invoke("predict", yes_no["run_dir"], yes_no["data"], "--out", out)
    assert result.exit_code == 2 and "already exists; pass --force" in result.output
    assert out.read_text() == "precious\n"
    result = invoke("predict", yes_no["run_dir"], yes_no["data"], "--out", out, "--force")
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("line,prediction\n2,") and len(out.read_text().splitlines()) == 301


def test_a_failure_mid_file_leaves_no_output_and_no_temporary_file(yes_no, tmp_path):
    header, body = read_rows(yes_no["data"])
    body[-1][1] = "oops"  # the last row: 299 good rows were already predicted and written, 7 per batch
    data = write_csv(tmp_path / "late.csv", header, body)
    folder = tmp_path / "out"
    folder.mkdir()
    result = invoke("predict", yes_no["run_dir"], data, "--batch-rows", "7", "--out", folder / "p.csv")
    assert result.exit_code == 2, result.output
    assert "late.csv:301: column 'f1' has non-numeric value 'oops'" in result.output
    assert list(folder.iterdir()) == []
    # over an existing file, with --force: the old file survives untouched
    (folder / "p.csv").write_text("previous\n")
    result = invoke("predict", yes_no["run_dir"], data, "--batch-rows", "7", "--out", folder / "p.csv", "--force")
    assert result.exit_code == 2, result.output
    assert [p.name for p in folder.iterdir()] == ["p.csv"] and (folder / "p.csv").read_text() == "previous\n"


def test_out_in_a_missing_folder_exits_2_naming_out(yes_no, tmp_path):
    out = tmp_path / "no-such-folder" / "p.csv"
    result = invoke("predict", yes_no["run_dir"], yes_no["data"], "--out", out)
    assert not out.parent.exists()
    assert result.exit_code == 2, result.output
    assert f"--out {out}" in result.output and ".tmp" not in result.output


# ---------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command, example",
    [
        ("eval", "gradfit eval runs/logreg-20261126-101500 --data new.csv"),
        ("predict", "gradfit predict runs/mlp-20261126-101500 unlabeled.csv --out predictions.csv --proba"),
        ("inference", "gradfit inference runs/logreg-20261126-101500 --scale standardized"),
    ],
)
def test_help_texts_have_examples(command, example):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Examples" in result.output and example in result.output, result.output


# ------------------------------------------------------------------------------------------- from review


def test_predict_ignores_a_label_column_even_when_it_is_empty(yes_no, tmp_path):
    header, rows = read_rows(yes_no["data"])
    unlabelled = write_csv(tmp_path / "unlabelled.csv", header, [row[:-1] + [""] for row in rows])
    with_labels = invoke("predict", yes_no["run_dir"], yes_no["data"])
    without = invoke("predict", yes_no["run_dir"], unlabelled)
    assert without.exit_code == 0, without.output
    assert without.stdout == with_labels.stdout


def test_labels_are_matched_as_training_read_them_whatever_a_batch_holds(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((120, 2))
    labels = np.where(x[:, 0] + rng.logistic(size=120) > 0, "1", "neg")  # text classes: '1' and 'neg'
    data = write_csv(
        tmp_path / "train.csv",
        ["a", "b", "target"],
        [[repr(float(v)) for v in row] + [label] for row, label in zip(x, labels)],
    )
    run_dir = fit(make_config(f"data={{source: file, path: {data}}}", "train.steps=20"), tmp_path / "runs").run_dir
    only_ones = write_csv(
        tmp_path / "ones.csv",
        ["a", "b", "target"],
        [[repr(float(v)) for v in row] + ["1"] for row, label in zip(x, labels) if label == "1"],
    )
    for args in (("--data", only_ones), ("--data", data, "--batch-rows", "1")):
        result = invoke("eval", run_dir, *args)
        assert result.exit_code == 0, result.output


def test_macro_averages_skip_classes_absent_from_labels_and_predictions():
    metrics_module = pytest.importorskip("sklearn.metrics")
    y = np.array([0, 0, 1, 1, 1])
    log_probs = np.log(
        np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    )  # class 2 neither occurs nor is predicted
    result = classification_metrics(y, log_probs, ["a", "b", "c"])
    predicted = log_probs.argmax(axis=1)
    for key, function in (
        ("precision_macro", metrics_module.precision_score),
        ("recall_macro", metrics_module.recall_score),
        ("f1_macro", metrics_module.f1_score),
    ):
        assert result[key] == pytest.approx(function(y, predicted, average="macro", zero_division=0), abs=1e-12)


def test_a_damaged_npz_exits_2(yes_no, tmp_path):
    x = yes_no["x"]
    np.savez(tmp_path / "good.npz", X=x, y=yes_no["labels"])
    raw = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "flipped.npz").write_bytes(raw[:200] + bytes(b ^ 0xFF for b in raw[200:260]) + raw[260:])
    np.savez(tmp_path / "short.npz", X=x[:10], y=yes_no["labels"][:10])
    short = (tmp_path / "short.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(short[: len(short) // 2])
    for name in ("flipped.npz", "cut.npz"):
        result = invoke("eval", yes_no["run_dir"], "--data", tmp_path / name)
        assert result.exit_code == 2, (name, result.output)
        assert "Traceback" not in result.output and name in result.stderr


def test_piping_predictions_into_head_is_not_an_error(yes_no):
    command = f"{sys.executable} -m gradfit predict {yes_no['run_dir']} {yes_no['data']} | head -2"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "line,prediction" and "error" not in result.stderr


def test_out_gets_the_permissions_of_a_plain_file(yes_no, tmp_path):
    out = tmp_path / "p.csv"
    result = invoke("predict", yes_no["run_dir"], yes_no["data"], "--out", out)
    assert result.exit_code == 0, result.output
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_blank_and_whitespace_lines_are_skipped_without_warnings(yes_no, tmp_path):
    header, rows = read_rows(yes_no["data"])
    text = (
        ",".join(header)
        + "\n"
        + "\n".join(",".join(r) for r in rows[:3])
        + "\n\n   \n"
        + "\n".join(",".join(r) for r in rows[3:6])
        + "\n"
    )
    (tmp_path / "gaps.csv").write_text(text, encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = invoke("eval", yes_no["run_dir"], "--data", tmp_path / "gaps.csv")
    assert result.exit_code == 0, result.output
    assert re.search(r"│ rows +│ +6 │", result.stdout), result.stdout
