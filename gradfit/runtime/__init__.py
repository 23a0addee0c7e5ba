"""Where and how a run computes.

Modules:

- ``mesh``: which device platform, the mesh over its devices, and this process's part in a distributed run.
- ``resources``: whether the run fits in memory and in int32 step counts.
- ``compile_cache``: JAX's persistent compilation cache.

May import: ``gradfit.core``, ``gradfit.config``, ``gradfit.errors``, ``gradfit.files``.
"""
