"""Derived metric logs of a run: ``metrics.csv`` and TensorBoard event files.

``metrics.jsonl`` is the source of truth (``runs.metrics.append_jsonl`` writes it; the "jsonl" logger is always
on). The files here are made from the same records, so they can always be remade from it: on resume, after
``runs.metrics.truncate_metrics``, ``MetricLoggers.rebuild`` replaces those still asked for with ones made from the
kept records and removes those no longer asked for (they would end at the resume step). A value
metrics.jsonl stores as null (None, missing, NaN, inf) is an empty CSV cell and no TensorBoard point, so a file
written live and one rebuilt from metrics.jsonl are the same. No jax; tensorboardX is imported only when asked for.

The "mlflow" logger (``MlflowLog``) sends the same points to an MLflow tracking store, with the flattened config as
params and the run's files as artifacts at the end. An MLflow run cannot be remade, so a resume continues it
(``mlflow.json`` names it) and logs only the steps it lacks; mlflow is imported only when asked for.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import re
import socket
import struct
import sys
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from gradfit import files
from gradfit.errors import ConfigError, RunDirError, first_line

LOGGERS = ("jsonl", "csv", "tensorboard", "mlflow")
CSV_NAME = "metrics.csv"
MLFLOW_NAME = "mlflow.json"  # the MLflow run a run directory logs to, so that a resume continues it
EVENTS_GLOB = "events.out.tfevents.*"  # tensorboardX's file names: events.out.tfevents.<seconds>.<host><suffix>


def check_available(names: Sequence[str]) -> None:
    """Check that every logger in ``names`` is known and can run here; call it before the run directory is made.


    Raises:
        ConfigError: an unknown name, "tensorboard" without an importable tensorboardX, or "mlflow" without an
            importable mlflow (mlflow-skinny is enough).
    """
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"train.loggers: unknown logger {name!r}; choose from {', '.join(LOGGERS)}")
    for name, package, load in (("tensorboard", "tensorboardX", _tensorboardx), ("mlflow", "mlflow", _mlflow)):
        if name not in names:
            continue
        try:
            load()
        except Exception as exc:  # ImportError, or a broken install (say, a protobuf it cannot load)
            reason = "" if isinstance(exc, ImportError) else f" (importing it failed: {first_line(exc)})"
            raise ConfigError(
                f"train.loggers: {name} needs {package}: pip install 'gradfit[{name}]' "
                f"(or remove it from train.loggers){reason}"
            ) from None


class MetricLoggers:
    """Writes each batch of metrics records to the run's derived logs. Every ``append`` opens, writes and closes
    its files: nothing is lost that metrics.jsonl has, and a sweep of a thousand members holds no file open.
    Files are made on the first ``append``: a run that never logs leaves none.
    """

    def __init__(self, run_dir: Path, names: Sequence[str], columns: Sequence[str], sweep: str | None = None):
        """``sweep``: the sweep's folder name when the run is a sweep member (its MLflow experiment)."""
        check_available(names)
        self.run_dir = Path(run_dir)
        self.columns = tuple(columns)
        self.csv = "csv" in names
        self.tensorboard = "tensorboard" in names
        self.mlflow = MlflowLog(self.run_dir, sweep) if "mlflow" in names else None
        self._events: Path | None = None  # this session's event file

    @property
    def csv_path(self) -> Path:
        return self.run_dir / CSV_NAME

    @property
    def active(self) -> bool:
        """True when ``rebuild`` has work on resume: derived logs asked for, or left by an earlier session."""
        return (
            self.csv
            or self.tensorboard
            or self.mlflow is not None
            or self.csv_path.is_file()
            or any(self.run_dir.glob(EVENTS_GLOB))
        )

    def describe(self, name: str, config: Mapping) -> None:
        """What the MLflow run is filed under and its params: the config's ``name`` and its dump (nested)."""
        if self.mlflow is not None:
            self.mlflow.describe(name, config)

    def append(self, records: Sequence[Mapping]) -> None:
        """Add ``records`` (flat dicts with a "step") after those already written."""
        if not records:
            return
        if self.csv:
            with _open_csv(self.csv_path, self.columns) as handle:
                handle.write(_csv_text(records, self.columns))
        if self.tensorboard:
            if self._events is None:
                self._events = _new_event_file(self.run_dir)
            _append_events(self._events, records)
        if self.mlflow is not None:
            self.mlflow.add(records)

    def finish(self, status: str) -> None:
        """The run ended with ``status`` (completed, failed, interrupted): the MLflow run gets the run's files as
        artifacts and its status. Never raises."""
        if self.mlflow is not None:
            self.mlflow.finish(status)

    def rebuild(self, records: Sequence[Mapping]) -> list[str]:
        """Make the derived logs asked for again from exactly ``records`` (the kept part of metrics.jsonl on
        resume; TensorBoard would show two points per step otherwise), which later ``append`` calls continue.

        Those an earlier session left and this one does not ask for are removed: nothing would continue them, so
        they would end at the resume step while the run goes on, and metrics.jsonl holds every record they held.
        Returns the names of the files removed that way. ``mlflow.json`` stays: an MLflow run cannot be remade, and
        a later session that asks for it again continues it, logging the steps it lacks.
        """
        removed = []
        if self.csv:
            files.write_atomic(self.csv_path, _csv_text(records, self.columns, header=True))
        elif self.csv_path.is_file():
            self.csv_path.unlink()
            removed.append(CSV_NAME)
        old = sorted(self.run_dir.glob(EVENTS_GLOB))
        self._events = None
        if self.tensorboard and records:
            # the new file is complete before the old ones go: a crash in between leaves duplicates, not a gap
            self._events = _new_event_file(self.run_dir)
            _append_events(self._events, records)
        for path in old:
            path.unlink(missing_ok=True)
        if self.mlflow is not None:  # continues its MLflow run: it gets only the steps it lacks
            self.mlflow.add(records)
        return removed if self.tensorboard else removed + [path.name for path in old]


MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
ARTIFACTS = ("config.yaml", "preprocessing.json", "metrics.jsonl", "metrics.csv", "summary.json", "params.npz")
CHANGED_TAG = "resumed_with."  # + a config key: the value a later session changed it to (params never change)
FLUSH_SECONDS = 2.0  # points wait this long for one request: a remote store would slow every log point otherwise
MAX_PARAM_CHARS, MAX_PER_BATCH = 6000, 100  # MLflow's limits: a param value's length, params or tags per request


class MlflowLog:
    """One run directory's MLflow run, reached through ``MlflowClient`` with its run id (no global active run).

    The run is found or made at the first call that needs it: a new one (named after the run directory, in the
    experiment named after the config) is recorded in ``mlflow.json``; a resumed run directory continues the one
    recorded there, and its points are logged only at steps beyond the last each metric has in MLflow (MLflow
    cannot delete points; the steps a crash logged past the checkpoint are not logged twice). The first failing
    MLflow call (a tracking server out of reach) is reported once as a warning and ends MLflow logging for this
    session: training goes on, and metrics.jsonl keeps every record.
    """

    def __init__(self, run_dir: Path, sweep: str | None = None):
        self.run_dir = run_dir
        self.sweep = sweep
        self.experiment = "gradfit"
        self.params: dict[str, str] = {}  # the flattened config
        self.uri = _tracking_uri()
        self.client: Any = None
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # metric -> the last step MLflow has of it
        self.pending: list[Any] = []  # mlflow Metric points not yet sent
        self.sent = time.monotonic()
        self.broken = False

    @property
    def record_path(self) -> Path:
        return self.run_dir / MLFLOW_NAME

    def describe(self, name: str, config: Mapping) -> None:
        self.experiment, self.params = name or "gradfit", flat_params(config)

    def add(self, records: Sequence[Mapping]) -> None:
        """Queue the points of ``records`` MLflow does not have yet; send them when ``FLUSH_SECONDS`` have passed."""
        self._guarded(lambda: self._add(records))

    def finish(self, status: str) -> None:
        """Send what is queued, the run's files as artifacts, and the MLflow status of ``status``."""
        self._guarded(lambda: self._finish(status))

    def _guarded(self, action: Callable[[], None]) -> None:
        if self.broken:
            return
        try:
            action()
        except Exception as exc:  # never lose the run to its MLflow copy
            self.broken, self.pending = True, []
            warnings.warn(
                f"train.loggers: mlflow ({_redacted(self.uri)}) failed: {_scrubbed(first_line(exc), self.uri)}; "
                "this session logs no "
                f"more to MLflow ({self.run_dir / 'metrics.jsonl'} has every record)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _add(self, records: Sequence[Mapping]) -> None:
        self._open()
        Metric = _mlflow().entities.Metric
        now = int(time.time() * 1000)
        for record in records:
            step = int(record["step"])
            for key, value in record.items():
                if key == "step" or not (isinstance(value, numbers.Real) and math.isfinite(value)):
                    continue
                if step > self.logged.get(key, -1):
                    self.pending.append(Metric(key, float(value), now, step))
                    self.logged[key] = step
        if time.monotonic() - self.sent >= FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        for i in range(0, len(self.pending), 1000):  # MLflow takes at most 1000 points per request
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
        self.pending, self.sent = [], time.monotonic()

    def _finish(self, status: str) -> None:
        self._open()
        self._flush()
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))

    def _open(self) -> None:
        """Find the MLflow run to continue, or make one; set its params and what it has logged."""
        if self.run_id is not None:
            return
        mlflow = _mlflow()
        if urllib.parse.urlsplit(self.uri).scheme in ("", "file") or self.uri[1:2] == ":":  # a path, or C:...
            # MLflow 3.7+ refuses its file store unless this is set; the database store needs sqlalchemy, which
            # mlflow-skinny lacks. Setting MLFLOW_ALLOW_FILE_STORE=false keeps MLflow's refusal.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = self.client = mlflow.tracking.MlflowClient(tracking_uri=self.uri)
        run = self._recorded_run()
        if run is None:
            self._new_run()
            return
        self.run_id = run.info.run_id
        self.logged = {
            key: max((m.step for m in client.get_metric_history(self.run_id, key)), default=-1)
            for key in run.data.metrics
        }
        known, tags = run.data.params, run.data.tags
        new = {key: value for key, value in self.params.items() if key not in known}
        changed = {
            CHANGED_TAG + key: value
            for key, value in self.params.items()
            if key in known
            and (known[key] != value or CHANGED_TAG + key in tags)
            and tags.get(CHANGED_TAG + key) != value
        }
        self._log_params(new, changed)
        client.update_run(self.run_id, status="RUNNING")

    def _recorded_run(self) -> Any:
        """The MLflow run ``mlflow.json`` names, when it is in this tracking store and not deleted; else None."""
        if not self.record_path.exists():
            return None
        recorded = json.loads(files.read_text(self.record_path, MLFLOW_NAME, RunDirError, files.MAX_JSON_BYTES))
        if recorded.get("tracking_uri") != _redacted(self.uri):
            return None  # MLFLOW_TRACKING_URI changed: a new run in the new store
        try:
            run = self.client.get_run(recorded["run_id"])
        except _mlflow().exceptions.MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # the store was emptied (mlruns/ removed)
                return None
            raise
        return None if run.info.lifecycle_stage == "deleted" else run

    def _new_run(self) -> None:
        tags = {"gradfit.run_dir": str(self.run_dir.resolve())}
        sweep = self.sweep
        if sweep is not None:  # a sweep's members side by side in one experiment (theirs have names of their own)
            tags["gradfit.sweep"] = sweep
        experiment_id = self._experiment_id(sweep or self.experiment)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name, tags=tags)
        self.run_id, self.logged = run.info.run_id, {}
        record = {"tracking_uri": _redacted(self.uri), "experiment_id": experiment_id, "run_id": self.run_id}
        files.write_atomic(self.record_path, json.dumps(record, indent=2) + "\n")
        self._log_params(self.params, {})

    def _experiment_id(self, name: str) -> str:
        """The id of the experiment ``name``, made if there is none."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except _mlflow().exceptions.MlflowException:  # made meanwhile by another run
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log_params(self, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        entities = _mlflow().entities
        items = [entities.Param(k, v) for k, v in params.items()] + [entities.RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PER_BATCH):
            batch = items[i : i + MAX_PER_BATCH]
            self.client.log_batch(
                self.run_id,
                params=[p for p in batch if isinstance(p, entities.Param)],
                tags=[t for t in batch if isinstance(t, entities.RunTag)],
            )


def flat_params(config: Mapping, prefix: str = "") -> dict[str, str]:
    """A config dump as MLflow params: dotted keys, values spelled as in YAML/JSON (strings as they are)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            # a key from the user's data (a class_weight label) may hold what MLflow refuses in a name
            flat[re.sub(r"[^\w.\- ]", "_", f"{prefix}{key}", flags=re.ASCII)] = text[:MAX_PARAM_CHARS]
    return flat


