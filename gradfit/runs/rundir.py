"""Run directories: ``RunDir`` owns every file of a run, ``Summary`` is its summary.json. No jax here.

Layout of ``<out_dir>/<name>-<YYYYmmdd-HHMMSS>[-n]/``:
    config.yaml         fully resolved config (loadable by `gradfit train`), versions and device as comments
    preprocessing.json  feature names, label mapping, standardization mean/std
    metrics.jsonl       one JSON object per log point (the source of truth; metrics.csv and TensorBoard event
                        files, when train.loggers asks for them, are made from the same records)
    params.npz          final parameters (the best ones under early stopping), keyed by pytree path; no pickle
    summary.json        outcome, timings and final metrics (``Summary``)
    checkpoints/        step-NNNNNNNN.npz files to resume from (see gradfit.runs.checkpoints)
Nothing existing is ever overwritten: every write is atomic or an append.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import importlib.metadata
import json
import math
import os
import shutil
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pydantic
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12

from gradfit import files
from gradfit.abort import removed_on_abort
from gradfit.config.load import GradfitConfig, resolve_config
from gradfit.errors import RunDirError
from gradfit.files import write_atomic
from gradfit.runs import lock
from gradfit.runs.loggers import CSV_NAME, EVENTS_GLOB, MetricLoggers
from gradfit.runs.metrics import append_jsonl, iter_metrics, record_keys, truncate_metrics
from gradfit.version import __version__


def create_run_dir(parent: str | Path, name: str, now: _dt.datetime | None = None) -> Path:
    """Make a fresh directory ``parent/name-timestamp``, adding ``-2``, ``-3``... if that exists.

    ``os.mkdir`` is atomic, so two runs started in the same second still get distinct directories.
    """
    parent = Path(parent)
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create output directory {parent}: {exc.strerror}") from None
    for n in range(1, 10_000):
        candidate = parent / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {candidate}: {exc.strerror}") from None
    raise RunDirError(f"too many runs named {name}-{stamp} in {parent}")


def check_run_dir(path: Path) -> Path:
    """``path`` if it is a run directory made by gradfit train, else a RunDirError saying what it is instead."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory" if not path.exists() else f"{path}: not a directory")
    for name in ("config.yaml", "metrics.jsonl"):
        with contextlib.suppress(OSError):
            mode = os.stat(path / name).st_mode
            if not stat.S_ISREG(mode):
                raise RunDirError(
                    f"{path / name}: {files.kind(mode)}, not a regular file; is {path} a gradfit run "
                    "directory someone altered?"
                )
    try:
        missing = [name for name in ("config.yaml", "metrics.jsonl") if not (path / name).is_file()]
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read the run directory ({exc.strerror}); check its permissions") from None
    if missing:
        raise RunDirError(
            f"{path}: not a gradfit run directory (it has no {' and no '.join(missing)}); "
            "pass a folder made by gradfit train, e.g. runs/<name>-<timestamp>"
        )
    return path


@contextlib.contextmanager
def fresh(parent: str | Path, name: str):
    """A new run directory (``create_run_dir``) that, within the block, has not started: a failure (a full disk
    while config.yaml is written) or a signal that ends the process removes the whole folder, so nothing
    half-made is left. No signal can land between its creation and that promise."""
    with removed_on_abort(lambda: create_run_dir(parent, name)) as run_dir:
        try:
            yield run_dir
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise


MEMBERS_DIR = "members"  # a sweep's folder keeps its members' run directories in here
SWEEP_PLAN, SWEEP_STATE = "sweep.yaml", "sweep.json"  # and its plan and state (gradfit.sweeps.run writes them)


def sweep_of(run_dir: Path) -> str | None:
    """The sweep folder's name when ``run_dir`` is a sweep member's, else None."""
    folder = Path(run_dir).resolve().parent
    return folder.parent.name if folder.name == MEMBERS_DIR and (folder.parent / SWEEP_PLAN).is_file() else None


