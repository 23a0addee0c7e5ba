"""gradfit.data.tabular, the one reader of tabular data, seen from every side that uses it.

- One catalogue of broken CSV files: each is refused with one message, naming the file and (where there is one)
  the line and column, whether it is read by ``open_table``, by ``gradfit train`` or by ``gradfit predict``.
- Accepted variants (byte-order mark, CRLF, blank lines, quoted numbers) read as the plain file does: the same
  numbers, the same training set, the same predictions, and the lines numbered as in the file.
- Every message is worded in one place of the source (there used to be two CSV parsers).
- Converted folders round-trip; ``convert`` never deletes what it did not write and leaves nothing when it fails.
- ``describe`` counts non-finite cells, matches NumPy's statistics and names the columns whose variance overflows.

Every file lives under tmp_path; the one trained run (two steps) is shared by the module.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, make_config, write_csv
from typer.testing import CliRunner

import gradfit
from gradfit.cli.app import app
from gradfit.data import blocks, converted
from gradfit.data.convert import convert
from gradfit.data.dataset import load_dataset
from gradfit.data.describe import describe
from gradfit.data.labels import Labels, encode_labels
from gradfit.data.tabular import open_table
from gradfit.data.text import LineNumbers
from gradfit.errors import DataError, GradfitError

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # keep Rich from wrapping messages mid-sentence


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env=WIDE)


def train_args(data: Path, out_dir: Path, *more: str) -> list:
    return [
        "train",
        CONFIGS / "logreg.yaml",
        "--out-dir",
        out_dir,
        "-q",
        "-s",
        "data.source=file",
        "-s",
        f"data.path={data}",
        "-s",
        "train.steps=2",
        *more,
    ]


def file_config(path: Path):
    return make_config("data.source=file", f"data.path={path}", "train.steps=2")


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def labels_of(labels: Labels) -> list:
    """Each row's raw label."""
    return np.asarray(labels.values)[labels.codes].tolist()


