"""The recipe of a training run and its record: :class:`TrainConfig` and :class:`History`.

Taught in ``04_pretraining.ipynb``. They live apart from the loop (:mod:`companion.pretraining`)
so that the optimiser (:mod:`companion.optimizer`) and the checkpoints
(:mod:`companion.checkpoints`) can read them without importing the loop: the package's imports
run one way, from the loop down to these plain records.

Left out: command-line parsing (scripts build a ``TrainConfig`` in their ``__main__``) and
hyperparameter sweeps.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from companion.environment import resolve_device


@dataclass
class TrainConfig:
    """How to train: a small-model recipe by default (``companion.base_model`` spells out the
    base model's)."""

    steps: int = 1200  # optimiser steps in the whole run
    batch_size: int = 32  # B: windows per micro-batch
    context_length: int = 64  # T: tokens per window (at most the model's context_length)
    learning_rate: float = 3e-3  # peak learning rate, reached at the end of warm-up
    min_learning_rate: float = 3e-4  # the cosine decays to this and stays there
    warmup_steps: int = 100  # linear warm-up from learning_rate / warmup_steps
    decay_steps: int | None = None  # cosine reaches min_learning_rate here; None = steps
    weight_decay: float = 0.1  # AdamW decoupled weight decay on ≥2-D weights only
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW's momentum and second-moment decay
    grad_clip: float | None = 1.0  # clip the global gradient norm to this; None = no clipping
    grad_accumulation: int = 1  # micro-batches per step (effective batch = B × this)
    eval_interval: int = 100  # steps between History rows (validation loss, logged train loss)
    eval_batches: int = 10  # fixed validation batches, drawn once, averaged at every evaluation
    checkpoint_interval: int | None = None  # steps between checkpoints; None = only at the end
    checkpoint_dir: str | None = None  # where checkpoints go; None = no checkpoints
    seed: int = 0  # seeds the batch sampler; +1 the validation batches, +2 dropout
    device: str | None = None  # "cpu", "cuda", "mps" or None for the best available

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives a list back
        _check_train_config(self)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (``betas`` becomes a list)."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; an unknown key raises ``ValueError`` naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)


def _check_train_config(c: TrainConfig) -> None:
    """A ``ValueError`` that names the field and a fix, for every value the loop cannot use."""
    minimums = {"steps": 1, "batch_size": 1, "context_length": 1, "grad_accumulation": 1}
    minimums |= {"eval_interval": 1, "eval_batches": 1, "warmup_steps": 0, "seed": None}
    minimums |= {"decay_steps": c.warmup_steps + 1, "checkpoint_interval": 1}
    for name, minimum in minimums.items():
        value = getattr(c, name)
        if value is None and name in ("decay_steps", "checkpoint_interval"):
            continue  # the two optional fields
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"TrainConfig.{name}={value!r} must be an int")
        if minimum is not None and value < minimum:
            raise ValueError(f"TrainConfig.{name}={value} must be >= {minimum}")
    if not (_is_real(c.learning_rate) and c.learning_rate > 0):
        raise ValueError(f"learning_rate={c.learning_rate} must be a finite number > 0, e.g. 3e-4")
    if not 0 <= c.min_learning_rate <= c.learning_rate:
        raise ValueError(
            f"min_learning_rate={c.min_learning_rate} must be between 0 and "
            f"learning_rate={c.learning_rate}; e.g. learning_rate / 10"
        )
    if c.warmup_steps >= c.steps and c.decay_steps is None:
        raise ValueError(
            f"warmup_steps={c.warmup_steps} leaves no room for decay in steps={c.steps}; "
            "use fewer warm-up steps (about 5-10 % of the run)"
        )
    if c.weight_decay < 0:
        raise ValueError(f"weight_decay={c.weight_decay} must be >= 0 (0 switches it off)")
    if len(c.betas) != 2 or not all(0 <= b < 1 for b in c.betas):
        raise ValueError(f"betas={c.betas} must be two numbers in [0, 1), e.g. (0.9, 0.95)")
    if c.grad_clip is not None and not c.grad_clip > 0:
        raise ValueError(f"grad_clip={c.grad_clip} must be > 0, or None for no clipping")
    if c.device is not None:
        resolve_device(c.device)  # raises a ValueError for a device torch does not know


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The ranges a recipe's field can be given: the words of the message, and the test.
RANGES: dict[str, Any] = {
    "int": (_is_int, "an int"),
    "int >= 0": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "int >= 1": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "> 0": (lambda v: _is_real(v) and v > 0, "a finite number > 0"),
    ">= 0": (lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
    "(0, 1)": (lambda v: _is_real(v) and 0 < v < 1, "a number in (0, 1), ends excluded"),
    "[0, 1]": (lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1]"),
}


def check_recipe(recipe: Any, ranges: dict[str, str]) -> None:
    """A ``ValueError`` naming the first field of ``recipe`` outside its range (a key of
    :data:`RANGES`), so that a recipe is refused when it is built, not steps into training.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Recipe:
    ...     clip: float = 0.2
    >>> check_recipe(Recipe(clip=float("nan")), {"clip": "(0, 1)"})
    Traceback (most recent call last):
    ...
    ValueError: Recipe.clip=nan must be a number in (0, 1), ends excluded
    """
    for name, allowed in ranges.items():
        value = getattr(recipe, name)
        test, words = RANGES[allowed]
        if not test(value):
            raise ValueError(f"{type(recipe).__name__}.{name}={value!r} must be {words}")


def check_loss(loss: Any, step: str) -> None:
    """A ``ValueError`` instead of a step on a loss that is NaN or infinite (the update would
    write NaN into every weight). ``loss`` is a one-number tensor; ``step`` names the trainer."""
    value = loss.item()
    if not math.isfinite(value):
        raise ValueError(
            f"the {step} loss is {value}, so this step would write NaN into the model; nothing "
            "was updated. Check the recipe's numbers and that every reply has tokens"
        )


@dataclass
class History:
    """One row per evaluation; every field is a list with one entry per row (JSON-ready)."""

    step: list[int] = field(default_factory=list)  # optimiser steps completed
    train_loss: list[float] = field(default_factory=list)  # mean train loss since the last row
    val_loss: list[float] = field(default_factory=list)  # mean loss on the fixed val batches
    learning_rate: list[float] = field(default_factory=list)  # of the last step before the row
    tokens_seen: list[int] = field(default_factory=list)  # training tokens so far (B·T·accum·steps)
    seconds: list[float] = field(default_factory=list)  # time in training steps so far (no evals)

    def to_dict(self) -> dict[str, list]:
        """The lists as a dict, for ``json.dumps``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> History:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: list(v) for k, v in data.items()})

    def save(self, path: str | Path) -> Path:
        """Write the history as JSON to ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> History:
        """Read a history written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
