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
   the fixed validation batches, one row of :class:`~companion.train_config.History`; every
   ``checkpoint_interval`` steps: a checkpoint that :func:`train` can resume from exactly.

Step 4's bookkeeping (evaluation, checkpoints, the progress bar, the stopwatch) lives in
:class:`_Run`, so that the loop in :func:`train` reads as the four steps above. Randomness:
``config.seed`` seeds the batch sampler, ``seed + 1`` the validation batches and ``seed + 2``
dropout (drawn from torch's global generator inside a fork, so the caller's state is untouched).

The recipe and the record (:class:`~companion.train_config.TrainConfig`, ``History``) are in
:mod:`companion.train_config`, the optimiser and the schedule in :mod:`companion.optimizer`,
checkpoints in :mod:`companion.checkpoints`. The course base model is trained with this loop by
:mod:`companion.base_model`.

**Several processes** (``torchrun --nproc_per_node=N``, :mod:`companion.distributed`): the same
``train`` wraps the model in DistributedDataParallel, so step 2's backward ends with the
gradients averaged over the ranks. Rank r draws its batches from
:func:`~companion.distributed.rank_seed` ``(seed, r)`` (rank 0 from ``seed``, as one process
does), the logged train loss is the mean over the ranks, rank 0 alone writes the checkpoints
(with every rank's random streams in them) and a run resumes with the same number of processes.
With no torchrun in the environment none of this happens: one process runs as it always did.

Left out: learning-rate finders, ``torch.compile`` (optional in the benchmark), mixed precision
on CPU and MPS (they train in fp32), model parallelism (FSDP, tensor parallelism).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from companion import distributed
from companion.checkpoints import checkpoint_info, load_checkpoint, save_checkpoint
from companion.data import get_batch
from companion.environment import DeviceLike, make_generator, resolve_device
from companion.model import GPT, GPTConfig, check_token_ids
from companion.optimizer import learning_rate_at, make_optimizer
from companion.train_config import History, TrainConfig

Batch = tuple[torch.Tensor, torch.Tensor]  # (x (B, T), y (B, T))
BatchFn = Callable[[Any, torch.Generator], Batch]  # (data, generator) -> batch


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
    its step with the same model, optimiser, random streams and history, as if never stopped.
    Under ``torchrun`` every rank calls this with the same arguments (module docstring).
    """
    ranks, device = distributed.setup(config.device)
    model.to(device)
    if batch_fn is None:
        batch_fn = _window_batches(model, config, device, train_tokens, val_tokens)
    optimizer = make_optimizer(model, config)
    run = _Run(model, optimizer, config, batch_fn, val_tokens, progress, ranks)
    if resume_from is not None:
        run.resume(resume_from)
    autocast = _autocast(device)  # decided once; entered at every step
    model.train()
    stepper = _data_parallel(model, device) if ranks.distributed else model
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        run.seed_dropout()
        for step in range(run.step, config.steps):
            started = time.perf_counter()
            # 1. the learning rate of this step
            lr = learning_rate_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # 2. forward and backward over the micro-batches; gradients add up in .grad
            for micro in range(config.grad_accumulation):
                x, y = batch_fn(train_tokens, run.generator)  # (B, T) each
                with _sync_gradients(stepper, micro + 1 == config.grad_accumulation):
                    with autocast:
                        _, loss = stepper(x, y)
                    loss = loss / config.grad_accumulation  # so the step's gradient is their mean
                    loss.backward()  # under DDP: the last micro-batch all-reduces the gradients
                run.loss_sum += loss.detach().float()
            # 3. clip, update, clear
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run.seconds += time.perf_counter() - started
            # 4. log, evaluate, checkpoint, report
            run.after_step(step + 1, lr, callback)
    run.bar.close()
    return run.history


class _Run:
    """The bookkeeping of one :func:`train` run: everything but the step itself.

    Holds the random streams, the fixed validation batches, the history, the train losses summed
    since the last History row (on the device: no sync per step), the training-time stopwatch
    (evaluations, checkpoints and callbacks are not training time) and the progress bar.
    """

    def __init__(
        self, model, optimizer, config: TrainConfig, batch_fn, val_tokens, progress, ranks
    ):
        from tqdm.auto import tqdm

        self.model, self.optimizer, self.config, self.ranks = model, optimizer, config, ranks
        val_generator = make_generator(config.seed + 1)  # drawn once: the same batches every time
        self.val_batches = [batch_fn(val_tokens, val_generator) for _ in range(config.eval_batches)]
        self.generator = make_generator(distributed.rank_seed(config.seed, ranks.rank))  # (CPU)
        self.history, self.step, self.seconds, self.torch_rng_state = History(), 0, 0.0, None
        self.loss_sum = torch.zeros((), device=next(model.parameters()).device)
        self.steps_summed = 0
        show = progress and ranks.is_main
        self.bar = tqdm(total=config.steps, disable=not show, desc="training", unit="step")

    def resume(self, path: str | Path) -> None:
        """Continue the run saved at ``path``: model, optimiser, streams, history, sums."""
        info = checkpoint_info(path)  # checked first: a refused resume leaves the model alone
        saved = info["train_config"]
        _check_same_run(TrainConfig.from_dict(saved) if saved else None, self.config)
        _check_same_world(info["extra"].get("world_size", 1), self.ranks.world_size)
        state = load_checkpoint(
            path, self.model, optimizer=self.optimizer, device=self.loss_sum.device
        )
        pending = state.extra.get("pending", {})  # what was summed since the last History row
        self.history, self.step = state.history, state.step
        self.loss_sum += pending.get("loss_sum", 0.0)
        self.steps_summed = pending.get("steps", 0)
        self.seconds = pending.get("seconds", 0.0)
        self.generator.set_state(state.generator_state)
        self.torch_rng_state = state.torch_rng_state
        if self.ranks.distributed:  # every rank's streams and sums are in extra
            streams = state.extra["rank_streams"][self.ranks.rank]
            self.generator.set_state(torch.tensor(streams[0], dtype=torch.uint8))
            self.torch_rng_state = torch.tensor(streams[1], dtype=torch.uint8)
            self.loss_sum.fill_(streams[2])
        self.bar.update(self.step)

    def seed_dropout(self) -> None:
        """Dropout draws from torch's global generator: seed it, or restore it on resume."""
        if self.torch_rng_state is not None:
            torch.set_rng_state(self.torch_rng_state)
        else:
            torch.manual_seed(distributed.rank_seed(self.config.seed + 2, self.ranks.rank))

    def save(self, path: Path, done: int) -> None:
        """A checkpoint written by rank 0 alone; under DDP it carries every rank's streams."""
        pending = {"loss_sum": self.loss_sum.item(), "steps": self.steps_summed}
        extra = {"pending": pending | {"seconds": self.seconds}}
        if self.ranks.distributed:  # the sampler's and dropout's state of every rank, gathered
            mine = (self.generator.get_state().tolist(), torch.get_rng_state().tolist())
            mine += (pending["loss_sum"],)  # each rank's own train losses since the last row
            extra |= {"world_size": self.ranks.world_size}
            extra |= {"rank_streams": distributed.gather_objects(mine)}
        if self.ranks.is_main:
            save_checkpoint(
                path, self.model, optimizer=self.optimizer, train_config=self.config,
                history=self.history, step=done, generator=self.generator, extra=extra,
            )  # fmt: skip
        if self.ranks.distributed:
            torch.distributed.barrier()  # nobody reads the checkpoint before it is complete

    def after_step(self, done: int, lr: float, callback) -> None:
        """Log a History row, save a checkpoint and call ``callback`` when each is due."""
        c = self.config
        self.steps_summed += 1
        if done % c.eval_interval == 0 or done == c.steps:
            h = self.history
            h.step.append(done)
            h.train_loss.append(
                distributed.mean_over_ranks(self.loss_sum / self.steps_summed).item()
            )
            h.val_loss.append(evaluate_loss(self.model, self.val_batches))
            h.learning_rate.append(lr)
            tokens_per_step = c.grad_accumulation * c.batch_size * c.context_length
            h.tokens_seen.append(done * tokens_per_step * self.ranks.world_size)  # all ranks
            h.seconds.append(self.seconds)
            self.loss_sum.zero_()
            self.steps_summed = 0
            self.bar.set_postfix(train=f"{h.train_loss[-1]:.3f}", val=f"{h.val_loss[-1]:.3f}")
        every = c.checkpoint_interval
        if c.checkpoint_dir is not None and (done == c.steps or (every and done % every == 0)):
            self.save(Path(c.checkpoint_dir) / f"step-{done:06d}", done)
        self.bar.update(1)
        if callback is not None:
            callback(done, self.history, self.model)


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


def _check_same_world(saved: int, world_size: int) -> None:
    """Each rank's batch stream is in the checkpoint: resume with as many processes."""
    if saved != world_size:
        how = "without torchrun" if saved == 1 else f"with torchrun --nproc_per_node={saved}"
        raise ValueError(
            f"cannot resume: the checkpoint was written by a run of {saved} process(es), this "
            f"run has {world_size}; resume it {how}, or start a new run from its weights "
            "(load_checkpoint(path, model) and train without resume_from)"
        )


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DDP, which broadcasts rank 0's weights and averages gradients."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _sync_gradients(stepper: nn.Module, last_micro_batch: bool):
    """DDP all-reduces only at the step's last micro-batch; the others add up locally."""
    if last_micro_batch or not hasattr(stepper, "no_sync"):
        return nullcontext()
    return stepper.no_sync()


def _window_batches(model, config: TrainConfig, device, train_tokens, val_tokens) -> BatchFn:
    """The default ``batch_fn``: random windows of a token stream, checked once against the
    model's vocabulary before the first step."""
    for name, tokens in (("train_tokens", train_tokens), ("val_tokens", val_tokens)):
        if isinstance(tokens, torch.Tensor):  # anything else: get_batch says what it needs
            check_token_ids(tokens.cpu(), model.config.vocab_size, name)
    B, T = config.batch_size, config.context_length

    def batch_fn(tokens: torch.Tensor, generator: torch.Generator) -> Batch:
        return get_batch(tokens, B, T, generator=generator, device=device)

    return batch_fn


def compute_dtype(device: torch.device) -> torch.dtype:
    """The precision ``train``'s matrix products run in on ``device``: bfloat16 on a CUDA GPU
    with native bf16 (Ampere or newer), float32 everywhere else.

    Older GPUs, such as Colab's free T4, only emulate bf16 (slowly), so they train in fp32, as
    do the CPU and MPS.
    """
    return torch.bfloat16 if device.type == "cuda" and _native_bf16() else torch.float32


def _autocast(device: torch.device):
    """bf16 autocast where :func:`compute_dtype` says bf16; nothing (fp32) elsewhere."""
    if compute_dtype(device) == torch.bfloat16:
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
    with _autocast(device):
        for x, y in batches:
            total += model(x, y)[1].float()
    model.train(was_training)
    return (total / len(batches)).item()  # one host/device sync per evaluation


def init_model(config: GPTConfig, *, seed: int, device: DeviceLike = None) -> GPT:
    """``GPT(config)`` initialised from ``seed`` without touching the global RNG's state.

    >>> a, b = (init_model(GPTConfig(11, 8, 1, 1, 4), seed=0) for _ in range(2))
    >>> torch.equal(a.wte.weight, b.wte.weight)
    True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(config)
    return model.to(resolve_device(device))