def refusal(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        open_table(path, "target", **kwargs).read_all()
    return str(caught.value)


# -------------------------------------------------------------------------------------------- the trained run

ROWS = 40


@dataclasses.dataclass
class Run:
    run_dir: Path
    data: Path
    rows: list[tuple[str, str, str]]  # (a, b, target) as written
    x: np.ndarray  # (ROWS, 2) float64
    labels: list[str]
    predictions: list[list[str]]  # predict --proba on the plain file: [line, prediction, p_no, p_yes]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """A logistic regression trained (2 steps) through the CLI on a plain LF CSV 'a,b,target', labels yes/no."""
    folder = tmp_path_factory.mktemp("tabular")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((ROWS, 2)) * [1.0, 3.0] + [0.5, -2.0]
    labels = np.where(x[:, 0] + 0.3 * rng.standard_normal(ROWS) > 0.5, "yes", "no").tolist()
    rows = [(repr(float(a)), repr(float(b)), label) for (a, b), label in zip(x, labels)]
    data = folder / "plain.csv"
    data.write_bytes(plain_bytes(rows))
    result = invoke(*train_args(data, folder / "runs", "--json"))
    assert result.exit_code == 0, result.output
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    out = folder / "plain-predictions.csv"
    result = invoke("predict", run_dir, data, "--proba", "--out", out)
    assert result.exit_code == 0, result.output
    header, predictions = read_rows(out)
    assert header == ["line", "prediction", "p_no", "p_yes"]
    assert {p[1] for p in predictions} <= {"yes", "no"} and len(predictions) == ROWS
    return Run(run_dir, data, rows, x, labels, predictions)


def plain_bytes(rows) -> bytes:
    return ("a,b,target\n" + "".join(f"{a},{b},{label}\n" for a, b, label in rows)).encode()


# ---------------------------------------------------------------------------------------- the error catalogue

GOOD_BEFORE = ["1,2,yes", "3,4,no"]  # lines 2 and 3; the bad line is line 4
GOOD_AFTER = ["7,8,no"]


def with_line_4(bad: str | bytes, header: str | bytes = "a,b,target") -> bytes:
    """A CSV whose line 4 is ``bad`` between good rows."""

    def raw(text):
        return text if isinstance(text, bytes) else text.encode()

    return b"".join(raw(line) + b"\n" for line in [header, *GOOD_BEFORE, bad, *GOOD_AFTER])


def header_only(header: str = "a,b,target") -> bytes:
    return (header + "\n").encode()


SAME = "same"  # predict says what open_table and train say
ACCEPTS = "accepts"  # predict ignores the label column: this file is fine for it


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    content: bytes
    message: str  # "{path}" stands for the file
    predict: str = SAME  # SAME, ACCEPTS, or predict's own message
    bug: str | None = None  # a known gradfit bug: the case fails in every path (strict xfail)
    missing: bool = False  # a missing cell: the reader hands it over as NaN, training and predict refuse it
    predict_bug: str | None = None  # a known bug in predict only


FIELD_LIMIT = csv.field_size_limit()
LATE = 3000  # rows before a bad byte: beyond the first chunks the text decoder reads with the header

CASES = [
    Case("empty file", b"", "{path}: file is empty; expected a header row naming the columns"),
    Case("blank lines only", b"\n   \n\t\n", "{path}: file is empty; expected a header row naming the columns"),
    Case("too many fields", with_line_4("5,6,yes,9"), "{path}:4: 4 fields but the header has 3 columns"),
    Case("too few fields", with_line_4("5,yes"), "{path}:4: 2 fields but the header has 3 columns"),
    Case("too many quoted fields", with_line_4('"5",6,"yes","9"'), "{path}:4: 4 fields but the header has 3 columns"),
    Case(
        "non-numeric cell",
        with_line_4("5,abc,yes"),
        "{path}:4: column 'b' has non-numeric value 'abc'; name it in data.categorical (or set data.categorical: "
        "auto) to one-hot encode it, or drop it (data.drop)",
    ),
    Case("quoted comma in a number", with_line_4('"5,5",6,yes'), "{path}:4: column 'a' has non-numeric value '5,5'"),
    Case(
        "empty cell",
        with_line_4("5,,yes"),
        "{path}:4: column 'b' is missing (an empty cell or NA); set data.missing",
        missing=True,
    ),
    Case(
        "whitespace cell",
        with_line_4("5,   ,yes"),
        "{path}:4: column 'b' is missing (an empty cell or NA)",
        missing=True,
    ),
    Case(
        "nan cell",
        with_line_4("nan,6,yes"),
        "{path}:4: column 'a' is missing (an empty cell or NA); set data.missing",
        missing=True,
    ),
    Case(
        "NA cell",
        with_line_4(" NA ,6,yes"),
        "{path}:4: column 'a' is missing (an empty cell or NA); set data.missing",
        missing=True,
    ),
    Case(
        "inf cell",
        with_line_4("5,-inf,yes"),
        "{path}:4: column 'b' is -inf; remove infinite values first (a missing cell is left empty or written NA)",
    ),
    Case(
        "beyond 1e150",
        with_line_4("5,-1.5e150,yes"),
        "{path}:4: column 'b' is -1.5e+150, beyond the magnitude of 1e+150 gradfit accepts for a feature (its "
        "square must fit in float64)",
    ),
    Case("just beyond 1e150", with_line_4("1.0000001e150,6,yes"), "{path}:4: column 'a' is 1.0000001e+150, beyond"),
    Case(
        "unclosed quote",
        with_line_4('5,"6,yes'),
        "{path}:4: malformed CSV row (unexpected end of data); is a '\"' quote left open? (a record must fit on "
        "one line)",
    ),
    Case(
        "unclosed quote in the header",
        with_line_4("5,6,yes", header='a,"b,target'),
        "{path}:1: malformed CSV header (unexpected end of data); is a '\"' quote left open?",
    ),
    Case(
        "over-long field",
        with_line_4("5," + "1" * (FIELD_LIMIT + 1) + ",yes"),
        f"{{path}}:4: a field of the CSV row is longer than {FIELD_LIMIT:,} characters, the most gradfit reads in "
        "one cell; is a '\"' quote left open, or is this not a CSV file?",
    ),
    Case(
        "over-long header field",
        with_line_4("5,6,yes", header="a,b" + "b" * FIELD_LIMIT + ",target"),
        f"{{path}}:1: a field of the CSV header is longer than {FIELD_LIMIT:,} characters",
    ),
    Case(
        "semicolon separator",
        b"a;b;target\n1;2;yes\n3;4;no\n",
        "{path}: the header has a single column 'a;b;target'; gradfit reads comma-separated files, and this one "
        "seems to use another separator",
    ),
    Case("tab separator", b"a\tb\ttarget\n1\t2\tyes\n", "{path}: the header has a single column 'a\\tb\\ttarget'"),
    Case("missing label", with_line_4("5,6,"), "{path}:4: missing label in column 'target'", predict=ACCEPTS),
    Case("blank label", with_line_4("5,6,   "), "{path}:4: missing label in column 'target'", predict=ACCEPTS),
    Case(
        "missing label column, close",
        with_line_4("5,6,yes", header="a,b,Target"),
        "{path}: no label column 'target' (set data.target); did you mean 'Target'? (its columns: 'Target', 'a', 'b')",
        predict="{path}: the feature columns do not match the 2 the run was trained on (unexpected 'Target')",
    ),
    Case(
        "missing label column",
        b"a,b\n1,2\n3,4\n5,6\n7,8\n",
        "{path}: no label column 'target' (set data.target); its columns: 'a', 'b'",
        predict=ACCEPTS,
    ),
    Case(
        "duplicate feature column",
        with_line_4("5,6,yes", header="a,a,target"),
        "{path}: duplicate column name(s) in the header: 'a'",
        predict="{path}: the feature columns do not match the 2 the run was trained on (missing 'b'; duplicated 'a')",
    ),
    Case(
        "duplicate label column",
        b"a,b,target,target\n1,2,yes,yes\n3,4,no,no\n",
        "{path}: duplicate column name(s) in the header: 'target'",
        predict=ACCEPTS,
    ),
    Case(
        "not UTF-8 in a row",
        with_line_4(b"5,6,caf\xe9"),
        "{path}: not a UTF-8 text file (invalid continuation byte); save it as UTF-8 CSV",
    ),
    Case(
        "not UTF-8 in the header",
        with_line_4("5,6,yes", header=b"a,\xff,target"),
        "{path}: not a UTF-8 text file (invalid start byte); save it as UTF-8 CSV",
    ),
    Case(
        "not UTF-8 late in the file",
        b"a,b,target\n"
        + b"".join(b"%d,%d,%s\n" % (i, i, b"no" if i % 2 else b"yes") for i in range(LATE))
        + b"5,6,\xff\n",
        "{path}: not a UTF-8 text file (invalid start byte); save it as UTF-8 CSV",
        predict=ACCEPTS,  # predict reads no label: only the columns read are decoded
    ),
    Case("header but no rows", header_only(), "{path}: the header has no data rows below it"),
    Case("header and blank lines", header_only() + b"\n   \n\t\n", "{path}: the header has no data rows below it"),
    Case(
        "number Python reads but NumPy does not",
        with_line_4("5,1_000,yes"),
        "{path}:4: column 'b' has non-numeric value '1_000'",
    ),
    Case(
        "non-ASCII digits",
        with_line_4("5,\u0661\u0662,yes"),
        "{path}:4: column 'b' has non-numeric value '\u0661\u0662'",
    ),
]


def catalogue(leg: str) -> list:
    params = []
    for case in CASES:
        reason = case.bug or (case.predict_bug if leg == "predict" else None)
        marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)] if reason else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def write_case(tmp_path: Path, case: Case) -> tuple[Path, str]:
    path = tmp_path / "broken.csv"
    path.write_bytes(case.content)
    return path, case.message.format(path=path)


