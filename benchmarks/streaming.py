"""Data beyond memory: streamed training and `gradfit data convert`, measured on this machine.

    python benchmarks/streaming.py                      # 1, 4 and 8 GB files, a 5 GB CSV (about 10 minutes)
    python benchmarks/streaming.py --sizes 1 --csv-gb 1 # a quick look
    python benchmarks/streaming.py --smoke              # the same steps at toy sizes, in seconds (a test runs it)

What it does, in a scratch folder (``--folder``, removed afterwards unless ``--keep``):

1. Writes converted folders (X.npy float32 with 784 features, y.npy, meta.json: what ``gradfit data convert``
   writes) of 1, 4 and 8 GB, labels from a random linear model of the features.
2. Measures the disk's sequential read rate (``dd`` with O_DIRECT, bypassing the page cache).
3. Trains the 784-512-512-10 MLP (batch 256, Adam, float32) from each folder with ``data.in_memory: false``, and
   from the 1 GB folder with ``data.in_memory: true``, each in its own process: steady-state steps/s over
   ``--steps`` steps after one warm-up group (through the real feeding path: ``Prepared.chunk_data`` and the
   compiled chunk; no evaluation), and the process's anonymous resident memory (RssAnon: heap, not the page
   cache or the memory-mapped file) at its peak, sampled every 20 ms. Each is run ``--repeats`` times; medians.
4. Writes a CSV of ``--csv-gb`` GB (100 float features, 10 classes), converts it with ``gradfit data convert``
   (wall time, peak RSS of the process), and compares throughput in MB/s with ``np.loadtxt`` and, if installed,
   ``pandas.read_csv`` on a 512 MB prefix of the same file (they hold the whole table in memory: on the full
   file they would need several times its size).

Prints a JSON report (and ``--json-out FILE``). The numbers on the docs' benchmark results page come from this script.
``--smoke`` runs every step above at toy sizes, once each: a 5 MB folder, a 784-32-32-10 MLP for 10 timed steps,
a 2 MB CSV.
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
import threading
import time
from pathlib import Path

import numpy as np

FEATURES, CLASSES, BATCH, HIDDEN = 784, 10, 256, (512, 512)
CSV_BLOCK_ROWS = 50_000  # the CSV repeats a block of this many random rows
SMOKE = {"sizes": "0.005", "csv_gb": 0.002, "steps": 10, "repeats": 1, "csv_block_rows": 2_000, "hidden": [32, 32]}


def rss_anon() -> int:
    """This process's anonymous resident memory (RssAnon) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """The peak RssAnon of this process while the block runs, sampled every 20 ms."""

    def __enter__(self):
        self.peak, self._stop = rss_anon(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_anon())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())


def write_folder(folder: Path, gigabytes: float, seed: int = 0) -> int:
    """A converted folder of about ``gigabytes`` GiB of float32 features; returns its rows."""
    from gradfit.data.convert import npy_header
    from gradfit.data.converted import CONVERTED_FORMAT

    rows = int(gigabytes * 2**30 / (FEATURES * 4))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32) / np.sqrt(FEATURES)
    with open(folder / "X.npy", "wb") as x_file, open(folder / "y.npy", "wb") as y_file:
        x_file.write(npy_header(np.float32, (rows, FEATURES)))
        y_file.write(npy_header(np.int32, (rows,)))
        for start in range(0, rows, 65536):
            x = rng.standard_normal((min(65536, rows - start), FEATURES), dtype=np.float32)
            x_file.write(x.data)
            y_file.write((x @ weights).argmax(axis=1).astype(np.int32).data)
    meta = {
        "format": CONVERTED_FORMAT,
        "version": 1,
        "rows": rows,
        "classes": list(range(CLASSES)),
        "feature_names": [f"pixel{i}" for i in range(FEATURES)],
        "target": "target",
        "dtype": "float32",
        "source": "benchmarks/streaming.py",
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return rows


def disk_read_rate(path: Path) -> float:
    """MB/s of a sequential O_DIRECT read of ``path`` (up to 2 GiB) by dd."""
    file_size = os.path.getsize(path)
    block = 16 << 20 if file_size >= 16 << 20 else 64 << 10  # --smoke's file is under one 16 MiB block
    size = min(file_size, 2 << 30) // block
    tick = time.perf_counter()
    subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", f"bs={block}", f"count={size}", "iflag=direct"],
        check=True,
        capture_output=True,
    )
    return size * block / 1e6 / (time.perf_counter() - tick)


