"""gradfit's version (read by the build, ``gradfit --version`` and every run's records)."""

__version__ = "0.1.0"