@pytest.mark.parametrize("case", catalogue("open_table"))
def test_catalogue_open_table(case, tmp_path):
    path, message = write_case(tmp_path, case)
    if case.missing:  # the encoding decides (data.missing): the reader hands the cell over as NaN
        x, _, positions = open_table(path, "target").read_all()
        assert np.isnan(x).sum() == 1 and np.isnan(x[2]).any() and positions[2] == 2
        return
    assert message in refusal(path)


@pytest.mark.parametrize("case", catalogue("train"))
def test_catalogue_train_says_what_open_table_says(case, tmp_path):
    path, message = write_case(tmp_path, case)
    full = refusal(path) if not (case.bug or case.missing) else message
    result = invoke(*train_args(path, tmp_path / "runs"))
    assert result.exit_code == 2, result.output
    assert (f"error: {full}\n" in result.output or case.missing) and f"error: {message}" in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # no run directory for data that cannot be read


@pytest.mark.parametrize("case", catalogue("predict"))
def test_catalogue_predict_says_what_open_table_says(case, run, tmp_path):
    path, message = write_case(tmp_path, case)
    out = tmp_path / "p.csv"
    result = invoke("predict", run.run_dir, path, "--out", out)
    if case.predict == ACCEPTS:  # the label column is ignored: the rows are predicted
        assert result.exit_code == 0, result.output
        _, rows = read_rows(out)
        assert [r[0] for r in rows] == [str(n) for n in range(2, len(case.content.splitlines()) + 1)]
        return
    if case.predict == SAME:
        expected = message if case.bug or case.missing else refusal(path)
    else:
        expected = case.predict.format(path=path)
    assert result.exit_code == 2, result.output
    assert f"error: {expected}" in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_a_blank_first_line_is_not_reported_as_an_empty_file(tmp_path):
    path = tmp_path / "lead.csv"
    path.write_bytes(b"\n" + with_line_4("5,6,yes"))
    try:
        x, _, positions = open_table(path, "target").read_all()
    except DataError as exc:  # refusing it is fine, but not as an empty file
        assert "file is empty" not in str(exc), str(exc)
        return
    assert x.shape == (4, 2) and positions.tolist() == [3, 4, 5, 6]