def train_child(folder: str, in_memory: bool, steps: int, hidden: list[int]) -> dict:
    """Runs in its own process: prepare, compile, one warm-up group, then ``steps`` timed steps."""
    import jax

    from gradfit.config.load import make_config
    from gradfit.training.prepare import compile_programs, prepare

    overrides = [
        "name=stream-bench",
        "model.kind=mlp",
        f"model.hidden={hidden}",
        f"train.batch_size={BATCH}",
        "optimizer={name: adam, learning_rate: 0.001}",
        "data.source=file",
        f"data.path={folder}",
        "data.val_fraction=0.01",
        "data.test_fraction=0.01",
        f"data.in_memory={str(in_memory).lower()}",
        "train.steps=1000000",
        "train.epochs=null",
        "train.log_every=10",
    ]
    config = make_config(*overrides)
    with PeakMemory() as setup:
        tick = time.perf_counter()
        run = prepare(config)
        with run.precision.scope():
            programs = compile_programs(run)
        prepared_s = time.perf_counter() - tick
    with PeakMemory() as training, run.precision.scope():
        state, step = run.state, 0

        def advance(until: int):
            nonlocal state, step
            while step < until:
                end = min(until, run.feed.group_end(step)) if run.feed else until
                state, metrics = programs.chunk(state, run.chunk_data(step), np.int32(end - step))
                step = end
            jax.block_until_ready(state)

        advance(run.feed.steps if run.feed else 64)  # warm-up: the first group, caches, threads
        tick = time.perf_counter()
        advance(step + steps)
        seconds = time.perf_counter() - tick
    if run.feed:
        run.feed.close()
    return {
        "steps_per_s": steps / seconds,
        "setup_s": prepared_s,
        "peak_rss_anon_setup": setup.peak,
        "peak_rss_anon_training": training.peak,
        "rows": run.dataset.train.rows.shape[0] if run.feed else len(run.dataset.train),
        "group_steps": run.feed.steps if run.feed else None,
    }


def run_child(args: list[str]) -> dict:
    """Run this script's ``--child ARGS`` in a new process; its result, the last line it printed."""
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_csv(path: Path, gigabytes: float, rows: int = CSV_BLOCK_ROWS) -> int:
    """A CSV of about ``gigabytes`` GiB, a block of ``rows`` random rows (64 MB by default) repeated; its bytes."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, 100)).astype(np.float32)
    y = (x @ rng.standard_normal((100, CLASSES))).argmax(axis=1)
    lines = [",".join(f"{v:.6g}" for v in row) + f",{label}\n" for row, label in zip(x.tolist(), y.tolist())]
    block = "".join(lines).encode()
    with open(path, "wb") as handle:
        handle.write((",".join(f"f{i}" for i in range(100)) + ",target\n").encode())
        for _ in range(max(1, int(gigabytes * 2**30 // len(block)))):
            handle.write(block)
    return os.path.getsize(path)


def timed_process(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of a command, from wait4's resource usage."""
    tick = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - tick
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{command} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


