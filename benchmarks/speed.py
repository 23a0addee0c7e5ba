"""gradfit's speed targets, measured side by side in one run on this machine (issue 10).

    python benchmarks/speed.py             # about 3 minutes on 2 CPU cores
    python benchmarks/speed.py --quick     # fewer rounds, no `gradfit bench --quick` timing
    python benchmarks/speed.py --smoke     # the same code path at toy sizes, in seconds (a test runs it)
    python benchmarks/speed.py --json results.json

Every figure is the median of several rounds, with the spread (min-max) shown; competitors are interleaved
round by round so a noisy neighbour hurts them alike. gradfit runs with its default settings: no log_every or
eval_every overrides. Needs the test extras (scikit-learn) and, for its column, PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradfit import api
from gradfit.bench.peers import minimal_loop
from gradfit.config.load import make_config, to_yaml
from gradfit.data.dataset import load_dataset
from gradfit.training.prepare import prepare

ROOT = Path(__file__).resolve().parent.parent

# the two MLP workloads of issue 10: synthetic data, 10 classes, val 20%, no test split; Adam; float32
WORKLOADS = {
    "MLP 784-512-512-10, batch 256, 48k training rows": dict(
        features=784, hidden=[512, 512], batch=256, rows=60_000, epochs=3
    ),
    "MLP 64-64-64-10, batch 128, 16k training rows": dict(
        features=64, hidden=[64, 64], batch=128, rows=20_000, epochs=40
    ),
}
# --smoke: one workload of the same shape, small enough to train in a second
SMOKE_WORKLOADS = {
    "MLP 32-32-32-10, batch 32, 800 training rows": dict(features=32, hidden=[32, 32], batch=32, rows=1000, epochs=2),
}
# the logistic regression against scikit-learn: rows x features, float64
LOGREG_SIZE = dict(rows=200_000, features=100)
SMOKE_LOGREG_SIZE = dict(rows=2_000, features=10)
GRADFIT = [sys.executable, "-m", "gradfit"]


def mlp_config(w: dict, name: str = "speed"):
    """The config of one MLP workload: synthetic data, Adam, gradfit's defaults otherwise."""
    return make_config(
        f"name={name}",
        "data.source=synthetic",
        f"data.synthetic.n_samples={w['rows']}",
        f"data.synthetic.n_features={w['features']}",
        "data.synthetic.n_classes=10",
        "data.val_fraction=0.2",
        "data.test_fraction=0",
        "model.kind=mlp",
        f"model.hidden={w['hidden']}",
        "optimizer.name=adam",
        f"train.batch_size={w['batch']}",
        f"train.epochs={w['epochs']}",
        "runtime.device=cpu",
    )


def summary_of(rounds: list[float]) -> dict:
    """Median, min and max of a measurement's rounds (and the rounds)."""
    return {"median": statistics.median(rounds), "min": min(rounds), "max": max(rounds), "rounds": rounds}


# ---------------------------------------------------------------------------------------- MLP workloads


def gradfit_steps_per_s(config, out: Path) -> tuple[float, float, dict]:
    """A real run with default log points and evaluations: (steps_per_s as gradfit reports it, training steps
    and log points only; steps / (training + evaluation time); what the run did)."""
    summary = api.fit(config, out_dir=out)
    assert summary.steps_per_s is not None and summary.steps is not None, summary.stop_reason
    seconds = summary.train_time_s + summary.eval_time_s
    return (
        summary.steps_per_s,
        summary.steps / seconds,
        {
            "eval_share": summary.eval_time_s / seconds,
            "evaluations": summary.evaluations,
            "eval_every": summary.eval_every,
            "log_every": summary.log_every,
            "val_accuracy": summary.final["val_accuracy"],
        },
    )


