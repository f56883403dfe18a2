"""The training loop every later stage reuses: a config, a history of losses, ``train``.

Taught in ``04_pretraining.ipynb``. Pretraining is next-token prediction repeated: draw a batch
of windows ``x`` (B, T) with targets ``y`` = ``x`` shifted by one, compute the cross-entropy of
the model's logits (B, T, V) against ``y``, take an AdamW step, repeat. :func:`train` does that
for any 1-D token tensor (characters or BPE ids) and, through ``batch_fn``, for any batches
(supervised fine-tuning passes its own, with ``-100`` on the targets it must not learn).

One step, in order:

1. set the learning rate (:func:`companion.optimizer.learning_rate_at`: warm-up, cosine);
2. ``grad_accumulation`` micro-batches: forward (bf16 autocast on CUDA), ``loss / n``, backward;
3. clip the gradient norm to ``grad_clip``; AdamW step; clear the gradients;
4. every ``eval_interval`` steps (and at the last): mean train loss since the last row, loss on
   the fixed validation batches, one row of :class:`History`; every ``checkpoint_interval``
   steps: a checkpoint that :func:`train` can resume from exactly.

The optimiser (AdamW, weight decay on matrices only) and the schedule are in
:mod:`companion.optimizer`. The course base model is trained with this loop by
:mod:`companion.base_model`; checkpoints are written by :mod:`companion.checkpoints`.

Left out: learning-rate finders, distributed data parallelism, ``torch.compile`` (optional in the
benchmark), mixed precision on CPU and MPS (they train in fp32).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from companion.environment import DeviceLike, make_generator, resolve_device
from companion.model import GPT, GPTConfig
from companion.optimizer import learning_rate_at, make_optimizer

Batch = tuple[torch.Tensor, torch.Tensor]  # (x (B, T), y (B, T))
BatchFn = Callable[[Any, torch.Generator], Batch]  # (data, generator) -> batch


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
    seed: int = 0  # seeds the batch sampler (and, +1, the validation batches)
    device: str | None = None  # "cpu", "cuda", "mps" or None for the best available

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives a list back
        positive = ("steps", "batch_size", "context_length", "grad_accumulation")
        positive += ("eval_interval", "eval_batches")
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("warmup_steps", self.warmup_steps, minimum=0)
        _check_int("seed", self.seed, minimum=None)
        if self.decay_steps is not None:
            _check_int("decay_steps", self.decay_steps, minimum=self.warmup_steps + 1)
        if self.checkpoint_interval is not None:
            _check_int("checkpoint_interval", self.checkpoint_interval, minimum=1)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0, e.g. 3e-4")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                f"min_learning_rate={self.min_learning_rate} must be between 0 and "
                f"learning_rate={self.learning_rate}; e.g. learning_rate / 10"
            )
        if self.warmup_steps >= self.steps and self.decay_steps is None:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} leaves no room for decay in steps={self.steps}; "
                "use fewer warm-up steps (about 5-10 % of the run)"
            )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0 (0 switches it off)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas} must be two numbers in [0, 1), e.g. (0.9, 0.95)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be > 0, or None for no clipping")
        if self.device is not None:
            resolve_device(self.device)  # raises a ValueError for a device torch does not know

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


def _check_int(name: str, value: Any, *, minimum: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"TrainConfig.{name}={value!r} must be an int")
    if minimum is not None and value < minimum:
        raise ValueError(f"TrainConfig.{name}={value} must be >= {minimum}")


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


def _check_token_ids(model: nn.Module, tokens: Any, name: str) -> None:
    """Every id in a token stream fits the model's vocabulary: checked once, on the CPU."""
    V = getattr(getattr(model, "config", None), "vocab_size", None)
    if V is None or not isinstance(tokens, torch.Tensor) or tokens.numel() == 0:
        return  # not a GPT, or not a stream: get_batch explains what it needs
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= V:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name} holds token id {bad}, outside the model's vocabulary [0, {V}); encode the "
            f"text with the tokenizer the model was built for, or build the model with "
            f"vocab_size > {high}"
        )


