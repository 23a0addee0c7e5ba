"""Where a run's data live: ``load(config)`` reads them into memory (``gradfit.data.dataset``) or streams them
from disk (``gradfit.data.streamed``), as ``data.in_memory`` says. No jax.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from gradfit import files
from gradfit.config.schema import GradfitConfig
from gradfit.core import precision
from gradfit.data import converted, dataset, streamed
from gradfit.data.supplied import Supplied
from gradfit.errors import ConfigError, DataError
from gradfit.files import format_bytes
from gradfit.runtime import resources

HOST_SHARE = 4  # auto streams when the training features would take over 1/4 of host memory...
DEVICE_SHARE = 2  # ... or over 1/2 of the device's


def load(config: GradfitConfig, device_bytes: int | None = None, supplied: Supplied | None = None) -> dataset.Dataset:
    """The run's data: in memory, or streamed from disk, as ``data.in_memory`` says (see ``decide``);
    ``supplied``: the rows of ``data.source: memory``, handed over in Python (always in memory)."""
    if config.data.source == "memory":
        dataset.memory_rows(supplied)  # refuses a command-line run of such a config, naming what to do
    elif decide(config, device_bytes):
        return streamed.load_streamed(config)
    resources.check_synthetic(config, resources.host_available_bytes())  # before the generator allocates it
    return dataset.load_dataset(config, dataset.shuffle_mode(config, False), supplied)


def decide(config: GradfitConfig, device_bytes: int | None = None) -> bool:
    """Whether the run streams its data. Only a converted folder or synthetic data can stream, and only on
    minibatches; auto streams a minibatch run when the training split's features would take over half the
    device memory or a quarter of host RAM, and refuses a CSV or .npz that large (naming the command that
    converts it)."""
    data = config.data
    rows, width, path = _extent(config)
    share = 1 - data.val_fraction - data.test_fraction
    need = int(rows * share) * width * precision.of(config).compute_dtype.itemsize
    host = resources.host_available_bytes()
    large = (host is not None and need * HOST_SHARE > host) or (
        device_bytes is not None and need * DEVICE_SHARE > device_bytes
    )
    can_stream = data.source == "synthetic" or (path is not None and converted.is_converted(path))
    if data.in_memory == "auto":  # full batch reads every row at every step: it stays in memory, or is refused
        wanted = large and config.train.batch_size is not None
    else:
        wanted = not data.in_memory
    if wanted and not can_stream:
        if path is not None and not path.exists():
            files.open_regular(path, "data file", DataError)  # names what is missing (a broken link, say)
        why = (
            "data.in_memory is false"
            if data.in_memory is False
            else f"its training split needs about {format_bytes(need)}, more than gradfit holds in memory"
        )
        target = f" --target {shlex.quote(data.target)}" if data.source == "file" and data.target != "target" else ""
        folder = shlex.quote(f"{path.with_suffix('')}-converted") if path is not None else "DIR"
        raise DataError(
            f"{path}: {why}, and only a folder made by 'gradfit data convert' (or synthetic data) can "
            f"be streamed; convert it first: gradfit data convert {shlex.quote(str(path))} {folder}{target}, "
            f"then set data.path: {folder}"
        )
    if wanted and config.train.batch_size is None:
        raise ConfigError(
            "train.batch_size: streamed data train on minibatches; set train.batch_size (a full "
            "batch would read the whole training split at every step), or data.in_memory: true"
        )
    return wanted


def _extent(config: GradfitConfig) -> tuple[int, int, Path | None]:
    """(rows, features, file) of the configured data, known before reading them; for a CSV or .npz an estimate
    of its cells as (cells, 1), one per 8 bytes of the file (a number as written takes 6-12)."""
    data = config.data
    if data.source == "synthetic":
        return data.synthetic.n_samples, data.synthetic.n_features, None
    if data.source == "memory":  # already in host memory
        return 0, 0, None
    if data.source != "file":
        return 0, 0, dataset.builtin_path(data.source)  # the built-in tables are small
    path = dataset.file_path(data)
    if converted.is_converted(path):
        meta = converted.read_meta(path)
        return meta["rows"], len(meta["feature_names"]), path
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0, 0, path  # the reader names the problem
    return size // 8, 1, path