def jax_loops(config) -> dict:
    """Steps/s of three hand-written jit + lax.scan loops over the same steps: the ceiling gradfit should approach
    (same shuffle as gradfit), the textbook one (jax.random.permutation per epoch) and a no-shuffle bound. The
    data are jit arguments, as in gradfit; each loop is compiled before it is timed."""
    run = prepare(config)
    steps, batch, n = run.plan.total_steps, run.plan.batch_size, len(run.dataset.train)
    per_epoch = run.plan.steps_per_epoch
    epochs = steps // per_epoch
    optimizer = optax.adam(config.optimizer.learning_rate)
    args = (run.state.params, run.data["x"], run.data["y"], run.data["shuffle_key"])

    def adam_step(carry, xb, yb):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(run.objective)(params, xb, yb)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def no_shuffle(params, x, y, key):
        def step(carry, index):
            start = (index % per_epoch) * batch
            return adam_step(
                carry, jax.lax.dynamic_slice_in_dim(x, start, batch), jax.lax.dynamic_slice_in_dim(y, start, batch)
            )

        return jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(steps))[1][-1]

    @jax.jit
    def textbook(params, x, y, key):  # a fresh jax.random.permutation (a sort) per epoch, then its batches
        def epoch(carry, e):
            order = jax.random.permutation(jax.random.fold_in(key, e), n)[: per_epoch * batch]
            return jax.lax.scan(lambda c, rows: adam_step(c, x[rows], y[rows]), carry, order.reshape(per_epoch, batch))

        return jax.lax.scan(epoch, (params, optimizer.init(params)), jnp.arange(epochs))[1][-1, -1]

    out = {}
    loops = {
        "minimal": (minimal_loop(run, steps), steps),
        "no_shuffle": (lambda c=no_shuffle.lower(*args).compile(): c(*args), steps),
        "textbook": (lambda c=textbook.lower(*args).compile(): c(*args), epochs * per_epoch),
    }
    for name, (fn, count) in loops.items():
        tick = time.perf_counter()
        jax.block_until_ready(fn())
        out[name] = count / (time.perf_counter() - tick)
    return out


def torch_steps_per_s(config) -> float | None:
    """PyTorch eager: the same MLP, loss, Adam and batch; a torch.randperm per epoch, data in memory."""
    try:
        import torch
    except ImportError:
        return None
    run = prepare(config)
    x = torch.tensor(np.asarray(run.dataset.train.x, np.float32))
    y = torch.tensor(np.asarray(run.dataset.train.y, np.int64))
    sizes = [x.shape[1], *config.model.hidden, run.dataset.n_classes]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    net = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.optimizer.learning_rate)
    batch, per_epoch = run.plan.batch_size, run.plan.steps_per_epoch

    def train(count: int):
        done = 0
        while done < count:
            order = torch.randperm(len(y))
            for i in range(min(per_epoch, count - done)):
                rows = order[i * batch : (i + 1) * batch]
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
                optimizer.step()
            done += per_epoch

    train(per_epoch)  # warm-up
    count = min(run.plan.total_steps, 2000)
    tick = time.perf_counter()
    train(count)
    return count / (time.perf_counter() - tick)


def mlp_workloads(workloads: dict, rounds: int, scratch: Path) -> dict:
    """Steps/s of gradfit and its competitors on each workload, interleaved round by round."""
    results = {}
    for title, w in workloads.items():
        config = mlp_config(w)
        steps = {
            "gradfit": [],
            "gradfit_with_evaluations": [],
            "minimal": [],
            "textbook": [],
            "no_shuffle": [],
            "torch": [],
        }
        details = {}
        for r in range(rounds):
            rate, all_in, details = gradfit_steps_per_s(config, scratch / f"mlp-{r}")
            steps["gradfit"].append(rate)
            steps["gradfit_with_evaluations"].append(all_in)
            for name, value in jax_loops(config).items():
                steps[name].append(value)
            torch_rate = torch_steps_per_s(config)
            if torch_rate is not None:
                steps["torch"].append(torch_rate)
            print(
                f"  {title}: round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in steps.items() if v),
                flush=True,
            )
        results[title] = {"steps_per_s": {k: summary_of(v) for k, v in steps.items() if v}, "gradfit_run": details}
    return results


# ---------------------------------------------------------------------------------------- whole commands


def timed_command(argv: list[str]) -> tuple[float, dict]:
    """Wall seconds of a gradfit command run from the repository, and the JSON it printed (if any)."""
    tick = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
    return wall, json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


def warm_logreg(rounds: int, scratch: Path) -> dict:
    """`gradfit train configs/logreg.yaml` with the compile cache warm: wall time, trace and compile times."""
    env_cache = scratch / "jax-cache"
    os.environ["GRADFIT_COMPILE_CACHE"] = str(env_cache)
    argv = [*GRADFIT, "train", "configs/logreg.yaml", "-q", "--json", "-o", str(scratch / "logreg")]
    cold, first = timed_command(argv)
    walls, compiles, traces = [], [], []
    for _ in range(rounds):
        wall, summary = timed_command(argv)
        walls.append(wall)
        compiles.append(summary["compile_time_s"])
        traces.append(summary["trace_time_s"])
        assert summary["compile_cache"] == "hit", summary["compile_cache"]
    return {
        "cold_wall_s": cold,
        "cold_compile_time_s": first["compile_time_s"],
        "wall_s": summary_of(walls),
        "compile_time_s": summary_of(compiles),
        "trace_time_s": summary_of(traces),
    }