RUN_FILES = (
    "config.yaml",
    "preprocessing.json",
    "metrics.jsonl",
    "metrics.discarded.jsonl",
    CSV_NAME,
    "params.npz",
    "summary.json",
    ".lock",
)
# files a run may also hold: TensorBoard's, and what a resume set aside
RUN_FILE_PATTERNS = (EVENTS_GLOB, "config.before-step-*.yaml", "params.previous*.npz", "checkpoints/*.npz")


def own_files(run_dir: Path) -> list[Path]:
    """The files gradfit keeps in a run directory (existing or not): never a place for a command's output."""
    run_dir = Path(run_dir)
    return [run_dir / name for name in RUN_FILES] + sorted(
        path for pattern in RUN_FILE_PATTERNS for path in run_dir.glob(pattern)
    )


def protected_files(folder: Path) -> list[Path]:
    """The files gradfit keeps in ``folder`` when it is a run or a sweep directory: never a command's output, even
    with --force (a run's config.yaml and a sweep's sweep.json are their records)."""
    folder = Path(folder)
    if RunDir(folder).is_run():
        return own_files(folder)
    if (folder / SWEEP_PLAN).is_file() or (folder / SWEEP_STATE).is_file():
        return [folder / SWEEP_PLAN, folder / SWEEP_STATE, folder / lock.LOCK]
    return []


_JSON_PLAIN = frozenset({str, int, bool, type(None)})


def to_jsonable(value: Any) -> Any:
    """NumPy scalars/arrays to Python; NaN and inf to None (JSON has no such numbers)."""
    kind = type(value)
    if kind in _JSON_PLAIN:  # most values of a large result: answered before the slower checks below
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is dict or kind is list:
        return {str(k): to_jsonable(v) for k, v in value.items()} if kind is dict else [to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically write named arrays as .npz (object arrays are refused: nothing needs unpickling)."""
    files.save_npz(path, arrays)


def load_arrays(path: Path, expected: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a run's .npz file, checked before allocation (see ``files.load_npz``)."""
    return files.load_npz(path, "array file", RunDirError, expected)


# ------------------------------------------------------------------------------------------------ summary.json


def _empty(kind: type):
    return dataclasses.field(default_factory=kind)


class Best(TypedDict, total=False):
    """Summary.best: the best validation metrics evaluated, and their steps. Typed so that a hand-edited
    value ("oops") makes the summary damaged when it is read, not a crash where the values are compared."""

    # a newer gradfit's keys stay; mypy allows only keys in a TypedDict, pydantic reads this one
    __pydantic_config__ = pydantic.ConfigDict(extra="allow")  # type: ignore[misc]

    val_loss: float | None
    val_loss_step: int
    val_accuracy: float | None
    val_accuracy_step: int
    val_rmse: float | None  # a numeric target's
    val_rmse_step: int
    val_mae: float | None
    val_mae_step: int
    val_r2: float | None
    val_r2_step: int


if TYPE_CHECKING:  # to mypy, the plain dict training fills in; pydantic checks it as a Best
    _BestField = dict[str, Any]
else:
    _BestField = Best


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=pydantic.ConfigDict(extra="ignore"))
class Summary:
    """summary.json: how a run ended, where and how fast it ran, and the metrics of its saved parameters.

    Extra keys are ignored when one is read back, so a newer gradfit's summaries still load.
    """

    run_dir: str | None  # None in the processes of a distributed run other than process 0, which writes it
    status: Literal["completed", "failed", "interrupted"]
    stop_reason: str
    # the rest defaults to "unknown" for the summary of a run whose process died (written by its supervisor)
    name: str = ""  # the config's name (the run directory's prefix)
    started: str | None = None  # ISO time the run's first session started
    model: str = ""
    optimizer: str = ""
    dataset: str = ""
    device: str = ""
    devices: list[str] = _empty(list)
    processes: int = 1
    mesh: dict[str, int] = _empty(dict)
    precision: str = ""
    num_params: int = 0
    zero_weights: int | None = None  # with model.l1 > 0: the weights (not biases) of the saved parameters that are 0
    rows: dict[str, int] = _empty(dict)  # train, val, test
    steps: int | None = None  # None: the supervisor of a process that died before its first checkpoint
    epochs: float = 0.0
    params_step: int | None = None  # the step of the parameters in params.npz (None: none saved)
    log_every: int = 0
    eval_every: int = 0
    evaluations: int = 0
    wall_time_s: float = 0.0
    trace_time_s: float = 0.0
    compile_time_s: float = 0.0
    compile_cache: str = ""
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    steps_per_s: float | None = None
    objective: float | None = None  # of the saved parameters, over the whole training split
    grad_norm: float | None = None
    final: dict[str, float | None] = _empty(dict)  # train_loss, val_loss, val_accuracy, test_loss, test_accuracy
    best: _BestField = _empty(dict)  # the best val_loss and val_accuracy evaluated, and their steps
    early_stopping: dict | None = None
    checkpoint: str | None = None
    resumes: list[dict] = _empty(list)
    versions: dict[str, str] = _empty(dict)
    progress_display_error: str | None = None

    @classmethod
    def read(cls, path: Path) -> Summary:
        """The summary in ``path``; a RunDirError saying what is wrong with a damaged one."""
        text = files.read_text(path, "summary", RunDirError, files.MAX_JSON_BYTES)
        try:
            return _SUMMARY.validate_json(text)
        except pydantic.ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(map(str, problem["loc"])) or "the file"
            raise RunDirError(
                f"{path}: not a gradfit summary ({where}: {problem['msg']}); was it edited by hand?"
            ) from None

    def to_json(self) -> dict:
        """What summary.json holds: NaN and inf as null."""
        return to_jsonable(self)