def _tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a file store in ./mlruns (where MLflow's own tools look by default)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri()


def _redacted(uri: str) -> str:
    """``uri`` without a user name or password, which mlflow.json and warnings must not hold."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _scrubbed(text: str, uri: str) -> str:
    """``text`` without the user name and password of ``uri`` (MLflow's errors quote the URL they requested)."""
    netloc = urllib.parse.urlsplit(uri).netloc
    return text.replace(netloc.rsplit("@", 1)[0] + "@", "") if "@" in netloc else text


def _cell(value: Any) -> str:
    """A CSV cell: integers as digits, floats by ``repr`` (reads back exactly), null-like values empty."""
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)  # repr(np.float32(1)) is 'np.float32(1.0)'
        return repr(value) if math.isfinite(value) else ""
    return "" if value is None else str(value)


def _csv_text(records: Sequence[Mapping], columns: Sequence[str], header: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    writer.writerows([_cell(record.get(column)) for column in columns] for record in records)
    return buffer.getvalue()


def _open_csv(path: Path, columns: Sequence[str]) -> IO[str]:
    """``path`` opened for appending, its header written if it is new; one naming other columns is refused, since
    appending to it would put values under the wrong names."""
    header = _csv_text([], columns, header=True)
    existing = ""
    if path.exists():
        with files.open_regular(path, "metrics file", RunDirError) as reader:
            existing = reader.readline(len(header.encode()) + 1).decode("utf-8", "replace")
    if existing and existing != header:
        raise RunDirError(
            f"{path}: its header is {existing.strip()!r}, not {header.strip()!r}; move it away "
            "and resume the run, which writes it again from metrics.jsonl"
        )
    handle = files.open_append(path, RunDirError)
    if not existing:
        handle.write(header)
    return handle


def _new_event_file(run_dir: Path) -> Path:
    """A new event file in ``run_dir`` holding the file-version event TensorBoard expects first.

    Written here rather than by tensorboardX's SummaryWriter: its flush() misses events still queued for its
    writer thread, and two writers opened in one second in one folder get the same file name, the second
    truncating the first. A random suffix keeps names apart (TensorBoard reads every file with "tfevents" in it).
    """
    _, Event, _ = _tensorboardx()
    path = run_dir / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
    _write_records(path, [Event(wall_time=time.time(), file_version="brain.Event:2")], "xb")
    return path


def _append_events(path: Path, records: Sequence[Mapping]) -> None:
    """One event per record: a scalar per finite number but "step", tagged with its key as in metrics.jsonl."""
    _, Event, Summary = _tensorboardx()
    events = []
    for record in records:
        values = [
            Summary.Value(tag=key, simple_value=float(value))
            for key, value in record.items()
            if key != "step" and isinstance(value, numbers.Real) and math.isfinite(value)
        ]
        if values:
            events.append(Event(wall_time=time.time(), step=int(record["step"]), summary=Summary(value=values)))
    _write_records(path, events, "ab")


def _write_records(path: Path, events: Sequence[Any], mode: str) -> None:
    """Events in TFRecord framing: length (8 bytes, little-endian), its masked CRC-32C, the payload, its CRC."""
    masked_crc32c, _, _ = _tensorboardx()
    with open(path, mode) as handle:
        for event in events:
            payload = event.SerializeToString()
            length = struct.pack("<Q", len(payload))
            handle.write(
                length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))
            )


def _tensorboardx():
    """(masked_crc32c, Event, Summary) from tensorboardX, without PyTorch.

    tensorboardX's package imports PyTorch where it is installed, for writers gradfit does not use: 2 s and 190 MB
    more per run (measured). So torch, unless something imported it already, reads as absent during the import
    (tensorboardX then falls back to NumPy) and is importable again afterwards.
    """
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None
    try:
        import tensorboardX  # noqa: F401  (first: a submodule imported earlier would not say it is gone)
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.record_writer import masked_crc32c
    finally:
        if blocked:
            del sys.modules["torch"]
    return masked_crc32c, Event, Summary


def _mlflow() -> Any:
    """The mlflow package (mlflow-skinny is enough), with the modules used here imported."""
    import mlflow
    import mlflow.entities
    import mlflow.exceptions
    import mlflow.tracking

    return mlflow