def logreg_vs_sklearn(size: dict, rounds: int, scratch: Path) -> dict:
    """Logistic regression (200k x 100 in full), float64, L-BFGS to scikit-learn's optimum."""
    from sklearn.linear_model import LogisticRegression

    l2 = 1e-4
    config = make_config(
        "name=logreg200k",
        "data.source=synthetic",
        f"data.synthetic.n_samples={size['rows']}",
        f"data.synthetic.n_features={size['features']}",
        "data.val_fraction=0",
        "data.test_fraction=0",
        f"model.l2={l2}",
        "optimizer.name=lbfgs",
        "train.steps=500",
        "train.tol=1e-9",
        "runtime.precision=float64",
        "runtime.device=cpu",
    )
    path = scratch / "logreg200k.yaml"
    path.write_text(to_yaml(config), encoding="utf-8")
    data = load_dataset(config)
    x, y = data.train.x.astype(np.float64), data.train.y

    def objective(w, b) -> float:
        return float(np.mean(np.logaddexp(0, -y * (x @ w + b))) + l2 / 2 * w @ w)

    argv = [*GRADFIT, "train", str(path), "-q", "--json", "-o", str(scratch / "logreg200k")]
    timed_command(argv)  # fills the compile cache
    gradfit_wall, gradfit_train, sklearn_fit = [], [], []
    for _ in range(rounds):
        wall, summary = timed_command(argv)
        gradfit_wall.append(wall)
        gradfit_train.append(summary["train_time_s"] + summary["eval_time_s"])
        tick = time.perf_counter()
        clf = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
        sklearn_fit.append(time.perf_counter() - tick)
    ours, theirs = summary["objective"], objective(clf.coef_[0], clf.intercept_[0])
    return {
        "title": f"logistic {size['rows'] // 1000}k x {size['features']}",
        "gradfit_objective": ours,
        "sklearn_objective": theirs,
        "relative_gap": abs(ours - theirs) / theirs,
        "gradfit_steps": summary["steps"],
        "sklearn_iterations": int(clf.n_iter_[0]),
        "gradfit_train_s": summary_of(gradfit_train),
        "gradfit_wall_s": summary_of(gradfit_wall),
        "sklearn_fit_s": summary_of(sklearn_fit),
    }


def bench_quick() -> dict:
    """Wall seconds of ``gradfit bench --quick`` on the CPU."""
    wall, _ = timed_command([*GRADFIT, "bench", "--quick", "--device", "cpu"])
    return {"wall_s": wall}


# ---------------------------------------------------------------------------------------- report


def targets(results: dict) -> list[tuple[str, str, bool]]:
    """Each speed target as (what, measured, met?)."""
    out = []
    for title, w in results["mlp"].items():
        s = {k: v["median"] for k, v in w["steps_per_s"].items()}
        out.append(
            (
                f"{title}: gradfit >= 0.85x the minimal loop",
                f"{s['gradfit'] / s['minimal']:.2f}x",
                s["gradfit"] >= 0.85 * s["minimal"],
            )
        )
        if "torch" in s:
            out.append(
                (
                    f"{title}: gradfit >= 2.5x PyTorch eager",
                    f"{s['gradfit'] / s['torch']:.2f}x",
                    s["gradfit"] >= 2.5 * s["torch"],
                )
            )
    warm = results["warm_logreg"]
    out.append(
        (
            "gradfit train configs/logreg.yaml, warm: wall <= 2.0 s",
            f"{warm['wall_s']['median']:.2f} s",
            warm["wall_s"]["median"] <= 2.0,
        )
    )
    out.append(
        (
            "... and compile time <= 0.1 s",
            f"{warm['compile_time_s']['median']:.3f} s",
            warm["compile_time_s"]["median"] <= 0.1,
        )
    )
    big = results["logreg_200k"]
    out.append(
        (
            f"{big['title']} f64 L-BFGS: same optimum as scikit-learn (1e-10)",
            f"{big['relative_gap']:.1e}",
            big["relative_gap"] <= 1e-10,
        )
    )
    train_ratio = big["sklearn_fit_s"]["median"] / big["gradfit_train_s"]["median"]
    out.append(("... gradfit training >= 2x faster than scikit-learn's fit", f"{train_ratio:.1f}x", train_ratio >= 2))
    wall_ratio = big["gradfit_wall_s"]["median"] / big["sklearn_fit_s"]["median"]
    out.append(("... gradfit's whole command <= 2x scikit-learn's fit", f"{wall_ratio:.2f}x", wall_ratio <= 2))
    if "bench_quick" in results:
        out.append(
            (
                "gradfit bench --quick <= 45 s",
                f"{results['bench_quick']['wall_s']:.0f} s",
                results["bench_quick"]["wall_s"] <= 45,
            )
        )
    return out