_SUMMARY = pydantic.TypeAdapter(Summary)


@functools.cache
def versions() -> dict[str, str]:
    """The versions a run's results depend on (read from the installed packages: no jax import)."""
    found = {"gradfit": __version__}
    for package in ("jax", "jaxlib", "optax"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "?"
    return found


def config_header(layout: dict, device: str) -> str:
    """The comment lines on top of a run's config.yaml: versions and where it ran (``layout``: as in Summary)."""
    v = versions()
    return (
        f"# Resolved gradfit config: every key, defaults included. Re-run with: gradfit train <this file>\n"
        f"# gradfit {v['gradfit']}, jax {v['jax']}, jaxlib {v['jaxlib']}, optax {v['optax']}; device {device}\n"
        f"# mesh {layout['mesh']} over {len(layout['devices'])} device(s) in {layout['processes']} "
        f"process(es): {', '.join(layout['devices'])}\n"
    )


# ------------------------------------------------------------------------------------------------ the directory


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A run directory and every read and write of its files.

    Made with ``RunDir.fresh`` (a new one) or ``RunDir.open`` (an existing one, checked).
    """

    path: Path

    @classmethod
    @contextlib.contextmanager
    def fresh(cls, parent: str | Path, name: str) -> Iterator[RunDir]:
        """A new run directory, removed if the block fails (see ``fresh``)."""
        with fresh(parent, name) as path:
            yield cls(path)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        return cls(check_run_dir(Path(path)))

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def params_file(self) -> Path:
        return self.path / "params.npz"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def preprocessing_file(self) -> Path:
        return self.path / "preprocessing.json"

    def locked(self):
        return lock.locked(self.path)

    def held_by_another(self) -> bool:
        return lock.held_by_another(self.path)

    def is_run(self) -> bool:
        """True when the folder holds a run's config and metrics as regular files (``open`` says what is wrong
        otherwise)."""
        return self.config_file.is_file() and self.metrics_file.is_file()

    def config(self) -> GradfitConfig:
        """The run's config.yaml, read and validated as ``gradfit train`` reads a config."""
        return resolve_config(self.config_file).config

    def own_files(self) -> list[Path]:
        return own_files(self.path)

    def begin(self, config_yaml: str, preprocessing: Mapping) -> None:
        """Write what a run knows before its first step: the resolved config and the preprocessing."""
        self.write_config(config_yaml)
        write_json(self.preprocessing_file, preprocessing)

    def replace_config(self, config_yaml: str, step: int) -> None:
        """A resumed run's new config; the one it ran with before ``step`` is kept beside it."""
        write_atomic(self.unused_name(f"config.before-step-{step}"), self.config_file.read_bytes())
        self.write_config(config_yaml)

    def write_config(self, config_yaml: str) -> None:
        write_atomic(self.config_file, config_yaml)

    def append_metrics(self, records: Sequence[Mapping]) -> None:
        append_jsonl(self.metrics_file, records)

    def open_loggers(self, names: Sequence[str], regression: bool = False) -> MetricLoggers:
        """The derived metric logs ``train.loggers`` asks for (metrics.csv, TensorBoard event files), written from
        the records metrics.jsonl gets (``regression``: a numeric target's); a ConfigError when one cannot run
        here."""
        return MetricLoggers(self.path, names, record_keys(regression), sweep_of(self.path))

    def metrics(self) -> list[dict]:
        """The records of metrics.jsonl (a torn last line, from a crash mid-write, is left out), all in memory:
        ``iter_metrics`` reads them one at a time."""
        return list(iter_metrics(self.metrics_file))

    def iter_metrics(self, keys: Sequence[str] | None = None) -> Iterator[dict]:
        """The records of metrics.jsonl one at a time, with only ``keys`` (see ``iter_metrics``)."""
        return iter_metrics(self.metrics_file, keys)

    def truncate_metrics(self, step: int) -> int:
        return truncate_metrics(self.metrics_file, step)

    def save_params(self, arrays: Mapping[str, np.ndarray]) -> None:
        save_arrays(self.params_file, arrays)

    def load_params(self, expected: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
        return load_arrays(self.params_file, expected)

    def set_aside_params(self) -> None:
        """Move an earlier session's params.npz out of the way (a failed session saves none of its own)."""
        if self.params_file.exists():
            self.params_file.replace(self.unused_name("params.previous", ".npz"))

    def preprocessing(self) -> Any:
        """preprocessing.json as written (``trained`` checks its shape); a RunDirError when missing or not JSON."""
        path = self.preprocessing_file
        if not (path.exists() or path.is_symlink()):
            raise RunDirError(f"{self.path}: not a complete gradfit run (no {path.name})")
        text = files.read_text(path, path.name, RunDirError, files.MAX_JSON_BYTES)
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise RunDirError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None

    def has_params(self) -> bool:
        return self.params_file.exists() or self.params_file.is_symlink()  # a dangling link is reported on reading

    def write_summary(self, summary: Summary) -> None:
        write_json(self.summary_file, summary)

    def summary(self) -> Summary | None:
        """The run's summary; None when it has none (it is training, or was killed before writing one)."""
        return Summary.read(self.summary_file) if self.summary_file.exists() else None

    def outputs_complete(self, step: int) -> bool:
        """True when summary.json reports the run completed at ``step`` and its params.npz exists."""
        try:
            summary = self.summary()
        except RunDirError:
            return False
        return (
            summary is not None
            and summary.status == "completed"
            and summary.steps == step
            and self.params_file.is_file()
        )

    def unused_name(self, stem: str, suffix: str = ".yaml") -> Path:
        """``stem + suffix`` in the run directory, or ``stem-2 + suffix``, ... whichever does not exist yet."""
        candidate, n = self.path / f"{stem}{suffix}", 1
        while candidate.exists():
            n += 1
            candidate = self.path / f"{stem}-{n}{suffix}"
        return candidate
