"""The values of the config's choice keys, each spelled once: the schema types its keys with them and the command
line offers them as choices. Plain ``typing`` only, so that ``gradfit --help`` can import it without pydantic."""

from __future__ import annotations

from typing import Literal

Source = Literal["breast_cancer", "digits", "diabetes", "synthetic", "file", "memory"]  # data.source
ModelKind = Literal["logistic", "linear", "mlp"]  # model.kind
Loss = Literal["auto", "log", "squared", "huber"]  # model.loss
Activation = Literal["relu", "tanh", "gelu", "sigmoid", "silu"]  # model.activation
Init = Literal["auto", "he", "glorot"]  # model.init
Schedule = Literal["constant", "cosine", "exponential", "warmup_cosine"]  # optimizer.schedule.name
Optimizer = Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "lbfgs"]  # optimizer.name
Metric = Literal[
    "val_loss", "val_accuracy", "val_rmse", "val_mae", "val_r2"
]  # early stopping's monitor, a sweep's metric
#: the metrics of a numeric target (the others but val_loss are of classes)
REGRESSION_METRICS = ("val_rmse", "val_mae", "val_r2")
#: metrics where higher is better
HIGHER_IS_BETTER = ("val_accuracy", "val_r2")
Logger = Literal["jsonl", "csv", "tensorboard", "mlflow"]  # train.loggers
Shuffle = Literal["auto", "full", "blocks"]  # train.shuffle
Missing = Literal["error", "mean", "median", "most_frequent"]  # data.missing
UnknownCategory = Literal["error", "ignore"]  # data.unknown_category
ReferenceCategory = Literal["none", "first"]  # data.reference_category
Device = Literal["auto", "cpu", "gpu"]  # runtime.device
Precision = Literal["float32", "float64", "bfloat16"]  # runtime.precision