def test_magnitude_1e150_itself_is_accepted(tmp_path):
    path = tmp_path / "edge.csv"
    path.write_bytes(with_line_4("1e150,-1e150,yes"))
    x, _, _ = open_table(path, "target").read_all()
    assert x[2].tolist() == [1e150, -1e150]


def test_object_arrays_in_an_npz_are_refused_unread(run, tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, X=np.array([[1.0, None]], dtype=object), y=np.array(["yes"]))
    message = refusal(path)
    assert message.startswith(f"{path}: array X holds Python objects; gradfit never unpickles objects")
    result = invoke("predict", run.run_dir, path)
    assert result.exit_code == 2 and f"error: {message}" in result.output, result.output


# ----------------------------------------------------------------------------------------- one wording


WORDINGS = [
    "file is empty",
    "fields but the header has",
    "non-numeric value",
    "never unpickles",
    "malformed CSV",
    "no label column",
]


@pytest.mark.parametrize("fragment", WORDINGS)
def test_each_message_is_worded_in_one_place(fragment):
    sources = sorted(Path(gradfit.__file__).parent.rglob("*.py"))
    assert len(sources) > 20
    found = {str(p): n for p in sources if (n := p.read_text(encoding="utf-8").count(fragment))}
    assert sum(found.values()) == 1, found


# ----------------------------------------------------------------------------------------- accepted variants


VARIANTS = {
    "bom": dict(bom=True),
    "crlf": dict(crlf=True),
    "blank lines": dict(blanks=True),
    "quoted numbers": dict(quoted=True),
    "all at once": dict(bom=True, crlf=True, blanks=True, quoted=True),
}
BLANKS_BEFORE = {0: ["", "   "], 5: ["\t"], 6: ["  \t  ", "", ""], 23: [" "], "end": ["", "    "]}  # before row i


def variant(rows, bom=False, crlf=False, blanks=False, quoted=False) -> tuple[bytes, list[int]]:
    """The plain file written another accepted way, and the line numbers its data rows are on."""
    eol = "\r\n" if crlf else "\n"
    lines, data_lines = ["a,b,target"], []
    for i in range(len(rows) + 1):
        if blanks:
            lines += BLANKS_BEFORE.get(i if i < len(rows) else "end", [])
        if i == len(rows):
            break
        a, b, label = rows[i]
        lines.append(f'"{a}"," {b} ","{label}"' if quoted else f"{a},{b},{label}")
        data_lines.append(len(lines))
    text = "".join(line + eol for line in lines) + ("  " if blanks else "")  # a last line of spaces, no line end
    return ("\ufeff" if bom else "").encode() + text.encode(), data_lines


def write_variant(run: Run, folder: Path, name: str) -> tuple[Path, list[int]]:
    content, lines = variant(run.rows, **VARIANTS[name])
    path = folder / f"{name.replace(' ', '-')}.csv"
    path.write_bytes(content)
    assert content != run.data.read_bytes()
    return path, lines