def peer_child(kind: str, path: str, limit: int) -> dict:
    """np.loadtxt or pandas.read_csv on the first ``limit`` bytes of a CSV (whole lines)."""
    with open(path, "rb") as handle:
        data = handle.read(limit)
    data = data[: data.rfind(b"\n") + 1]
    prefix = Path(path).with_suffix(".prefix.csv")
    prefix.write_bytes(data)
    tick = time.perf_counter()
    if kind == "loadtxt":
        np.loadtxt(prefix, delimiter=",", skiprows=1)
    else:
        import pandas

        pandas.read_csv(prefix)
    seconds = time.perf_counter() - tick
    import resource

    return {
        "mb_per_s": len(data) / 1e6 / seconds,
        "bytes": len(data),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def parse_args() -> argparse.Namespace:
    """The command line's options; ``--smoke`` replaces the sizes with toy ones."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,4,8", help="converted folder sizes in GiB")
    parser.add_argument("--csv-gb", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default="/tmp/gradfit-stream-bench")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json-out")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, once each: seconds (overrides the sizes)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.csv_block_rows, args.hidden = CSV_BLOCK_ROWS, list(HIDDEN)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    return args


def measure_training(
    root: Path, sizes: list[float], steps: int, repeats: int, hidden: list[int]
) -> tuple[float, list[dict]]:
    """Writes the folders, then trains from each: (the disk's read rate in MB/s, one row per case)."""
    folders = {}
    for size in sizes:
        folders[size] = root / f"data-{size:g}gb"
        write_folder(folders[size], size)
    disk_rate = disk_read_rate(folders[max(sizes)] / "X.npy")
    rows = []
    for size, in_memory in [(sizes[0], True)] + [(size, False) for size in sizes]:
        results = [
            run_child(["train", str(folders[size]), str(in_memory).lower(), str(steps), json.dumps(hidden)])
            for _ in range(repeats)
        ]
        rates = [r["steps_per_s"] for r in results]
        rows.append(
            {
                "gigabytes": size,
                "in_memory": in_memory,
                "rows": results[0]["rows"],
                "steps_per_s_median": statistics.median(rates),
                "steps_per_s_min": min(rates),
                "steps_per_s_max": max(rates),
                "peak_rss_anon_training_gib": max(r["peak_rss_anon_training"] for r in results) / 2**30,
                "peak_rss_anon_setup_gib": max(r["peak_rss_anon_setup"] for r in results) / 2**30,
                "setup_s_median": statistics.median(r["setup_s"] for r in results),
                "group_steps": results[0]["group_steps"],
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    memory = rows[0]["steps_per_s_median"]
    for row in rows:
        row["vs_in_memory"] = row["steps_per_s_median"] / memory
    return disk_rate, rows


def measure_convert(root: Path, gigabytes: float, block_rows: int) -> dict:
    """``gradfit data convert`` on a CSV of ``gigabytes`` GiB, and its peers on a 512 MB prefix."""
    csv_path = root / "table.csv"
    size = write_csv(csv_path, gigabytes, block_rows)
    seconds, peak = timed_process(
        [sys.executable, "-m", "gradfit", "data", "convert", str(csv_path), str(root / "table"), "--force", "-q"]
    )
    convert = {"csv_bytes": size, "seconds": seconds, "mb_per_s": size / 1e6 / seconds, "peak_rss_gib": peak / 2**30}
    limit = min(size, 512 << 20)
    for peer in ("loadtxt", "pandas"):
        try:
            convert[peer] = run_child([peer, str(csv_path), str(limit)])
        except SystemExit as exc:
            convert[peer] = f"not measured: {str(exc).splitlines()[-1][:200]}"
    prefix = csv_path.with_suffix(".prefix.csv")
    seconds, peak = timed_process(
        [sys.executable, "-m", "gradfit", "data", "convert", str(prefix), str(root / "prefix"), "--force", "-q"]
    )
    convert["gradfit_on_prefix"] = {"mb_per_s": os.path.getsize(prefix) / 1e6 / seconds, "peak_rss_gib": peak / 2**30}
    return convert


def main() -> None:
    """Measure and print the JSON report (or, with ``--child``, one child's measurement)."""
    args = parse_args()
    if args.child:
        kind, *rest = args.child
        result = (
            train_child(rest[0], rest[1] == "true", int(rest[2]), json.loads(rest[3]))
            if kind == "train"
            else peer_child(kind, rest[0], int(rest[1]))
        )
        print(json.dumps(result))
        return

    root = Path(args.folder)
    root.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_before": os.getloadavg(),
        "training": [],
        "convert": {},
    }
    try:
        sizes = [float(s) for s in args.sizes.split(",")]
        report["disk_read_mb_per_s"], report["training"] = measure_training(
            root, sizes, args.steps, args.repeats, args.hidden
        )
        if args.csv_gb > 0:
            report["convert"] = measure_convert(root, args.csv_gb, args.csv_block_rows)
    finally:
        report["load_after"] = os.getloadavg()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")


if __name__ == "__main__":
    main()
