"""Shared helpers: tiny configs and the repository paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradfit.config import GradfitConfig, resolve_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def make_config(*overrides: str, path: str | Path | None = None) -> GradfitConfig:
    """A validated config from defaults (or a file) plus --set style overrides."""
    return resolve_config(path, list(overrides)).config


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return tmp_path / "runs"


def has_gpu() -> bool:
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


requires_gpu = pytest.mark.skipif(not has_gpu(), reason="needs a GPU")
requires_no_gpu = pytest.mark.skipif(has_gpu(), reason="this machine has a GPU")