def test_variant_writer_numbers_the_lines():
    rows = [("1", "2", "x"), ("3", "4", "y")]
    content, lines = variant(rows, blanks=True, crlf=True)
    assert content == b"a,b,target\r\n\r\n   \r\n1,2,x\r\n3,4,y\r\n\r\n    \r\n  "
    assert lines == [4, 5]


@pytest.mark.parametrize("block_cells", [None, 7], ids=["one block", "blocks of 3 lines"])
@pytest.mark.parametrize("name", VARIANTS)
def test_accepted_variants_read_as_the_plain_file(run, tmp_path, monkeypatch, name, block_cells):
    if block_cells:
        monkeypatch.setattr(blocks, "BLOCK_CELLS", block_cells)
    path, lines = write_variant(run, tmp_path, name)
    table = open_table(path, "target")
    assert table.names == ["a", "b"]
    x, labels, positions = table.read_all()
    assert x.dtype == np.float64
    np.testing.assert_array_equal(x, run.x)  # repr'd floats: exact
    assert labels_of(labels) == run.labels
    assert positions.tolist() == list(range(len(lines)))  # a CSV's positions count its data rows...
    assert LineNumbers(path).next(len(lines) + 5).tolist() == lines  # ...whose lines are found when needed
    assert table.locate(len(lines) - 1) == f"{path}:{lines[-1]}"
    if not VARIANTS[name].get("blanks"):
        assert lines == list(range(2, ROWS + 2))


@pytest.mark.parametrize("name", VARIANTS)
def test_accepted_variants_train_on_the_same_dataset(run, tmp_path, name):
    path, _ = write_variant(run, tmp_path, name)
    plain, other = load_dataset(file_config(run.data)), load_dataset(file_config(path))
    assert other.classes == plain.classes == ("no", "yes")
    assert other.feature_names == plain.feature_names == ("a", "b")
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(other, part).x, getattr(plain, part).x)
        np.testing.assert_array_equal(getattr(other, part).y, getattr(plain, part).y)
    np.testing.assert_array_equal(other.mean, plain.mean)
    np.testing.assert_array_equal(other.std, plain.std)


@pytest.mark.parametrize("name", VARIANTS)
def test_accepted_variants_predict_as_the_plain_file_with_its_line_numbers(run, tmp_path, name):
    path, lines = write_variant(run, tmp_path, name)
    out = tmp_path / "p.csv"
    result = invoke("predict", run.run_dir, path, "--proba", "--batch-rows", "3", "--out", out)
    assert result.exit_code == 0, result.output
    header, rows = read_rows(out)
    assert header == ["line", "prediction", "p_no", "p_yes"]
    assert [int(r[0]) for r in rows] == lines
    assert [r[1:] for r in rows] == [r[1:] for r in run.predictions]


def test_training_on_the_all_at_once_variant_gives_the_same_parameters(run, tmp_path):
    path, _ = write_variant(run, tmp_path, "all at once")
    result = invoke(*train_args(path, tmp_path / "runs", "--json"))
    assert result.exit_code == 0, result.output
    other = Path(json.loads(result.stdout)["run_dir"])
    with np.load(run.run_dir / "params.npz") as a, np.load(other / "params.npz") as b:
        assert sorted(a.files) == sorted(b.files) == ["b", "w"]
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    record = json.loads((other / "preprocessing.json").read_text(encoding="utf-8"))
    assert record["classes"] == ["no", "yes"]


# ------------------------------------------------------------------------------------------ converted folders


def labelled_csv(path: Path, labels: list[str], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(labels), 3)) * [1.0, 1e-3, 1e6]
    return write_csv(
        path, ["f0", "f1", "f2", "target"], [[repr(float(v)) for v in row] + [label] for row, label in zip(x, labels)]
    )


SOURCES = {
    "text labels": (["cat", "dog", "cat", "emu", "dog", "cat", "emu", "cat"] * 3, ["cat", "dog", "emu"], str),
    "numeric-looking labels": (["1", "1.0", "2", " 2 ", "1", "2.0", "1e0"] * 3, [1, 2], int),
}


