"""JAX's persistent compilation cache as gradfit uses it: where it lives, turning it off, and a rerun that hits it.

The cache is a process-wide JAX setting, so the end-to-end test runs `gradfit train` in fresh processes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import CONFIGS, ROOT
from rich.console import Console

from gradfit.cli.render.progress import TrainProgress
from gradfit.runtime import compile_cache


def test_the_folder_comes_from_the_environment(tmp_path):
    assert compile_cache.directory({"GRADFIT_COMPILE_CACHE": str(tmp_path)}) == tmp_path
    assert compile_cache.directory({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "gradfit" / "jax"
    assert compile_cache.directory({}) == Path.home() / ".cache" / "gradfit" / "jax"
    for off in ("off", "0", "false", "no", ""):
        assert compile_cache.directory({"GRADFIT_COMPILE_CACHE": off}) is None


def test_an_unwritable_folder_is_reported_not_fatal(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    problem = compile_cache.enable(blocker / "jax")
    assert problem is not None and "compile cache off" in problem and "GRADFIT_COMPILE_CACHE" in problem


def _train(cache: str, *extra: str, out: Path) -> dict:
    env = {**os.environ, "GRADFIT_COMPILE_CACHE": cache}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradfit",
            "train",
            str(CONFIGS / "logreg.yaml"),
            "-q",
            "--json",
            "--out-dir",
            str(out),
            "--set",
            "train.steps=3",
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_rerun_loads_its_programs_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = _train(str(cache), out=tmp_path / "runs")
    second = _train(str(cache), out=tmp_path / "runs")
    assert first["compile_cache"] == "miss" and second["compile_cache"] == "hit"
    assert any(cache.iterdir())
    assert second["objective"] == first["objective"]  # the same program, the same bits
    # GRADFIT_COMPILE_CACHE=off is compile_cache.directory's answer None, tested above: no third process needed;
    # --no-compile-cache compiles from scratch whatever the program: plain sgd compiles sooner than L-BFGS
    assert (
        _train(str(cache), "--no-compile-cache", "--set", "optimizer.name=sgd", out=tmp_path / "runs")["compile_cache"]
        == "off"
    )


def test_a_terminal_sees_what_is_being_prepared_from_the_first_second():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    progress = TrainProgress(console)
    progress.on_stage("starting JAX")
    assert progress.status is not None
    progress.on_stage("compiling")
    progress.on_start(
        {
            "total_steps": 3,
            "model": "logistic",
            "dataset": "breast_cancer",
            "num_params": 31,
            "device": "cpu:0 (cpu)",
            "trace_time_s": 0.2,
            "compile_time_s": 0.1,
            "compile_cache": "hit",
            "log_every": 1,
            "eval_every": 1,
            "run_dir": "runs/x",
        }
    )
    assert progress.status is None  # the spinner gives way to the progress bar
    progress.close()
    assert "from the compile cache" in console.file.getvalue()
    quiet = TrainProgress(Console(file=io.StringIO(), force_terminal=False))
    quiet.on_stage("compiling")  # not a terminal: no spinner in a log file
    assert quiet.status is None
