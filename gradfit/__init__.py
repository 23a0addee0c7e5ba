"""gradfit: train models from YAML configs with JAX, and trust the gradient.

The Python API is in ``gradfit.api`` (``fit``, ``load_run``, ``resume``); ``gradfit.fit`` and ``gradfit.load_run``
load it on first use, so that ``import gradfit`` (and ``gradfit --help``) stays free of jax.
"""

from gradfit.version import __version__

__all__ = ["__version__", "fit", "load_run"]


def __getattr__(name: str):
    if name in ("api", "fit", "load_run"):
        import importlib

        api = importlib.import_module("gradfit.api")  # not `from gradfit import api`: that asks this function
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'gradfit' has no attribute {name!r}")
