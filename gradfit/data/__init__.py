"""Rows in: reading tables, encoding their columns, datasets in memory or streamed from disk, and the minibatches fed
to the device.

Modules, lowest first: ``text`` (CSV lines, numbers as written, the slow path that names a bad line, messages),
``labels`` (which values are classes and how they are encoded), ``weighting`` (sample and class weights),
``columns`` (Arrow and in-memory columns as raw rows: numbers, or category codes), ``blocks`` (the ``Table`` every
reader opens, its row blocks and the checks on every cell), ``arrow_tables`` (CSV, Parquet, Feather and in-memory
tables read by pyarrow), ``supplied`` (rows handed over in Python: DataFrames, Arrow tables and arrays as one Arrow
table), ``converted`` (the folder ``gradfit data convert`` writes), ``tabular`` (the front door of every table, and
.npz files and converted folders), ``standardize`` (column moments and the standardization fitted from them),
``encoding`` (categories one-hot and missing cells filled, fitted on the training split), ``synthetic`` (the seeded
generator), ``dataset`` (the ``Dataset`` protocol and the in-memory kind), ``streamed`` (data that stay on disk),
``load`` (the front door: in memory or streamed), ``convert`` (``gradfit data convert``), ``describe`` (``gradfit
data describe``), ``shuffle`` (on-device shuffling) and ``feed`` (minibatches of streamed data put on the device).
Only ``shuffle`` and ``feed`` import jax.

May import: ``gradfit.runtime``, ``gradfit.core``, ``gradfit.config``, ``gradfit.errors``, ``gradfit.files``,
``gradfit.abort``.
"""