@pytest.mark.parametrize("block_cells", [None, 7], ids=["one block", "blocks of 2 rows"])
@pytest.mark.parametrize("source", SOURCES)
def test_a_converted_csv_round_trips(tmp_path, monkeypatch, source, block_cells):
    if block_cells:
        monkeypatch.setattr(blocks, "BLOCK_CELLS", block_cells)
    labels, classes, kind = SOURCES[source]
    data = labelled_csv(tmp_path / "data.csv", labels)
    done = convert(data, tmp_path / "out")
    assert (done.rows, done.features, done.dtype, done.classes) == (len(labels), 3, "float64", classes)
    original = open_table(data, "target")
    x0, labels0, _ = original.read_all()
    folder = open_table(tmp_path / "out", "target")
    assert folder.kind == "converted" and folder.names == original.names == ["f0", "f1", "f2"]
    x, labels1, positions = folder.read_all()
    assert x.dtype == np.float64
    np.testing.assert_array_equal(x, x0)
    assert positions.tolist() == list(range(len(labels)))
    y0, classes0 = encode_labels(labels0, "csv")
    y1, classes1 = encode_labels(labels1, "folder")
    assert classes1 == classes0 == classes and all(type(c) is kind for c in classes1)
    np.testing.assert_array_equal(y1, y0)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text(encoding="utf-8"))
    assert meta["classes"] == classes and meta["rows"] == len(labels) and meta["feature_names"] == ["f0", "f1", "f2"]
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "out"]


