"""What a run is asked to do: the spelling of every choice (``choices``), what every section shares (``section``),
the ``data`` section (``data``), the rest of the schema (``schema``), loading YAML with ``--set`` overrides and
messages that point at the line (``load``), and the commented file ``gradfit config init`` writes (``template``).

No jax here. May import: ``gradfit.errors``, ``gradfit.files``.
"""
