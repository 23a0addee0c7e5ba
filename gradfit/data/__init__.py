"""Rows in: reading tables (``tabular``), datasets in memory (``dataset``), data that stay on disk
(``streamed``), minibatches fed to the device (``feed``), on-device shuffling (``shuffle``) and
``gradfit data convert``/``describe`` (``convert``).

May import: ``gradfit.core``, ``gradfit.config``, ``gradfit.errors``, ``gradfit.files``, ``gradfit.abort``.
"""