def main() -> None:
    """Measure, print the report and write the samples where ``--json`` says."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds each, no bench --quick timing")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, 1 round, no bench --quick: seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args()
    rounds = 1 if args.smoke else 2 if args.quick else args.rounds
    workloads, logreg_size = (SMOKE_WORKLOADS, SMOKE_LOGREG_SIZE) if args.smoke else (WORKLOADS, LOGREG_SIZE)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        results = {
            "machine": {
                "cpu_cores": os.cpu_count(),
                "jax": jax.__version__,
                "python": sys.version.split()[0],
                "load_average_before": os.getloadavg(),
            }
        }
        print("MLP workloads", flush=True)
        results["mlp"] = mlp_workloads(workloads, rounds, scratch)
        print("warm gradfit train configs/logreg.yaml", flush=True)
        results["warm_logreg"] = warm_logreg(rounds, scratch)
        print(
            f"logistic regression {logreg_size['rows'] // 1000}k x {logreg_size['features']} against scikit-learn",
            flush=True,
        )
        results["logreg_200k"] = logreg_vs_sklearn(logreg_size, rounds, scratch)
        if not (args.quick or args.smoke):
            print("gradfit bench --quick", flush=True)
            results["bench_quick"] = bench_quick()
    results["machine"]["load_average_after"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def report(results: dict) -> str:
    """The results as printed: the steps/s table, the other measurements and the targets' table."""
    lines = [
        "",
        "| workload | PyTorch eager | textbook JAX loop | minimal JAX loop (ceiling) | no-shuffle bound | "
        "gradfit, defaults | (with evaluations) | gradfit / minimal | gradfit / PyTorch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for title, w in results["mlp"].items():
        s = w["steps_per_s"]
        cell = lambda k: f"{s[k]['median']:,.0f} ({s[k]['min']:,.0f}-{s[k]['max']:,.0f})" if k in s else "-"  # noqa
        ratio = lambda a, b: f"{s[a]['median'] / s[b]['median']:.2f}x" if a in s and b in s else "-"  # noqa
        lines.append(
            f"| {title} | {cell('torch')} | {cell('textbook')} | {cell('minimal')} | {cell('no_shuffle')} "
            f"| {cell('gradfit')} | {cell('gradfit_with_evaluations')} | {ratio('gradfit', 'minimal')} "
            f"| {ratio('gradfit', 'torch')} |"
        )
    lines.append("")
    for title, w in results["mlp"].items():
        run = w["gradfit_run"]
        lines.append(
            f"{title}: gradfit logs every {run['log_every']} steps, evaluates every {run['eval_every']} "
            f"({run['evaluations']} evaluations, {run['eval_share']:.1%} of its time)"
        )
    warm, big = results["warm_logreg"], results["logreg_200k"]
    lines += [
        "",
        f"warm `gradfit train configs/logreg.yaml`: wall {warm['wall_s']['median']:.2f} s "
        f"({warm['wall_s']['min']:.2f}-{warm['wall_s']['max']:.2f}), "
        f"trace {warm['trace_time_s']['median']:.3f} s, "
        f"compile {warm['compile_time_s']['median']:.3f} s (cold: wall {warm['cold_wall_s']:.2f} s, compile "
        f"{warm['cold_compile_time_s']:.2f} s)",
        f"{big['title']} float64: objectives {big['gradfit_objective']:.12g} "
        f"(gradfit, {big['gradfit_steps']} L-BFGS steps) vs {big['sklearn_objective']:.12g} "
        f"(scikit-learn, {big['sklearn_iterations']} iterations); "
        f"gradfit training {big['gradfit_train_s']['median']:.2f} s, whole command "
        f"{big['gradfit_wall_s']['median']:.2f} s, scikit-learn fit {big['sklearn_fit_s']['median']:.2f} s",
    ]
    if "bench_quick" in results:
        lines.append(f"gradfit bench --quick: {results['bench_quick']['wall_s']:.0f} s")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else 'NO'} |" for name, value, ok in targets(results)]
    m = results["machine"]
    lines.append(
        f"\n{m['cpu_cores']} cores, jax {m['jax']}, Python {m['python']}; load average "
        f"{m['load_average_before'][0]:.2f} before, {m['load_average_after'][0]:.2f} after; "
        f"{results['seconds']:.0f} s in all"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
