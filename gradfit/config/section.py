"""What every config section shares: a frozen pydantic model that forbids unknown keys, the bounds of sizes and
steps, and how a validator blames one key. No jax and no file handling here.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

KeyPath = tuple  # ("optimizer", "learning_rate"); list indexes are ints

# Upper bounds of counts and sizes: past them a run would fail (or wrap around) on the device, after the run
# directory exists, rather than at validation. JAX's integers are int32: the compiled loop's step counter, row
# indexes of minibatches and evaluation blocks, correct-prediction counts.
INT32_MAX = 2**31 - 1
MAX_SIZE = INT32_MAX  # rows, features, classes, hidden units, batch rows
MAX_STEPS = 2**30  # steps, epochs and every schedule in steps: the last log window (< log_every more) still fits int32
MAX_KEPT_CHECKPOINTS = 1000
MAX_LBFGS_MEMORY = 1000
SIZE_WHY = "2**31 - 1: rows and sizes are int32 on the device"
STEPS_WHY = "2**30: the compiled training loop counts steps in int32"


def at_most(limit: int, why: str) -> BeforeValidator:
    """A bound checked before pydantic's own ``le``, so that the message gives the limit with its reason."""

    def check(value: Any) -> Any:
        number = value
        if type(value) is str:  # YAML 1.1 reads `1e10` as text, not as a number
            try:
                number = float(value)
            except ValueError:
                return value
        if type(number) in (int, float) and number > limit:
            raise ValueError(f"at most {limit:,} ({why})")
        if type(value) is str and number.is_integer():
            return int(number)  # `steps: 1e4` is 10,000 steps, as `1.0e+4` already is
        return value

    return BeforeValidator(check)


Size = Annotated[int, at_most(MAX_SIZE, SIZE_WHY), Field(le=MAX_SIZE)]
Steps = Annotated[int, at_most(MAX_STEPS, STEPS_WHY), Field(le=MAX_STEPS)]


class KeyProblem(ValueError):
    """Raised by a validator to blame one key of its section rather than the section as a whole."""

    def __init__(self, key: KeyPath, message: str):
        super().__init__(message)
        self.key = key


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: key -> the selector values it is used with, e.g. {"momentum": {"momentum", "nesterov"}}
    APPLIES_TO: ClassVar[dict[str, set[str]]] = {}
    SELECTOR: ClassVar[str] = ""

    @classmethod
    def unused_in(cls, tree: dict) -> dict[str, str]:
        """Keys of a raw section ``tree`` that its other keys make unused, beyond ``APPLIES_TO``: key -> why."""
        return {}

    def unused_keys(self) -> set[str]:
        """Keys of this section that the chosen variant (e.g. the optimizer name) ignores."""
        chosen = getattr(self, self.SELECTOR, None)
        return {key for key, users in self.APPLIES_TO.items() if chosen not in users}

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info):
        # pydantic would read `epochs: yes` as 1; a boolean where a number or a word belongs is a mistake
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation is not bool and bool not in get_args(annotation):
            choices = choices_of(annotation)
            wanted = f"one of {', '.join(map(repr, choices))}" if choices else "a number"
            raise ValueError(
                f"expected {wanted}, not a boolean (YAML reads yes/no/on/off as true/false; quote the "
                "word if you meant it)"
            )
        return value


def choices_of(annotation: Any) -> tuple:
    """The values a Literal (or Optional[Literal]) annotation allows."""
    args = get_args(annotation)
    if type(None) in args:  # Optional[Literal[...]]
        return tuple(v for arg in args if arg is not type(None) for v in get_args(arg)) + (None,)
    return args
