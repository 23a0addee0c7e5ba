"""Where and how a run computes: the devices and the mesh over them (``mesh``), whether the run fits in memory
and in int32 step counts (``resources``), and JAX's persistent compilation cache (``compile_cache``).

May import: ``gradfit.core``, ``gradfit.config``, ``gradfit.errors``, ``gradfit.files``.
"""
