"""The scikit-learn estimator's ``fit`` against ``gradfit train`` of the same settings, measured on this machine.

    python benchmarks/estimator.py             # 9 rounds of each on breast_cancer (under a minute)
    python benchmarks/estimator.py --smoke     # 2 rounds (a test runs it)

Both train configs/logreg.yaml (L-BFGS, 100 steps at most) on every row of the built-in breast_cancer table
(``data.val_fraction`` and ``data.test_fraction`` 0, as the estimator trains): ``gradfit.fit(config)`` is what
``gradfit train`` runs after its imports (reading the CSV, writing the run directory);
``GradfitClassifier(config=..., validation_fraction=0).fit(X, y)`` takes the same rows as a DataFrame already in
memory and writes nothing: timed as the first fit of its shape in the process (``estimator``: it traces its
programs, as train does) and as a refit (``estimator_refit``: it reuses the programs of the fit before,
``gradfit.training.reuse``). All run in this one process, alternating, with JAX's persistent compilation cache on
and filled by an untimed first fit of each, as a user's second call would find it. scikit-learn's
``LogisticRegression`` on the same rows is timed beside them for scale.
Prints JSON with medians and ranges; the target is estimator / train <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "logreg.yaml"
EVERY_ROW = {"data.val_fraction": 0, "data.test_fraction": 0}


def timed(call) -> float:
    tick = time.perf_counter()
    call()
    return time.perf_counter() - tick


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--smoke", action="store_true", help="2 rounds")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    rounds = 2 if args.smoke else args.rounds

    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    import gradfit
    from gradfit.runtime import compile_cache
    from gradfit.sklearn import GradfitClassifier
    from gradfit.training import reuse

    table = pd.read_csv(ROOT / "data" / "breast_cancer.csv")
    X, y = table.drop(columns="target"), table["target"]
    scaled = StandardScaler().fit_transform(X)
    with tempfile.TemporaryDirectory() as scratch:
        compile_cache.enable(Path(scratch) / "jax-cache")
        runs = Path(scratch) / "runs"
        train = lambda: gradfit.fit(CONFIG, EVERY_ROW, out_dir=runs, progress=False)  # noqa: E731
        refit = lambda: GradfitClassifier(config=str(CONFIG), validation_fraction=0).fit(X, y)  # noqa: E731
        estimator = lambda: (reuse.forget(), refit())  # noqa: E731  (the first fit of its shape)
        reference = lambda: LogisticRegression(C=1 / (0.001 * len(y)), max_iter=1000).fit(scaled, y)  # noqa: E731
        train(), estimator(), reference()  # fill the cache; first-call costs are not what is compared
        times: dict[str, list[float]] = {"train": [], "estimator": [], "estimator_refit": [], "sklearn": []}
        for _ in range(rounds):
            times["train"].append(timed(train))
            times["estimator"].append(timed(estimator))
            times["estimator_refit"].append(timed(refit))
            times["sklearn"].append(timed(reference))
    ratios = [e / t for e, t in zip(times["estimator"], times["train"])]
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "config": "configs/logreg.yaml on every row of breast_cancer (569 x 30)",
        "rounds": rounds,
        "seconds": {name: spread(values) for name, values in times.items()},
        "estimator_over_train": {**spread(ratios), "target": 1.5},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
