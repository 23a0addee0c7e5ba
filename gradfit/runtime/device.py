"""Which JAX device to run on."""

from __future__ import annotations

from gradfit.errors import DeviceError

GPU_INSTALL_HINT = 'install JAX with CUDA support: pip install -U "jax[cuda13]" (see the JAX install guide)'


def select_device(requested: str):
    """'cpu', 'gpu' or 'auto' (the first GPU when JAX sees one, else the CPU) -> a jax.Device."""
    import jax

    if requested == "cpu":
        return jax.devices("cpu")[0]
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if gpus:
        return gpus[0]
    if requested == "gpu":
        raise DeviceError(
            f"runtime.device is 'gpu' but JAX sees no GPU (backend: {jax.default_backend()}); "
            f"{GPU_INSTALL_HINT}, or use --device cpu"
        )
    return jax.devices("cpu")[0]


def describe_device(device) -> str:
    """'cpu:0 (cpu)' or 'gpu:0 (NVIDIA H100 80GB HBM3)'."""
    return f"{device.platform}:{device.id} ({device.device_kind})"
