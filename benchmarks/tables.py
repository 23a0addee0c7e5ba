"""Reading real tables: gradfit's pyarrow reader against pyarrow itself, a CSV against its .npz, CSV against Parquet.

    python benchmarks/tables.py            # a 200,000 x 50 float CSV, 5 paired rounds (about 2 minutes)
    python benchmarks/tables.py --smoke    # the same steps on a 2,000 x 10 CSV, 1 round (a test runs it)

What it does, in a scratch folder (removed afterwards):

1. Writes a CSV of ``--rows`` x ``--features`` random floats (17 significant digits) and a 0/1 label, and the same
   table as an .npz (X, y, feature_names) and as a Parquet file.
2. Times whole processes, alternating the two of each pair in every round, and reports the median and range of
   each and the median of the per-round ratios:
   - ``gradfit data describe big.csv --json`` against a Python process that reads the file with
     ``pyarrow.csv.read_csv`` and converts it to one NumPy matrix (the target: within 1.5x);
   - ``gradfit train`` of a logistic regression (Adam, minibatches of 256, 200 steps, float32) on the CSV against
     the same command on the .npz (the target: within 1.5x).
3. Trains on the CSV and on the Parquet file and reports whether every parameter array is bit-identical.

Prints a JSON report (and ``--json-out FILE``). The numbers on the docs' benchmark results page come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

READ_WITH_PYARROW = (
    "import sys, numpy as np, pyarrow.csv as c; t = c.read_csv(sys.argv[1]); "
    "x = np.column_stack([col.to_numpy(zero_copy_only=False) for col in t.columns])"
)
CONFIG = """\
name: tables
seed: 0
data:
  source: file
  path: {path}
  target: label
model:
  kind: logistic
  l2: 0.001
optimizer:
  name: adam
  learning_rate: 0.01
train:
  steps: {steps}
  batch_size: 256
  log_every: 50
runtime:
  precision: float32
"""


def write_tables(folder: Path, rows: int, features: int) -> dict[str, Path]:
    """The same table as CSV, .npz and Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features))
    y = (x @ rng.standard_normal(features) + rng.standard_normal(rows) > 0).astype(np.int64)
    names = [f"f{j}" for j in range(features)]
    paths = {"csv": folder / "big.csv", "npz": folder / "big.npz", "parquet": folder / "big.parquet"}
    with open(paths["csv"], "w") as f:
        f.write(",".join([*names, "label"]) + "\n")
        np.savetxt(f, np.column_stack([x, y]), delimiter=",", fmt=["%.17g"] * features + ["%d"])
    np.savez(paths["npz"], X=x, y=y, feature_names=np.array(names))
    table = pa.table({**{n: x[:, j] for j, n in enumerate(names)}, "label": y})
    pq.write_table(table, paths["parquet"])
    return paths


def run(command: list[str], cwd: Path) -> float:
    """Wall seconds of a whole process, which must succeed."""
    tick = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def paired(first: list[str], second: list[str], rounds: int, cwd: Path) -> dict:
    """Both commands ``rounds`` times, alternating which goes first; medians, ranges and the median ratio."""
    times: dict[str, list[float]] = {"first": [], "second": []}
    for i in range(rounds):
        order = [("first", first), ("second", second)]
        for name, command in order if i % 2 == 0 else order[::-1]:
            times[name].append(run(command, cwd))
    ratios = [a / b for a, b in zip(times["first"], times["second"])]
    spread = {name: {"median": statistics.median(t), "min": min(t), "max": max(t)} for name, t in times.items()}
    return {
        "first_s": spread["first"],
        "second_s": spread["second"],
        "ratio_median": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }


def trained_params(config: Path, cwd: Path, out: Path) -> dict[str, np.ndarray]:
    run(["gradfit", "train", str(config), "--out-dir", str(out), "-q"], cwd)
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    with np.load(folder / "params.npz") as params:
        return {k: params[k] for k in params.files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="a 2,000 x 10 table, one round")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.features, args.rounds, args.steps = 2_000, 10, 1, 20
    folder = Path(tempfile.mkdtemp(prefix="gradfit-tables-"))
    try:
        paths = write_tables(folder, args.rows, args.features)
        configs = {}
        for kind, path in paths.items():
            configs[kind] = folder / f"{kind}.yaml"
            configs[kind].write_text(CONFIG.format(path=path.name, steps=args.steps))
        gradfit = shutil.which("gradfit") or "gradfit"
        describe = paired(
            [gradfit, "data", "describe", str(paths["csv"]), "--target", "label", "--json"],
            [sys.executable, "-c", READ_WITH_PYARROW, str(paths["csv"])],
            args.rounds,
            folder,
        )
        train = paired(
            [gradfit, "train", str(configs["csv"]), "--out-dir", str(folder / "runs"), "-q"],
            [gradfit, "train", str(configs["npz"]), "--out-dir", str(folder / "runs"), "-q"],
            args.rounds,
            folder,
        )
        from_csv = trained_params(configs["csv"], folder, folder / "csv-run")
        from_parquet = trained_params(configs["parquet"], folder, folder / "parquet-run")
        identical = from_csv.keys() == from_parquet.keys() and all(
            np.array_equal(from_csv[k], from_parquet[k]) for k in from_csv
        )
        report = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load_average_before": os.getloadavg()[0],
            "table": {"rows": args.rows, "features": args.features, "csv_mb": paths["csv"].stat().st_size / 1e6},
            "rounds": args.rounds,
            "describe_vs_pyarrow_read_csv": describe,
            "train_csv_vs_npz": train,
            "csv_and_parquet_params_identical": identical,
            "targets": {
                "describe within 1.5x of pyarrow.csv.read_csv": describe["ratio_median"] <= 1.5,
                "train on CSV within 1.5x of train on .npz": train["ratio_median"] <= 1.5,
                "CSV and Parquet give bit-identical parameters": identical,
            },
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
