"""gradfit: train models from YAML configs with JAX, and trust the gradient.

The Python API is in ``gradfit.api`` (``fit``, ``load_run``, ``resume``); ``gradfit.fit`` and ``gradfit.load_run``
load it on first use, so that ``import gradfit`` (and ``gradfit --help``) stays free of jax. (``gradfit.resume`` is
the module that resumes runs: call ``gradfit.api.resume``.)
"""

__version__ = "0.1.0"
__all__ = ["fit", "load_run"]


def __getattr__(name: str):
    if name in __all__:
        from gradfit import api

        return getattr(api, name)
    raise AttributeError(f"module 'gradfit' has no attribute {name!r}")