def test_a_converted_npz_keeps_float32_features_and_boolean_labels(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((11, 2)).astype(np.float32)
    y = rng.random(11) > 0.5
    y[:2] = [True, False]
    np.savez(tmp_path / "data.npz", X=x, y=y)
    done = convert(tmp_path / "data.npz", tmp_path / "out")
    assert (done.dtype, done.classes) == ("float32", [False, True])
    folder = open_table(tmp_path / "out")
    x1, labels1, _ = folder.read_all()
    assert x1.dtype == np.float32 and folder.names == ["x0", "x1"]
    np.testing.assert_array_equal(x1, x)
    y0, classes0 = encode_labels(open_table(tmp_path / "data.npz").read_all()[1], "npz")
    y1, classes1 = encode_labels(labels1, "folder")
    assert classes1 == classes0 == [False, True] and all(type(c) is bool for c in classes1)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(y1 > 0, y)


def test_convert_dtype_float32_writes_float32(tmp_path):
    data = labelled_csv(tmp_path / "data.csv", ["a", "b"] * 5)
    result = invoke("data", "convert", data, tmp_path / "out", "--dtype", "float32", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dtype"] == "float32"
    stored = np.load(tmp_path / "out" / "X.npy")
    assert stored.dtype == np.float32
    x0 = open_table(data, "target").read_all()[0]
    np.testing.assert_array_equal(stored, x0.astype(np.float32))
    assert not np.array_equal(stored.astype(np.float64), x0)  # rounded: float64 would have kept them
    x1 = open_table(tmp_path / "out").read_all()[0]
    assert x1.dtype == np.float32


NOT_CONVERTED = {
    "a folder of the user's": {"notes.txt": "mine"},
    "an empty folder": {},
    "X.npy and notes": {"X.npy": "not an array", "notes.txt": "mine"},
}


@pytest.mark.parametrize("force", [False, True], ids=["", "--force"])
@pytest.mark.parametrize(
    "files",
    [
        *[pytest.param(v, id=k) for k, v in NOT_CONVERTED.items()],
        pytest.param({"meta.json": '{"mine": true}'}, id="a lone meta.json of the user's"),
    ],
)
def test_convert_never_replaces_a_folder_it_did_not_write(tmp_path, files, force):
    data = labelled_csv(tmp_path / "data.csv", ["a", "b"] * 5)
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    result = invoke("data", "convert", data, folder, *(["--force"] if force else []))
    assert result.exit_code == 2, result.output
    assert (
        f"error: {folder}: exists and is not a folder made by 'gradfit data convert'; gradfit never replaces it"
        in result.output
    ), result.output
    assert {p.name: p.read_text() for p in folder.iterdir()} == files
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "mine"]


def test_convert_replaces_a_converted_folder_only_with_force(tmp_path):
    first = labelled_csv(tmp_path / "first.csv", ["a", "b"] * 5, seed=1)
    second = labelled_csv(tmp_path / "second.csv", ["x", "y", "z"] * 4, seed=2)
    out = tmp_path / "out"
    assert invoke("data", "convert", first, out, "-q").exit_code == 0
    before = {name: (out / name).read_bytes() for name in converted.CONVERTED_FILES}
    result = invoke("data", "convert", second, out)
    assert result.exit_code == 2, result.output
    assert f"error: {out}: already exists; pass --force to replace it" in result.output
    assert {name: (out / name).read_bytes() for name in converted.CONVERTED_FILES} == before
    result = invoke("data", "convert", second, out, "--force", "-q")
    assert result.exit_code == 0, result.output
    x, labels, _ = open_table(out).read_all()
    np.testing.assert_array_equal(x, open_table(second, "target").read_all()[0])
    assert list(labels.values) == ["x", "y", "z"] and len(x) == 12
    assert sorted(os.listdir(tmp_path)) == ["first.csv", "out", "second.csv"]


@pytest.mark.parametrize("existing", [False, True], ids=["new folder", "over a converted folder, --force"])
def test_a_failed_convert_leaves_nothing_behind(tmp_path, monkeypatch, existing):
    monkeypatch.setattr(blocks, "BLOCK_CELLS", 8)  # 2 rows per block: 15 blocks are written before the bad one
    rows = [[str(i), str(0.5 * i), str(-i), "ab"[i % 2]] for i in range(40)]
    rows[31][1] = "inf"  # line 33
    data = write_csv(tmp_path / "bad.csv", ["f0", "f1", "f2", "target"], rows)
    out = tmp_path / "out"
    before = None
    if existing:
        convert(labelled_csv(tmp_path / "old.csv", ["a", "b"] * 5), out)
        before = {name: (out / name).read_bytes() for name in converted.CONVERTED_FILES}
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(DataError, match=f"^{data}:33: column 'f1' is inf"):
        convert(data, out, force=existing)
    assert sorted(os.listdir(tmp_path)) == listing  # no output folder, no hidden partial folder
    if existing:
        assert {name: (out / name).read_bytes() for name in converted.CONVERTED_FILES} == before
    result = invoke("data", "convert", data, out, *(["--force"] if existing else []))
    assert result.exit_code == 2 and f"error: {data}:33: column 'f1'" in result.output, result.output
    assert sorted(os.listdir(tmp_path)) == listing


def test_convert_refuses_to_write_over_its_source(tmp_path):
    data = labelled_csv(tmp_path / "data.csv", ["a", "b"] * 5)
    with pytest.raises(GradfitError, match="that is the data being converted"):
        convert(data, data)
    assert open_table(data, "target").read_all()[0].shape == (10, 3)


# ------------------------------------------------------------------------------------------------- describe


def describe_csv(path: Path, n: int = 57) -> tuple[Path, np.ndarray, list[str]]:
    """A CSV with a nan and an inf cell in column 'b', a -inf cell in 'c', and means far from zero."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, 3)) * [1.0, 0.01, 1e5] + [1e4, -3.0, 2e7]
    x[9, 1], x[40, 1], x[13, 2] = np.nan, np.inf, -np.inf
    labels = [["dog", "cat", "emu"][i % 3] if i % 5 else "cat" for i in range(n)]
    write_csv(path, ["a", "b", "c", "target"], [[repr(float(v)) for v in row] + [lab] for row, lab in zip(x, labels)])
    return path, x, labels


def assert_statistics(result: dict, x: np.ndarray, names: list[str]) -> None:
    assert [f["name"] for f in result["features"]] == names
    for j, feature in enumerate(result["features"]):
        column = x[:, j]
        finite = column[np.isfinite(column)]
        assert feature["non_finite"] + feature["missing"] == len(column) - len(finite)
        assert feature["missing"] == np.isnan(column).sum()
        assert feature["min"] == finite.min() and feature["max"] == finite.max()
        np.testing.assert_allclose(feature["mean"], np.mean(finite), rtol=1e-12, atol=0)
        np.testing.assert_allclose(feature["std"], np.std(finite, ddof=0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("block_cells", [None, 7], ids=["one block", "blocks of 2 rows"])
def test_describe_counts_non_finite_cells_and_matches_numpy(tmp_path, monkeypatch, block_cells):
    if block_cells:
        monkeypatch.setattr(blocks, "BLOCK_CELLS", block_cells)
    path, x, labels = describe_csv(tmp_path / "d.csv")
    assert refusal(path).startswith(f"{path}:15: column 'c' is -inf;")  # training refuses this file
    result = describe(path)
    assert (result["format"], result["rows"], result["columns"], result["target"]) == ("csv", len(x), 3, "target")
    assert (result["non_finite_cells"], result["missing_cells"]) == (2, 1)
    assert [f["non_finite"] for f in result["features"]] == [0, 1, 1]
    assert [f["missing"] for f in result["features"]] == [0, 1, 0]
    assert_statistics(result, x, ["a", "b", "c"])
    assert result["classes"] == [{"label": c, "rows": labels.count(c)} for c in ("cat", "dog", "emu")]
    assert result["overflow"] == []


def test_describe_merges_labels_as_training_does(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a", "target"], [["1", "1"], ["2", "1.0"], ["3", "2"], ["4", " 1 "]])
    assert describe(path)["classes"] == [{"label": 1, "rows": 3}, {"label": 2, "rows": 1}]


def test_describe_names_a_column_whose_variance_overflows(tmp_path):
    rows = [[str(i), f"{'-' if i % 2 else ''}1e200", "ab"[i % 2]] for i in range(6)]
    path = write_csv(tmp_path / "big.csv", ["small", "big", "target"], rows)
    assert f"{path}:2: column 'big' is 1e+200, beyond the magnitude" in refusal(path)  # training refuses it
    result = describe(path)
    assert result["overflow"] == ["big"]
    small, big = result["features"]
    assert (big["min"], big["max"], big["std"], big["non_finite"]) == (-1e200, 1e200, None, 0)
    assert small["std"] == pytest.approx(np.std(np.arange(6.0)), rel=1e-12) and small["mean"] == 2.5
    assert result["non_finite_cells"] == 0
    cli = invoke("data", "describe", path)
    assert cli.exit_code == 0, cli.output
    assert "overflow: column 'big': its mean or variance overflows float64" in cli.output


@pytest.mark.parametrize("which", ["non-finite", "overflow"])
def test_describe_json_prints_the_same_numbers(tmp_path, which):
    if which == "non-finite":
        path = describe_csv(tmp_path / "d.csv")[0]
    else:
        path = write_csv(
            tmp_path / "big.csv",
            ["small", "big", "target"],
            [[str(i), f"{'-' if i % 2 else ''}1e200", "ab"[i % 2]] for i in range(6)],
        )
    result = invoke("data", "describe", path, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == describe(path)
    assert printed["non_finite_cells"] == (2 if which == "non-finite" else 0)
    assert printed["overflow"] == ([] if which == "non-finite" else ["big"])


def test_describe_blocks_do_not_change_the_result(tmp_path, monkeypatch):
    path, x, _ = describe_csv(tmp_path / "d.csv", n=101)
    whole = describe(path)
    for cells in (7, 12, 64):
        monkeypatch.setattr(blocks, "BLOCK_CELLS", cells)
        blocked = describe(path)
        assert {k: v for k, v in blocked.items() if k != "features"} == {
            k: v for k, v in whole.items() if k != "features"
        }
        for a, b in zip(blocked["features"], whole["features"]):
            assert {k: a[k] for k in ("name", "min", "max", "non_finite")} == {
                k: b[k] for k in ("name", "min", "max", "non_finite")
            }
            np.testing.assert_allclose([a["mean"], a["std"]], [b["mean"], b["std"]], rtol=1e-12, atol=0)
        assert_statistics(blocked, x, ["a", "b", "c"])


def test_describe_a_converted_folder_gives_the_csvs_classes_and_statistics(tmp_path):
    data = labelled_csv(tmp_path / "data.csv", ["1", "1.0", "2", "3"] * 4)
    convert(data, tmp_path / "out")
    from_csv, from_folder = describe(data), describe(tmp_path / "out")
    assert from_folder["format"] == "converted"
    assert (
        from_folder["classes"]
        == from_csv["classes"]
        == [{"label": 1, "rows": 8}, {"label": 2, "rows": 4}, {"label": 3, "rows": 4}]
    )
    assert from_folder["features"] == from_csv["features"]