def _autocast(device: torch.device):
    """bf16 autocast on a CUDA GPU with native bf16 (Ampere or newer); fp32 everywhere else.

    Older GPUs, such as Colab's free T4, only emulate bf16 (slowly), so they train in fp32, as
    do the CPU and MPS.
    """
    if device.type == "cuda" and _native_bf16():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _native_bf16() -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch has no including_emulation argument
        return torch.cuda.is_bf16_supported()


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Sequence[Batch], device: DeviceLike = None) -> float:
    """Mean loss of ``model`` over ``batches`` of ``(x, y)`` in eval mode (the mode is restored).

    ``device`` is where the batches and model live (default: the model's parameters' device).
    """
    device = next(model.parameters()).device if device is None else resolve_device(device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    autocast = _autocast(device)
    for x, y in batches:
        with autocast:
            _, loss = model(x, y)
        total += loss.float()
    model.train(was_training)
    return (total / len(batches)).item()  # one host/device sync per evaluation


def train(
    model: nn.Module,
    train_tokens: Any,
    val_tokens: Any,
    config: TrainConfig,
    *,
    progress: bool = True,
    callback: Callable[[int, History, nn.Module], None] | None = None,
    resume_from: str | Path | None = None,
    batch_fn: BatchFn | None = None,
) -> History:
    """Train ``model`` in place for ``config.steps`` steps; returns the :class:`History`.

    ``train_tokens``/``val_tokens`` are 1-D token tensors (N,), or whatever ``batch_fn`` reads:
    ``batch_fn(data, generator) -> (x, y)`` (B, T) draws a batch from ``train_tokens`` or
    ``val_tokens`` (default: :func:`companion.data.get_batch` windows of ``config.batch_size`` ×
    ``config.context_length``). ``callback(step, history, model)`` runs after every step
    (``step`` = steps completed; a new History row exists when ``history.step[-1] == step``).
    ``resume_from`` is a checkpoint directory written by this function: training continues from
    its step with the same model, optimiser, sampler and history, exactly as if never stopped.
    """
    from companion.checkpoints import load_checkpoint, save_checkpoint
    from companion.data import get_batch

    device = resolve_device(config.device)
    model.to(device)
    if batch_fn is None:
        _check_token_ids(model, train_tokens, "train_tokens")
        _check_token_ids(model, val_tokens, "val_tokens")
        B, T = config.batch_size, config.context_length

        def batch_fn(data: torch.Tensor, generator: torch.Generator) -> Batch:
            return get_batch(data, B, T, generator=generator, device=device)

    optimizer = make_optimizer(model, config)
    generator = make_generator(config.seed)  # the training batches' sampler (CPU)
    val_generator = make_generator(config.seed + 1)  # drawn once: the same batches every time
    val_batches = [batch_fn(val_tokens, val_generator) for _ in range(config.eval_batches)]
    history, start, pending = History(), 0, {}
    if resume_from is not None:
        state = load_checkpoint(resume_from, model, optimizer=optimizer, device=device)
        _check_same_run(state.train_config, config)
        history, start = state.history, state.step
        pending = state.extra.get("pending", {})  # train losses summed since the last History row
        generator.set_state(state.generator_state)
        if state.torch_rng_state is not None:
            torch.set_rng_state(state.torch_rng_state)  # dropout draws from the global generator
    model.train()
    autocast = _autocast(device)  # decided once; entered at every step
    tokens_per_step = config.grad_accumulation * config.batch_size * config.context_length
    loss_sum = torch.tensor(pending.get("loss_sum", 0.0), device=device)
    steps_summed = pending.get("steps", 0)
    seconds = pending.get("seconds", history.seconds[-1] if history.seconds else 0.0)
    clock = time.perf_counter()
    bar = _progress_bar(progress, config.steps, start)
    for step in range(start, config.steps):
        lr = learning_rate_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(config.grad_accumulation):
            x, y = batch_fn(train_tokens, generator)
            with autocast:
                _, loss = model(x, y)
            (loss / config.grad_accumulation).backward()
            loss_sum += loss.detach().float() / config.grad_accumulation
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done, steps_summed = step + 1, steps_summed + 1
        if done % config.eval_interval == 0 or done == config.steps:
            seconds += time.perf_counter() - clock
            history.step.append(done)
            history.train_loss.append((loss_sum / steps_summed).item())
            history.val_loss.append(evaluate_loss(model, val_batches, device))
            history.learning_rate.append(lr)
            history.tokens_seen.append(done * tokens_per_step)
            history.seconds.append(seconds)
            loss_sum.zero_()
            steps_summed = 0
            bar.set_postfix(
                train=f"{history.train_loss[-1]:.3f}", val=f"{history.val_loss[-1]:.3f}"
            )
            clock = time.perf_counter()
        paused = time.perf_counter()  # checkpoints and the callback do not count as training time
        interval = config.checkpoint_interval
        if config.checkpoint_dir is not None and (
            done == config.steps or (interval is not None and done % interval == 0)
        ):
            save_checkpoint(
                Path(config.checkpoint_dir) / f"step-{done:06d}",
                model,
                optimizer=optimizer,
                train_config=config,
                history=history,
                step=done,
                generator=generator,
                extra={
                    "pending": {
                        "loss_sum": loss_sum.item(),
                        "steps": steps_summed,
                        "seconds": seconds + paused - clock,
                    }
                },
            )
        bar.update(1)
        if callback is not None:
            callback(done, history, model)
        clock += time.perf_counter() - paused
    bar.close()
    return history


def _progress_bar(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="training", unit="step")


_MAY_DIFFER_ON_RESUME = {"checkpoint_dir", "checkpoint_interval", "device"}


def _check_same_run(saved: TrainConfig | None, config: TrainConfig) -> None:
    """Resuming continues the saved run: every field that shapes the run must be equal."""
    if saved is None:
        raise ValueError("the checkpoint has no TrainConfig, so it cannot be resumed exactly")
    for f in fields(TrainConfig):
        ours, theirs = getattr(config, f.name), getattr(saved, f.name)
        if f.name not in _MAY_DIFFER_ON_RESUME and ours != theirs:
            raise ValueError(
                f"cannot resume: TrainConfig.{f.name} is {ours!r} here but {theirs!r} in the "
                "checkpoint; resume with the checkpoint's config (state.train_config)"
            )


def init_model(config: GPTConfig, *, seed: int, device: DeviceLike = None) -> GPT:
    """``GPT(config)`` initialised from ``seed`` without touching the global RNG's state.

    >>> from companion.model import GPTConfig
    >>> a, b = (init_model(GPTConfig(11, 8, 1, 1, 4), seed=0) for _ in range(2))
    >>> torch.equal(a.wte.weight, b.wte.weight)
    True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(config)
    return model.to(resolve_device(device))
