"""Hostile and extreme data through the real commands (issue 11): files that are not regular files, .npz bombs,
overlong lines, labels that are bytes, complex, dates or numbers beyond float64's exact integers, and feature
values that overflow.

Every refusal must end the same way: exit code 2, one line on stderr naming the file (and the line or row, and the
column where one applies), no traceback, no run directory (train), nothing written (predict --out). Training runs
are tiny (2 steps); one run is trained per module and shared by the eval/predict cases.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_config
from typer.testing import CliRunner

from gradfit import files
from gradfit.cli.app import app
from gradfit.data.dataset import load_dataset
from gradfit.data.labels import class_ids, encode_labels
from gradfit.errors import DataError
from gradfit.training.loop import fit

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # keep Rich from wrapping messages mid-sentence
CSV_FIELD_LIMIT = 131_072  # the csv module's default field_size_limit


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env=WIDE)


def rows_text(n: int = 20, a=None) -> str:
    """n rows 'a,b,target' with labels yes/no; ``a`` replaces column a of the given {row index: text}."""
    a = a or {}
    return "".join(f"{a.get(i, i % 5)},{(i * 7) % 3},{'yes' if i % 2 else 'no'}\n" for i in range(n))


def write_config(folder: Path, data: str, extra: str = "") -> Path:
    config = folder / "config.yaml"
    config.write_text(f"data: {{source: file, path: {data}{extra}}}\ntrain: {{steps: 2}}\n", encoding="utf-8")
    return config


def train(folder: Path, data: str = "data.csv", extra: str = "", *args):
    return invoke("train", write_config(folder, data, extra), "--out-dir", folder / "runs", "--quiet", *args)


def assert_refused(result, *fragments: str, runs: Path | None = None) -> str:
    """Exit 2, one line on stderr holding every fragment, no traceback, no run directory under ``runs``."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message
    if runs is not None:
        assert not runs.exists(), "a refused run left a run directory"
    return message


