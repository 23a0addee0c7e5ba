"""Readers of a run's derived metric logs for the tests: metrics.csv and TensorBoard event files."""

from __future__ import annotations

import csv
import struct
from pathlib import Path


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    """(header, rows): integers and floats as numbers, empty cells as None."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))

    def number(text: str):
        return None if text == "" else int(text) if text.lstrip("-").isdigit() else float(text)

    return rows[0], [{key: number(cell) for key, cell in zip(rows[0], row)} for row in rows[1:]]


def read_events(folder: Path) -> list[tuple[str, int, float]]:
    """Every scalar (tag, step, value) in every event file of ``folder``, duplicates kept.

    TensorBoard's own reader where it is installed; otherwise the TFRecord framing by hand (length: 8 bytes
    little-endian, its masked CRC-32C, the payload, its masked CRC-32C), each payload an Event proto.
    """
    paths = sorted(folder.glob("events.out.tfevents.*"))
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return [point for path in paths for point in _read_event_file(path)]
    points = []
    for path in paths:  # one accumulator a file, purging nothing: a duplicate step must show up here
        accumulator = EventAccumulator(str(path), purge_orphaned_data=False)
        accumulator.Reload()
        points += [
            (tag, event.step, event.value)
            for tag in accumulator.Tags()["scalars"]
            for event in accumulator.Scalars(tag)
        ]
    return points


def _read_event_file(path: Path) -> list[tuple[str, int, float]]:
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    data, offset, points = path.read_bytes(), 0, []
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        payload = data[offset + 12 : offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert (header_crc, payload_crc) == (masked_crc32c(header), masked_crc32c(payload)), f"{path}: bad CRC"
        event = Event.FromString(payload)
        points += [(value.tag, event.step, value.simple_value) for value in event.summary.value]
        offset += 16 + length
    assert offset == len(data), f"{path}: torn last record"
    return points
