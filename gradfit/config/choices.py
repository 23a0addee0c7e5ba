"""The values of the config's choice keys, each spelled once: the schema types its keys with them and the command
line offers them as choices. Plain ``typing`` only, so that ``gradfit --help`` can import it without pydantic."""

from __future__ import annotations

from typing import Literal

Source = Literal["breast_cancer", "digits", "synthetic", "file"]  # data.source
ModelKind = Literal["logistic", "mlp"]  # model.kind
Activation = Literal["relu", "tanh", "gelu", "sigmoid", "silu"]  # model.activation
Init = Literal["auto", "he", "glorot"]  # model.init
Schedule = Literal["constant", "cosine", "exponential", "warmup_cosine"]  # optimizer.schedule.name
Optimizer = Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "lbfgs"]  # optimizer.name
Metric = Literal["val_loss", "val_accuracy"]  # train.early_stopping.monitor, a sweep's metric
Logger = Literal["jsonl", "csv", "tensorboard"]  # train.loggers
Shuffle = Literal["auto", "full", "blocks"]  # train.shuffle
Missing = Literal["error", "mean", "median", "most_frequent"]  # data.missing
UnknownCategory = Literal["error", "ignore"]  # data.unknown_category
ReferenceCategory = Literal["none", "first"]  # data.reference_category
Device = Literal["auto", "cpu", "gpu"]  # runtime.device
Precision = Literal["float32", "float64", "bfloat16"]  # runtime.precision
