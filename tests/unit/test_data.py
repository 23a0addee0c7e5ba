"""Datasets: built-ins, splits, standardization, the synthetic generator, and user CSV / .npz files.

Every broken input must raise DataError naming the problem and the file (and the line where one applies).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from gradfit.config.load import GradfitConfig, resolve_config
from gradfit.data.dataset import builtin_path, load_dataset, split_indices
from gradfit.data.synthetic import make_synthetic
from gradfit.data.tabular import open_table
from gradfit.errors import DataError


def make_config(*overrides: str) -> GradfitConfig:
    return resolve_config(None, list(overrides)).config


def file_config(path, *, target="target", kind="logistic", val=0.2, test=0.2, standardize=True, seed=0):
    """A config reading a user file (absolute path, so the working directory does not matter)."""
    return GradfitConfig.model_validate(
        {
            "seed": seed,
            "data": {
                "source": "file",
                "path": str(path),
                "target": target,
                "val_fraction": val,
                "test_fraction": test,
                "standardize": standardize,
            },
            "model": {"kind": kind},
        }
    )


def write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def good_rows(n: int = 20, labels=("yes", "no")) -> list[str]:
    """Rows 'a,b,target' where a encodes the label (a = index of the label), so the mapping can be checked."""
    return [f"{i % len(labels)},{0.5 * i},{labels[i % len(labels)]}" for i in range(n)]


def csv_with(rows: list[str], header: str = "a,b,target") -> str:
    return "\n".join([header, *rows]) + "\n"


def names_line(message: str, path: Path, line: int) -> bool:
    """The message points at a line: 'path:LINE' (compiler style) or 'line LINE'."""
    return f"{path}:{line}" in message or re.search(rf"\bline {line}\b", message) is not None


# ------------------------------------------------------------------------------------------------ built-ins


@pytest.fixture(scope="module")
def cancer():
    return load_dataset(make_config("data.source=breast_cancer"))


@pytest.fixture(scope="module")
def cancer_raw():
    return load_dataset(make_config("data.source=breast_cancer", "data.standardize=false"))


@pytest.fixture(scope="module")
def digits():
    return load_dataset(make_config("data.source=digits", "model.kind=mlp"))


def all_rows(data) -> np.ndarray:
    return np.concatenate([data.train.x, data.val.x, data.test.x])


def test_breast_cancer_shape_classes_and_labels(cancer):
    assert all_rows(cancer).shape == (569, 30)
    assert cancer.n_features == 30 and len(cancer.feature_names) == 30
    assert cancer.classes == ("benign", "malignant")
    y = np.concatenate([cancer.train.y, cancer.val.y, cancer.test.y])
    assert set(np.unique(y).tolist()) == {-1.0, 1.0}
    assert y.dtype.kind == "f"
    # 357 benign (-1) and 212 malignant (+1) in the shipped file
    assert (y == -1).sum() == 357 and (y == 1).sum() == 212


def test_digits_shape_classes_and_labels(digits):
    assert all_rows(digits).shape == (1797, 64)
    assert digits.n_classes == 10 and digits.classes == tuple(range(10))
    y = np.concatenate([digits.train.y, digits.val.y, digits.test.y])
    assert y.dtype.kind == "i"
    assert np.unique(y).tolist() == list(range(10))


def test_digits_with_the_logistic_model_keep_their_ten_classes_as_ids():
    data = load_dataset(make_config("data.source=digits"))  # the logistic model is multinomial there
    assert data.n_classes == 10 and data.train.y.dtype.kind == "i" and set(np.unique(data.train.y)) == set(range(10))


@pytest.mark.parametrize("val, test", [(0.2, 0.2), (0.1, 0.3), (0.0, 0.25), (0.15, 0.0)])
def test_split_sizes_follow_the_fractions(val, test):
    data = load_dataset(
        make_config("data.source=breast_cancer", f"data.val_fraction={val}", f"data.test_fraction={test}")
    )
    assert len(data.val) == round(569 * val)
    assert len(data.test) == round(569 * test)
    assert len(data.train) == 569 - round(569 * val) - round(569 * test)


def test_splits_are_disjoint_and_cover_every_row(cancer_raw):
    rows = all_rows(cancer_raw)
    # the shipped rows are distinct, so a row seen twice would mean a row landed in two splits
    assert len(np.unique(rows, axis=0)) == 569
    raw_x = np.loadtxt(builtin_path("breast_cancer"), delimiter=",", skiprows=1, usecols=range(30))
    assert np.array_equal(np.unique(rows, axis=0), np.unique(raw_x, axis=0))


@pytest.mark.parametrize("n, val, test", [(569, 0.2, 0.2), (10, 0.1, 0.3), (7, 0.0, 0.2)])
def test_split_indices_partition_the_rows(n, val, test):
    train, val_idx, test_idx = split_indices(n, val, test, seed=3)
    together = np.concatenate([train, val_idx, test_idx])
    assert sorted(together.tolist()) == list(range(n))
    assert (len(val_idx), len(test_idx)) == (round(n * val), round(n * test))


def test_same_seed_same_split_other_seed_other_split(cancer):
    again = load_dataset(make_config("data.source=breast_cancer"))
    other = load_dataset(make_config("data.source=breast_cancer", "seed=1"))
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(cancer, part).x, getattr(again, part).x)
        assert np.array_equal(getattr(cancer, part).y, getattr(again, part).y)
    assert len(other.train) == len(cancer.train)
    assert not np.array_equal(other.train.y, cancer.train.y)
    assert not np.array_equal(other.mean, cancer.mean)


def test_standardization_uses_training_statistics_only(cancer, cancer_raw):
    assert cancer.train.x.dtype == np.float64
    np.testing.assert_allclose(cancer.train.x.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(cancer.train.x.std(axis=0), 1.0, atol=1e-6)
    # held-out rows are transformed with the training statistics, so they are not exactly standardized
    for part in (cancer.val, cancer.test):
        assert not np.allclose(part.x.mean(axis=0), 0.0, atol=1e-6)
        assert not np.allclose(part.x.std(axis=0), 1.0, atol=1e-6)
    # the stored statistics are those of the raw training rows (same seed, same split)
    np.testing.assert_allclose(cancer.mean, cancer_raw.train.x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(cancer.std, cancer_raw.train.x.std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(cancer.val.x, (cancer_raw.val.x - cancer.mean) / cancer.std, rtol=1e-12, atol=1e-12)
    assert cancer_raw.mean is None and cancer_raw.std is None


def test_constant_feature_gets_std_one_and_no_nan(tmp_path):
    rows = [f"7.5,{i},{'ab'[i % 2]}" for i in range(20)]
    data = load_dataset(file_config(write(tmp_path, csv_with(rows))))
    assert data.std[0] == 1.0 and data.mean[0] == 7.5
    for part in (data.train, data.val, data.test):
        assert np.isfinite(part.x).all()
        assert np.all(part.x[:, 0] == 0.0)


def test_digits_constant_pixels_stay_finite(digits):
    constant = digits.std == 1.0
    assert constant.any()  # digits has always-blank border pixels
    assert np.isfinite(all_rows(digits)).all()


def test_preprocessing_is_json_and_has_the_label_mapping(cancer, digits):
    record = json.loads(json.dumps(cancer.preprocessing()))
    assert record["classes"] == ["benign", "malignant"]
    assert record["label_encoding"] == {"benign": -1, "malignant": 1}
    assert len(record["feature_names"]) == 30
    np.testing.assert_allclose(record["standardize"]["mean"], cancer.mean)
    np.testing.assert_allclose(record["standardize"]["std"], cancer.std)
    assert record["rows"] == {"train": len(cancer.train), "val": len(cancer.val), "test": len(cancer.test)}
    digits_record = json.loads(json.dumps(digits.preprocessing()))
    assert digits_record["label_encoding"] == {str(k): k for k in range(10)}


def test_builtin_path_finds_the_csvs():
    for name, rows in (("breast_cancer", 569), ("digits", 1797)):
        path = builtin_path(name)
        assert path.is_file() and path.suffix == ".csv"
        with open(path, encoding="utf-8") as f:
            assert sum(1 for _ in f) == rows + 1  # header + rows


def test_builtins_load_from_another_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = load_dataset(make_config("data.source=breast_cancer"))
    assert all_rows(data).shape == (569, 30)


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_shape_dtype_and_classes():
    x, y = make_synthetic(500, 7, 4, separation=2.0, noise=1.0, seed=0)
    assert x.shape == (500, 7) and x.dtype == np.float32
    assert y.shape == (500,) and y.dtype.kind == "i"
    assert sorted(np.unique(y).tolist()) == [0, 1, 2, 3]


def test_synthetic_is_deterministic_per_seed():
    a = make_synthetic(300, 5, 3, 2.0, 1.0, seed=4)
    b = make_synthetic(300, 5, 3, 2.0, 1.0, seed=4)
    c = make_synthetic(300, 5, 3, 2.0, 1.0, seed=5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_synthetic_without_noise_is_linearly_separable():
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, y = make_synthetic(400, 5, 2, 2.0, 0.0, seed=2)
    fit = linear_model.LogisticRegression(C=1e8, max_iter=10_000).fit(x, y)
    assert fit.score(x, y) == 1.0
    x, y = make_synthetic(400, 5, 2, 2.0, 1.0, seed=2)  # sampled labels overlap
    assert linear_model.LogisticRegression(C=1e8, max_iter=10_000).fit(x, y).score(x, y) < 1.0


def test_synthetic_through_the_config():
    config = make_config(
        "data.source=synthetic",
        "model.kind=mlp",
        "data.synthetic.n_samples=300",
        "data.synthetic.n_features=6",
        "data.synthetic.n_classes=3",
    )
    data = load_dataset(config)
    assert all_rows(data).shape == (300, 6)
    assert data.train.x.dtype == np.float32
    assert data.classes == (0, 1, 2)
    assert data.feature_names == tuple(f"x{i}" for i in range(6))


def test_synthetic_large_generates():
    x, y = make_synthetic(200_000, 100, 2, 2.0, 1.0, seed=0)
    assert x.shape == (200_000, 100) and x.dtype == np.float32
    assert y.shape == (200_000,)
    assert set(np.unique(y).tolist()) == {0, 1}
    assert np.isfinite(x).all()


# ------------------------------------------------------------------------------------------------ user CSV


def test_csv_with_string_labels(tmp_path):
    data = load_dataset(file_config(write(tmp_path, csv_with(good_rows(20))), standardize=False))
    assert data.classes == ("no", "yes")
    assert data.feature_names == ("a", "b")
    assert data.preprocessing()["label_encoding"] == {"no": -1, "yes": 1}
    # column a is 0 for 'yes' and 1 for 'no': 'yes' -> +1, 'no' -> -1 in every split
    for part in (data.train, data.val, data.test):
        np.testing.assert_array_equal(part.y, np.where(part.x[:, 0] == 0, 1.0, -1.0))
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 4)


def test_csv_numeric_labels_compare_as_numbers(tmp_path):
    labels = ["1", "1.0", "0", "0.0", " 1 ", "0"]
    rows = [f"{i},{int(float(labels[i % 6]))},{labels[i % 6]}" for i in range(24)]
    data = load_dataset(file_config(write(tmp_path, csv_with(rows)), standardize=False))
    assert data.classes == (0, 1)
    for part in (data.train, data.val, data.test):
        np.testing.assert_array_equal(part.y, np.where(part.x[:, 1] == 1, 1.0, -1.0))


def test_csv_three_classes_load_with_mlp(tmp_path):
    path = write(tmp_path, csv_with(good_rows(30, labels=("cat", "dog", "eel"))))
    data = load_dataset(file_config(path, kind="mlp"))
    assert data.classes == ("cat", "dog", "eel")
    assert set(np.unique(np.concatenate([data.train.y, data.val.y, data.test.y])).tolist()) == {0, 1, 2}


# (id, file text or None for "no file", config keywords, regexes the message must match, line or None)
BAD_CSV = [
    ("missing file", None, {}, [r"not found"], None),
    ("empty file", "", {}, [r"empty"], None),
    ("header only", "a,b,target\n", {}, [r"no data rows"], None),
    (
        "target misspelled",
        csv_with(good_rows(), header="a,b,target"),
        {"target": "targte"},
        [r"'targte'", r"did you mean 'target'"],
        None,
    ),
    ("target absent", csv_with(good_rows()), {"target": "label"}, [r"'label'", r"data\.target"], None),
    ("non-numeric cell", csv_with(good_rows(4) + ["1,abc,yes"] + good_rows(10)), {}, [r"'b'", r"'abc'"], 6),
    (
        "nan cell",
        csv_with(good_rows(2) + ["nan,1,no"] + good_rows(10)),
        {},
        [r"'a'", r"is missing", r"data\.missing"],
        4,
    ),
    ("inf cell", csv_with(good_rows(3) + ["1,inf,no"] + good_rows(10)), {}, [r"'b'", r"inf"], 5),
    ("-inf cell", csv_with(good_rows(3) + ["-inf,1,no"] + good_rows(10)), {}, [r"'a'", r"inf"], 5),
    ("row too short", csv_with(good_rows(5) + ["1,yes"] + good_rows(10)), {}, [r"\b2 fields", r"\b3 columns"], 7),
    ("row too long", csv_with(good_rows(5) + ["1,2,3,yes"] + good_rows(10)), {}, [r"\b4 fields", r"\b3 columns"], 7),
    ("missing label", csv_with(good_rows(5) + ["1,2,"] + good_rows(10)), {}, [r"label"], 7),
    ("single class", csv_with(good_rows(10, labels=("yes",))), {}, [r"single class"], None),
    ("too few rows for the split", csv_with(good_rows(3)), {"val": 0.2, "test": 0.2}, [r"\b3 rows"], None),
    ("fraction rounds to zero rows", csv_with(good_rows(10)), {"val": 0.01}, [r"val_fraction", r"no rows"], None),
]


@pytest.mark.parametrize(
    "text, keywords, patterns, line", [case[1:] for case in BAD_CSV], ids=[case[0] for case in BAD_CSV]
)
def test_bad_csv_raises_data_error_naming_the_file(tmp_path, text, keywords, patterns, line):
    path = tmp_path / "d.csv" if text is None else write(tmp_path, text)
    with pytest.raises(DataError) as info:
        load_dataset(file_config(path, **keywords))
    message = str(info.value)
    assert str(path) in message, message
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    if line is not None:
        assert names_line(message, path, line), f"line {line} not in {message!r}"


def test_far_off_target_gets_no_did_you_mean(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset(file_config(write(tmp_path, csv_with(good_rows())), target="zzzzzz"))
    assert "did you mean" not in str(info.value)


# ------------------------------------------------------------------------------------------------ .npz


def test_npz_with_feature_names(tmp_path):
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.array(["spam", "ham"] * 10)
    np.savez(tmp_path / "d.npz", X=x, y=y, feature_names=np.array(["first", "second"]))
    data = load_dataset(file_config(tmp_path / "d.npz", standardize=False))
    assert data.feature_names == ("first", "second")
    assert data.classes == ("ham", "spam")
    assert all_rows(data).shape == (20, 2)
    for part in (data.train, data.val, data.test):  # even rows of x are 'spam' -> +1
        np.testing.assert_array_equal(part.y, np.where(part.x[:, 0] % 4 == 0, 1.0, -1.0))


def test_npz_without_feature_names_gets_default_names(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.random.default_rng(0).normal(size=(20, 3)), y=np.arange(20) % 2)
    data = load_dataset(file_config(tmp_path / "d.npz"))
    assert data.feature_names == ("x0", "x1", "x2")
    assert data.classes == (0, 1)


def _object_x(path):
    x = np.empty((4, 2), dtype=object)
    x[:] = 1.0
    np.savez(path, X=x, y=np.array([0, 1, 0, 1]), allow_pickle=True)


BAD_NPZ = [
    ("missing y", lambda p: np.savez(p, X=np.zeros((6, 2))), [r"\by\b", r"missing"]),
    ("mismatched lengths", lambda p: np.savez(p, X=np.zeros((6, 2)), y=np.arange(5) % 2), [r"\b6 rows", r"\(5,\)"]),
    ("X is 1-D", lambda p: np.savez(p, X=np.zeros(6), y=np.arange(6) % 2), [r"2-D"]),
    ("object array", _object_x, [r"unpickl"]),
    ("not a zip file", lambda p: p.write_text("a,b,target\n1,2,yes\n"), [r"npz"]),
    ("missing file", lambda p: None, [r"not found"]),
]


@pytest.mark.parametrize("make, patterns", [case[1:] for case in BAD_NPZ], ids=[case[0] for case in BAD_NPZ])
def test_bad_npz_raises_data_error_naming_the_file(tmp_path, make, patterns):
    path = tmp_path / "d.npz"
    make(path)
    with pytest.raises(DataError) as info:
        load_dataset(file_config(path))
    message = str(info.value)
    assert str(path) in message, message
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def test_non_zip_npz_is_not_blamed_on_pickling(tmp_path):
    path = write(tmp_path, "this is plain text, not an archive\n", name="d.npz")
    with pytest.raises(DataError) as info:
        load_dataset(file_config(path))
    message = str(info.value)
    assert "pickle" not in message.lower(), message  # the file is simply not an .npz archive


# ------------------------------------------------------------------------------------------------ data.source: file


def test_data_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    write(folder, csv_with(good_rows(20)))
    config_file = write(folder, "data:\n  source: file\n  path: d.csv\n", name="c.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = resolve_config(config_file, []).config
    assert Path(config.data.path) == (folder / "d.csv").resolve()
    data = load_dataset(config)
    assert data.classes == ("no", "yes")
    assert len(data.train) + len(data.val) + len(data.test) == 20


def test_hash_signs_are_data_not_comments(tmp_path):
    path = tmp_path / "hash.csv"
    path.write_text("target,a,b\n#pos,1,2\n#neg,3,4\nc#1,5,6\n#pos,7,8\n", encoding="utf-8")
    x, labels, _ = open_table(path, "target").read_all()
    assert x.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert list(labels.values[labels.codes]) == ["#pos", "#neg", "c#1", "#pos"]


def test_complex_features_in_npz_are_refused(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, X=np.ones((4, 2), complex), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="X must be a 2-D numeric array"):
        open_table(path)
