"""gradfit: train models from YAML configs with JAX, and trust the gradient."""

__version__ = "0.1.0"
