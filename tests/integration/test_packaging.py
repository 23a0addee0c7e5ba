"""A regular (non-editable) install carries the built-in datasets and the configs work from any folder."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{result.stderr[-2000:]}")
    (path,) = out.glob("gradfit-*.whl")
    return path


def test_wheel_contains_the_datasets(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "gradfit/_data/breast_cancer.csv" in names and "gradfit/_data/digits.csv" in names


def test_installed_package_loads_builtin_data_from_any_directory(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import gradfit.data.dataset as d, gradfit.config.load as c;"
        "ds = d.load_dataset(c.resolve_config(None, ['data.source=digits', 'model.kind=mlp']).config);"
        "print(d.builtin_path('digits').parent.name, ds.n_classes, len(ds.train) + len(ds.val) + len(ds.test))"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["_data", "10", "1797"]