def trained_run_dir(folder: Path) -> Path:
    (run_dir,) = (folder / "runs").iterdir()
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A float32 logistic regression (standardized) on a CSV with columns a, b, target (yes/no)."""
    folder = tmp_path_factory.mktemp("hardening")
    data = folder / "train.csv"
    data.write_text("a,b,target\n" + rows_text(40), encoding="utf-8")
    summary = fit(make_config(f"data={{source: file, path: {data}}}", "name=tiny", "train.steps=2"), folder / "runs")
    return {"run_dir": Path(summary.run_dir), "data": data}


def eval_and_predict(run: dict, data: Path, out: Path) -> list:
    """Results of eval --data and predict --out on the same file (in that order)."""
    return [invoke("eval", run["run_dir"], "--data", data), invoke("predict", run["run_dir"], data, "--out", out)]


# ================================================================ A. files that are not regular files, .npz safety


@contextlib.contextmanager
def fifo_unblocked_after(path: Path, seconds: float):
    """If something still blocks opening the FIFO for reading after ``seconds``, open its writing end to free it
    (the reader then sees end of file): a regression fails the test instead of hanging the suite."""
    done = threading.Event()

    def unblock():
        if done.wait(seconds):
            return
        while not done.is_set():
            with contextlib.suppress(OSError):  # ENXIO: no reader yet
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            time.sleep(0.05)

    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        watchdog.join()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("name", ["data.csv", "data.npz"])
def test_a_fifo_as_data_is_refused_without_hanging(tmp_path, run, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with fifo_unblocked_after(fifo, 15):
        tick = time.perf_counter()
        results = [train(tmp_path, name)] + eval_and_predict(run, fifo, tmp_path / "p.csv")
        elapsed = time.perf_counter() - tick
    assert elapsed < 15, "opening the FIFO blocked"
    for result in results:
        assert_refused(result, str(fifo), "data file is a FIFO (named pipe), not a regular file")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("kind", ["directory", "device"])
def test_a_directory_or_a_device_as_data_says_what_it_is(tmp_path, run, kind):
    if kind == "directory":
        path, what = tmp_path / "data.csv", "a directory"
        path.mkdir()
    else:
        path, what = Path(os.devnull), "a character device"
        if not Path(os.devnull).is_char_device():
            pytest.skip("no character device here")
    result = train(tmp_path, str(path))
    assert_refused(result, str(path), f"data file is {what}, not a regular file", runs=tmp_path / "runs")
    assert "not found" not in result.stderr
    for result in eval_and_predict(run, path, tmp_path / "p.csv"):
        assert_refused(result, str(path), f"data file is {what}")
    assert not (tmp_path / "p.csv").exists()


def write_npz_with_bomb_header(path: Path, rows: int = 20) -> None:
    """An .npz whose X.npy declares 10**12 float64 (8 TB) in a few bytes, next to a normal y."""
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("X.npy", "w") as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
            )
            member.write(bytes(64))
        labels = io.BytesIO()
        np.lib.format.write_array(labels, np.arange(rows) % 2)
        archive.writestr("y.npy", labels.getvalue())


def test_an_npz_bomb_header_is_refused_before_allocating(tmp_path, run):
    path = tmp_path / "data.npz"
    write_npz_with_bomb_header(path)
    assert_refused(
        train(tmp_path, "data.npz"),
        str(path),
        "array X declares shape (1000000, 1000000)",
        "damaged",
        runs=tmp_path / "runs",
    )
    for result in eval_and_predict(run, path, tmp_path / "p.csv"):
        assert_refused(result, str(path), "array X declares shape (1000000, 1000000)")
    assert not (tmp_path / "p.csv").exists()


def test_an_npz_that_is_not_a_zip_is_refused(tmp_path, run):
    path = tmp_path / "data.npz"
    path.write_text("a,b,target\n1,2,yes\n", encoding="utf-8")
    message = assert_refused(train(tmp_path, "data.npz"), str(path), "not a .npz archive", runs=tmp_path / "runs")
    assert "pickl" not in message
    for result in eval_and_predict(run, path, tmp_path / "p.csv"):
        assert_refused(result, str(path), "not a .npz archive")


def test_an_npz_with_object_arrays_is_never_unpickled(tmp_path, run):
    path = tmp_path / "data.npz"
    np.savez(path, X=np.array([[{"a": 1}, 2.0]] * 20, dtype=object), y=np.arange(20) % 2)
    assert_refused(train(tmp_path, "data.npz"), str(path), "never unpickles", runs=tmp_path / "runs")
    assert_refused(invoke("predict", run["run_dir"], path), str(path), "never unpickles")


# ========================================================================================== B. long lines


def long_name() -> str:
    return "c" * (CSV_FIELD_LIMIT + 10)


@pytest.mark.parametrize("where", ["header", "body"])
def test_a_field_over_the_csv_limit_names_the_line(tmp_path, run, where):
    if where == "header":
        text, line = f"a,b,target,{long_name()}\n" + rows_text().replace("\n", ",1\n"), 1
    else:
        text, line = "a,b,target\n" + rows_text(3) + f"{'1' * (CSV_FIELD_LIMIT + 10)},1,yes\n" + rows_text(), 5
    (tmp_path / "data.csv").write_text(text, encoding="utf-8")
    fragment = f"data.csv:{line}: a field of the CSV {where if where == 'header' else 'row'} is longer than 131,072"
    assert_refused(train(tmp_path), fragment, runs=tmp_path / "runs")
    new = tmp_path / "new.csv"
    new.write_text(text, encoding="utf-8")
    for result in eval_and_predict(run, new, tmp_path / "p.csv"):
        assert_refused(result, f"new.csv:{line}: a field of the CSV")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("where", ["header", "body"])
def test_a_line_without_end_is_refused_before_it_is_read_whole(tmp_path, run, monkeypatch, where):
    monkeypatch.setattr(files, "MAX_LINE_CHARS", 1 << 20)
    endless = "1," * (3 << 20)  # 6 MB, no newline
    text = endless if where == "header" else "a,b,target\n" + rows_text(4) + endless
    line = 1 if where == "header" else 6
    (tmp_path / "data.csv").write_text(text, encoding="utf-8")
    assert_refused(train(tmp_path), f"data.csv:{line}: line longer than 1,048,576 characters", runs=tmp_path / "runs")
    for result in eval_and_predict(run, tmp_path / "data.csv", tmp_path / "p.csv"):
        assert_refused(result, f"data.csv:{line}: line longer than 1,048,576 characters")
    assert not (tmp_path / "p.csv").exists()


# ================================================================================================ C. labels


def npz_with_labels(path: Path, y: np.ndarray) -> Path:
    x = np.random.default_rng(0).standard_normal((len(y), 2))
    np.savez(path, X=x, y=y)
    return path


def test_bytes_labels_train_as_text_and_eval_matches_them(tmp_path):
    data = npz_with_labels(tmp_path / "data.npz", np.array([b"yes", b"no"] * 10))
    result = train(tmp_path, "data.npz")
    assert result.exit_code == 0, result.output
    run_dir = trained_run_dir(tmp_path)
    record = json.loads((run_dir / "preprocessing.json").read_text(encoding="utf-8"))
    assert record["classes"] == ["no", "yes"] and record["label_encoding"] == {"no": -1, "yes": 1}
    evaluated = invoke("eval", run_dir, "--data", data, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["rows"] == 20


def test_bytes_labels_that_are_not_utf8_are_refused(tmp_path):
    path = npz_with_labels(tmp_path / "data.npz", np.array([b"\xff\xfe", b"no"] * 10))
    assert_refused(train(tmp_path, "data.npz"), str(path), "not UTF-8", runs=tmp_path / "runs")


@pytest.mark.parametrize(
    "labels, what",
    [
        (np.array([1 + 1j, 2 + 0j] * 10), "complex"),
        (np.array(["2024-01-01", "2024-01-02"] * 10, dtype="datetime64[D]"), "datetime64"),
        (np.array([1, 2] * 10, dtype="timedelta64[s]"), "timedelta64"),
        (np.array([(1, 2.0), (2, 3.0)] * 10, dtype=[("a", "i4"), ("b", "f4")]), "structured"),
    ],
    ids=["complex", "datetime", "timedelta", "structured"],
)
def test_labels_that_cannot_be_classes_are_refused_before_any_run(tmp_path, labels, what):
    path = npz_with_labels(tmp_path / "data.npz", labels)
    assert_refused(train(tmp_path, "data.npz"), f"{path}: y", what, "cannot be classes", runs=tmp_path / "runs")


def labelled_csv(folder: Path, labels: list[str]) -> Path:
    path = folder / "data.csv"
    path.write_text(
        "a,b,target\n" + "".join(f"{i % 5},{i % 3},{labels[i % len(labels)]}\n" for i in range(20)), encoding="utf-8"
    )
    return path


def test_integers_beyond_2_to_the_53_stay_distinct_and_eval_matches_them(tmp_path):
    data = labelled_csv(tmp_path, ["9007199254740993", "9007199254740992"])
    result = train(tmp_path)
    assert result.exit_code == 0, result.output
    run_dir = trained_run_dir(tmp_path)
    record = json.loads((run_dir / "preprocessing.json").read_text(encoding="utf-8"))
    assert record["classes"] == ["9007199254740992", "9007199254740993"]  # exact, as written
    evaluated = invoke("eval", run_dir, "--data", data, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["per_class"][0]["support"] == 10
    # the same integers from an .npz (int64) match the text classes
    x = np.array([[i % 5, i % 3] for i in range(20)], dtype=float)
    np.savez(tmp_path / "ints.npz", X=x, y=np.array([9007199254740993, 9007199254740992] * 10))
    evaluated = invoke("eval", run_dir, "--data", tmp_path / "ints.npz", "--json")
    assert evaluated.exit_code == 0, evaluated.output


def config_for(path: Path, **data) -> object:
    settings = ", ".join(f"{k}: {v}" for k, v in data.items())
    return make_config(f"data={{source: file, path: {path}{', ' + settings if settings else ''}}}")


@pytest.mark.parametrize(
    "labels, classes",
    [
        (["1e19", "2e19"], ("1e19", "2e19")),  # beyond int64: text, exact
        (["9007199254740993", "9007199254740992"], ("9007199254740992", "9007199254740993")),
        (["1", "1.0", "0", " 0 "], (0, 1)),  # exact numbers still compare as numbers
        (["0.5", "1.5"], (0.5, 1.5)),
        (["9007199254740992", "-3"], (-3, 9007199254740992)),  # 2**53 itself is exact
        (["1.0000000000000000001", "1"], ("1", "1.0000000000000000001")),  # would round onto 1: kept as text
    ],
)
def test_csv_labels_are_kept_exact(tmp_path, labels, classes):
    data = load_dataset(config_for(labelled_csv(tmp_path, labels)))
    assert data.classes == classes
    assert all(type(c) in (str, int, float) for c in data.classes)
    json.dumps(data.preprocessing())  # every class is plain JSON


@pytest.mark.parametrize(
    "y, classes",
    [
        (np.array([2**64 - 1, 2**63] * 10, dtype=np.uint64), (2**63, 2**64 - 1)),
        (np.array([1e19, 2e19] * 10), (1e19, 2e19)),  # floats beyond int64 stay floats
        (np.array([3.0, 7.0] * 10, dtype=np.float32), (3, 7)),
        (np.array([True, False] * 10), (False, True)),
        (np.array([" a", "b "] * 10), ("a", "b")),
    ],
    ids=["uint64", "float-beyond-int64", "integral-float32", "bool", "text"],
)
def test_npz_labels_are_kept_exact_and_plain(tmp_path, y, classes):
    data = load_dataset(config_for(npz_with_labels(tmp_path / "d.npz", y)))
    assert data.classes == classes
    assert [type(c) for c in data.classes] == [type(c) for c in classes]
    record = json.loads(json.dumps(data.preprocessing()))
    # eval on new data matches labels as training encoded them, against classes read back from JSON
    ids = class_ids(y, record["classes"], "new")
    y_train, _ = encode_labels(y, "train")
    assert np.array_equal(ids, (y_train > 0).astype(int))


def test_class_ids_match_text_as_training_read_it():
    assert class_ids(
        np.array(["9007199254740993", "9007199254740992"]), ["9007199254740992", "9007199254740993"], "new"
    ).tolist() == [1, 0]
    assert class_ids(np.array(["1.0", "7", "3e0"]), [3, 7, 1], "new").tolist() == [2, 1, 0]
    assert class_ids(np.array(["10000000000000000000"]), [2**63, 10**19], "new").tolist() == [1]
    assert class_ids(np.array([b"yes", b"no"]), ["no", "yes"], "new").tolist() == [1, 0]
    with pytest.raises(DataError, match="'9007199254740993' were not seen"):
        class_ids(np.array(["9007199254740993"]), [9007199254740992, 0], "new")
    with pytest.raises(DataError, match="complex"):
        class_ids(np.array([1j]), [0, 1], "new")


# ============================================================================================= D. overflow


@pytest.mark.parametrize("value", ["1e200", "-9.99e307", "1e308"])
def test_a_feature_beyond_1e150_is_refused_naming_line_and_column(tmp_path, value):
    # a blank line before it: the line number is the file's, not the row index + 2
    (tmp_path / "data.csv").write_text(
        "a,b,target\n" + rows_text(3) + "\n" + rows_text(5, {4: value}), encoding="utf-8"
    )
    message = assert_refused(
        train(tmp_path), "data.csv:10: column 'a' is", "sentinel for a missing value", runs=tmp_path / "runs"
    )
    assert repr(float(value)) in message


def test_a_nan_after_blank_lines_names_its_own_line(tmp_path):
    (tmp_path / "data.csv").write_text(
        "a,b,target\n\n" + rows_text(2) + "\n\n" + rows_text(5, {1: "nan"}), encoding="utf-8"
    )
    assert_refused(train(tmp_path), "data.csv:8: column 'a' is missing", runs=tmp_path / "runs")


def test_an_npz_feature_beyond_1e150_names_the_row(tmp_path):
    x = np.random.default_rng(0).standard_normal((20, 2))
    x[13, 1] = -9.99e307
    np.savez(tmp_path / "data.npz", X=x, y=np.arange(20) % 2)
    assert_refused(train(tmp_path, "data.npz"), "data.npz: X row 13: column 'x1' is -9.99e+307", runs=tmp_path / "runs")


def test_1e39_unstandardized_is_refused_in_float32_and_trains_in_float64(tmp_path):
    (tmp_path / "data.csv").write_text("a,b,target\n" + rows_text(20, {6: "1e39"}), encoding="utf-8")
    assert_refused(
        train(tmp_path, "data.csv", ", standardize: false"),
        "data.csv:8: column 'a' is 1e+39, beyond float32's range after preprocessing",
        "set data.standardize: true or runtime.precision: float64",
        runs=tmp_path / "runs",
    )
    assert_refused(
        train(tmp_path, "data.csv", ", standardize: false", "--precision", "bfloat16"),
        "data.csv:8: column 'a'",
        "bfloat16's range",
        runs=tmp_path / "runs",
    )
    result = train(tmp_path, "data.csv", ", standardize: false", "--precision", "float64")
    assert result.exit_code == 0, result.output


def test_standardization_statistics_are_finite_for_huge_values(tmp_path):
    from gradfit.data.standardize import row_chunks, statistics

    # cells of 1e150 overflow the sum of squares from 1.8e8 rows on; beyond the bound, from the first square
    x = np.full((1000, 3), 1e160)
    x[::2] = -1e160
    x[:, 1] /= 2
    x[:, 2] = np.arange(1000) % 2  # an ordinary column next to them
    mean, std = statistics(row_chunks(x, rows=64), ["a", "b", "c"], "huge.csv")
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    np.testing.assert_allclose(std, [1e160, 5e159, 0.5], rtol=1e-12)


def test_eval_and_predict_refuse_a_value_beyond_float32_naming_line_and_column(tmp_path, run):
    new = tmp_path / "new.csv"
    new.write_text("a,b,target\n" + rows_text(5) + "\n" + rows_text(5, {2: "1e39"}), encoding="utf-8")
    for result in eval_and_predict(run, new, tmp_path / "p.csv"):
        assert_refused(result, "new.csv:10: column 'a' is 1e+39", "float32's range")
    assert not (tmp_path / "p.csv").exists()
    beyond = tmp_path / "beyond.npz"
    x = np.zeros((6, 2))
    x[4, 1] = 1e200
    np.savez(beyond, X=x)
    assert_refused(
        invoke("predict", run["run_dir"], beyond, "--out", tmp_path / "p.csv"),
        "beyond.npz: X row 4: column 'b' is 1e+200",
    )
    assert not (tmp_path / "p.csv").exists()


def test_non_finite_log_probabilities_are_never_returned(run):
    from gradfit.trained.run import load_run

    loaded = load_run(run["run_dir"])
    log_probs = loaded.log_probabilities()
    assert np.isfinite(log_probs(np.zeros((3, 2)))).all()
    with pytest.raises(DataError, match=r"^new\.csv:9: the model's probabilities for this row are not finite"):
        log_probs(np.array([[0.0, 0.0], [np.nan, 0.0]]), lambda i: f"new.csv:{[8, 9][i]}")


def test_labels_python_reads_as_numbers_but_are_not_plain_numbers_stay_text():
    # float() reads "1_000", Arabic-Indic and full-width digits: merged with "1000" and "1" they would lose a class
    for labels, classes in (
        (["1_000", "1000"], ["1000", "1_000"]),
        (["\u0661", "1"], ["1", "\u0661"]),
        (["\uff11", "1"], ["1", "\uff11"]),
        (["1", "1.0", "2"], [1, 2]),
    ):
        assert encode_labels(np.array(labels), "t")[1] == classes
