"""`gradfit sweep` against one `gradfit train` process per member, measured on this machine.

    python benchmarks/sweep.py                 # 24 members of configs/mlp.yaml, 2 rounds (about 10 minutes)
    python benchmarks/sweep.py --rounds 1      # a quick look
    python benchmarks/sweep.py --smoke         # 2 members of configs/logreg.yaml, round 1 only (a test runs it)

The sweep: configs/mlp.yaml (digits, 64-128-64-10 MLP, Adam with warm-up and cosine decay, 40 epochs of batch 64:
640 steps) at 6 settings (learning rate 1e-3, 3e-3, 1e-2 x l2 0, 1e-4) x 4 seeds = 24 members.

Each round, side by side on the same machine:
1. ``gradfit sweep configs/mlp.yaml --grid ... --seeds 4`` in one process: wall time of the whole command.
2. 24 ``gradfit train`` processes, one after the other, each on a member's own config.yaml from the sweep
   directory (the very config the member was trained with): wall time of each, and their sum.

Round 1 runs both with JAX's persistent compilation cache off (every process compiles); round 2 with the cache
on and already filled by a first pass (what a user re-running sweeps gets: the sequential processes then skip
compiling but still pay Python start-up, imports and data loading). The ranking of the 6 settings by mean
val_loss over the seeds is computed from both and compared. Prints JSON (and ``--json-out FILE``); the numbers
on the docs' benchmark results page come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--grid", "optimizer.learning_rate=[1e-3, 3e-3, 1e-2]", "--grid", "model.l2=[0, 1e-4]", "--seeds", "4"]
FULL = {"config": "configs/mlp.yaml", "grid": GRID, "members": 24, "settings": 6, "seeds": 4}
# --smoke: the same steps on a sweep that compiles in seconds (a small L-BFGS logistic regression, 2 members)
SMOKE = {
    "config": "configs/logreg.yaml",
    "grid": ["--grid", "model.l2=[0.001, 0.01]"],
    "members": 2,
    "settings": 2,
    "seeds": 1,
}


def gradfit(*args: str, env: dict) -> tuple[float, str]:
    """Run ``python -m gradfit ARGS`` from the repository: (wall seconds, stdout)."""
    tick = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gradfit", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"gradfit {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - tick, done.stdout


def ranking(members: list[dict]) -> list[int]:
    """The settings' indices, best first by mean val_loss over the seeds."""
    from gradfit.sweeps.plan import rank

    return [row["setting"] for row in rank(members, "val_loss")]


def one_round(folder: Path, cache: bool, sweep: dict = FULL) -> dict:
    """Time the sweep and the one-process-per-member runs of ``sweep`` side by side."""
    config, grid = sweep["config"], sweep["grid"]
    env = {**os.environ, "GRADFIT_COMPILE_CACHE": str(folder / "jax-cache") if cache else "off"}
    if cache:  # fill the cache first: the timed pass below then loads every program
        state = json.loads(gradfit("sweep", config, *grid, "-o", str(folder / "warm"), "--json", "-q", env=env)[1])
        for member in state["members"]:
            gradfit("train", str(Path(member["run_dir"]) / "config.yaml"), "-o", str(folder / "warm"), "-q", env=env)
    sweep_s, out = gradfit("sweep", config, *grid, "-o", str(folder / "sweep"), "--json", "-q", env=env)
    state = json.loads(out)
    alone, members = [], []
    for member in state["members"]:
        seconds, out = gradfit(
            "train", str(Path(member["run_dir"]) / "config.yaml"), "-o", str(folder / "alone"), "--json", "-q", env=env
        )
        summary = json.loads(out)
        alone.append(seconds)
        members.append({**member, "status": summary["status"], "final": summary["final"]})
    sequential_s = sum(alone)
    return {
        "compile_cache": "on, filled" if cache else "off",
        "sweep_wall_s": sweep_s,
        "sweep_compile_s": [g["compile_time_s"] for g in state["groups"]],
        "sequential_wall_s": sequential_s,
        "train_process_s": {"min": min(alone), "median": statistics.median(alone), "max": max(alone)},
        "speedup": sequential_s / sweep_s,
        "ranking_sweep": ranking(state["members"]),
        "ranking_sequential": ranking(members),
        "same_ranking": ranking(state["members"]) == ranking(members),
        "best_setting": state["ranking"][0]["values"],
    }


def main() -> None:
    """Run the rounds and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="1: cache off only; 2: also cache on and filled")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="2 members of a small logistic regression, round 1 only")
    args = parser.parse_args()
    sweep, count = (SMOKE, 1) if args.smoke else (FULL, args.rounds)
    with tempfile.TemporaryDirectory() as scratch:
        rounds = [one_round(Path(scratch) / str(r), cache=r == 1, sweep=sweep) for r in range(count)]
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        **{key: sweep[key] for key in ("members", "settings", "seeds", "config")},
        "rounds": rounds,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
