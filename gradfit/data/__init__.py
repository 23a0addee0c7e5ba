"""Rows in: reading tables, datasets in memory or streamed from disk, and the minibatches fed to the device.

Modules, lowest first: ``text`` (CSV lines, numbers as written, messages), ``labels`` (which values are
classes and how they are encoded), ``columns`` (features handed over in memory: a table's columns matched by
name, or an array), ``converted`` (the folder ``gradfit data convert`` writes), ``tabular`` (the
one reader of CSVs, .npz files and converted folders), ``standardize`` (column moments and the standardization
fitted from them), ``synthetic`` (the seeded generator), ``dataset`` (the ``Dataset`` protocol and the in-memory
kind), ``streamed`` (data that stay on disk), ``load`` (the front door: in memory or streamed), ``convert``
(``gradfit data convert`` and ``describe``), ``shuffle`` (on-device shuffling) and ``feed`` (minibatches of
streamed data put on the device). Only ``shuffle`` and ``feed`` import jax.

May import: ``gradfit.runtime``, ``gradfit.core``, ``gradfit.config``, ``gradfit.errors``, ``gradfit.files``,
``gradfit.abort``.
"""
