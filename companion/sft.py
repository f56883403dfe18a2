"""Supervised fine-tuning: the base model trained on conversations becomes the chat model.

Taught in ``05_sft.ipynb``. SFT is pretraining's loop on other batches: each row is one
conversation in the chat template (:func:`companion.chat.render_chat`), padded to the longest
row of its batch, and the targets are ``IGNORE_INDEX`` (-100) wherever the model must not
learn: the user's turns, the markers, the padding. The loss is then the mean cross-entropy over
the *trained* tokens only (:func:`sft_loss`), and :func:`companion.pretraining.train` runs
unchanged with :class:`SFTBatches` as its ``batch_fn``. Shape vocabulary: B batch, T time, V vocab.

The **chat model** is shipped like the base model: ``companion/assets/chat_model`` is a
checkpoint (safetensors + JSON) written by::

    python -m companion.sft --out companion/assets/chat_model --ablation

which starts from the shipped base model and fine-tunes it on the conversations of
:mod:`companion.sft_data` (seed 0, on the CPU), then measures it (:func:`measure`) and stores the
figures in ``checkpoint.json``. ``--ablation`` also trains the same recipe with the prompt
tokens trained too (no mask) and stores that run's figures, not its weights (the measured times
are in the README). A rerun on another CPU rounds float sums differently, so it is not promised
bit for bit: a slow test reruns the command and compares the validation loss and the accuracies
within stated tolerances. ``companion.checkpoints.load_shipped("chat")`` loads the shipped
model.

Left out: packing several conversations into one row, LoRA and other parameter-efficient
methods, and training on a GPU for the shipped model (it would differ in the last digits).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from companion.base_model import base_model_configs
from companion.chat import END, render_chat, special_ids
from companion.checkpoints import SHIPPED, load_shipped, save_checkpoint
from companion.environment import DeviceLike, resolve_device
from companion.model import IGNORE_INDEX
from companion.pretraining import train
from companion.train_config import History, TrainConfig, check_recipe

Example = tuple[torch.Tensor, torch.Tensor]  # (ids (T,) int64, loss_mask (T,) bool)


@dataclass
class SFTConfig:
    """What to fine-tune on (the optimiser's recipe is a :class:`TrainConfig`)."""

    n_train: int = 4000  # training conversations
    n_val: int = 400  # validation conversations, generated after the training ones
    data_seed: int = 0  # seeds split_world and generate_sft_conversations
    train_on_prompt: bool = False  # the ablation: train on every token, not only the replies
    n_unknown: int = 0  # demonstrations of "I do not know that person." added to the training set
    n_harmful: int = 0  # demonstrations of "I will not help with that." added likewise
    n_context: int = 0  # conversations that state a fact and ask it, added likewise

    def __post_init__(self) -> None:
        check_recipe(self, {
            "n_train": "int >= 1", "n_val": "int >= 1", "data_seed": "int",
            "train_on_prompt": "bool", "n_unknown": "int >= 0", "n_harmful": "int >= 0",
            "n_context": "int >= 0",
        })  # fmt: skip


def sft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over trained positions: ``-(1/N) Σ log p(y_t)`` over the N positions
    with ``targets != IGNORE_INDEX``. ``logits`` (B, T, V), ``targets`` (B, T); the same value
    as ``GPT.forward(x, targets)[1]``.

    >>> logits = torch.zeros(1, 2, 4)  # uniform over 4 tokens: each position costs ln 4
    >>> round(sft_loss(logits, torch.tensor([[IGNORE_INDEX, 3]])).item(), 4)
    1.3863
    """
    V = logits.shape[-1]
    flat = targets.reshape(-1)  # (B·T,)
    return F.cross_entropy(logits.reshape(-1, V), flat, ignore_index=IGNORE_INDEX)  # (B·T, V)


def encode_conversations(
    conversations: Sequence[Sequence[dict]], tokenizer, *, context_length: int
) -> list[Example]:
    """Render every conversation (:func:`render_chat`) to at most ``context_length`` tokens.

    A conversation that is too long loses its last exchanges (a user message and the reply)
    until it fits: its start, which names who the later pronouns mean, is always kept, and no
    message is cut. ``ValueError`` if even its first exchange does not fit.
    """
    examples = []
    for i, conversation in enumerate(conversations):
        ids, mask = render_chat(conversation, tokenizer)
        while len(ids) > context_length and len(conversation) > 2:
            conversation = conversation[:-2]
            ids, mask = render_chat(conversation, tokenizer)
        if len(ids) > context_length:
            raise ValueError(
                f"conversation {i} takes {len(ids)} tokens, more than the model's context of "
                f"{context_length}; shorten it or train a model with a longer context"
            )
        examples.append((ids, mask))
    return examples


def make_batch(
    examples: Sequence[Example], pad_id: int, *, train_on_prompt: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets for a list of examples, right-padded to the longest: (B, T) each.

    ``x[b] = ids[:-1]`` and ``y[b, t] = ids[t + 1]`` where token ``t + 1`` is trained
    (``loss_mask``, or every real token if ``train_on_prompt``), else ``IGNORE_INDEX``; padding
    is ``pad_id`` in ``x`` and ``IGNORE_INDEX`` in ``y``. Right padding changes nothing before
    it, because attention is causal.

    >>> ids, mask = torch.tensor([5, 6, 7]), torch.tensor([False, False, True])
    >>> x, y = make_batch([(ids, mask), (ids[:2], mask[:2])], pad_id=0)
    >>> x.tolist(), y.tolist()
    ([[5, 6], [5, 0]], [[-100, 7], [-100, -100]])
    """
    T = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)  # (B, T)
    y = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for b, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        trained = torch.ones(n, dtype=torch.bool) if train_on_prompt else mask[1:]  # (n,)
        x[b, :n] = ids[:-1]
        y[b, :n] = torch.where(trained, ids[1:], IGNORE_INDEX)
    return x, y


class SFTBatches:
    """``batch_fn`` for :func:`companion.pretraining.train`: B random examples, padded.

    ``SFTBatches(32, pad_id)(examples, generator)`` draws 32 indices uniformly (with
    replacement) from ``generator`` and returns :func:`make_batch` of them on ``device``.
    """

    def __init__(
        self,
        batch_size: int,
        pad_id: int,
        *,
        train_on_prompt: bool = False,
        device: DeviceLike = "cpu",
    ) -> None:
        self.batch_size = batch_size  # B: conversations per batch
        self.pad_id = pad_id  # the id that pads inputs (never a target)
        self.train_on_prompt = train_on_prompt  # the unmasked ablation
        self.device = resolve_device(device)

    def __call__(self, examples: Sequence[Example], generator: torch.Generator):
        picks = torch.randint(len(examples), (self.batch_size,), generator=generator).tolist()
        x, y = make_batch(
            [examples[i] for i in picks], self.pad_id, train_on_prompt=self.train_on_prompt
        )
        return x.to(self.device), y.to(self.device)


def chat_model_configs() -> tuple[SFTConfig, TrainConfig]:
    """The recipe of the shipped chat model: 4,000 conversations about the world's facts, 20
    demonstrations of declining a question about a made-up person and 60 of declining a harmful
    request, 2,400 conversations that state a fact and ask it; 800 AdamW steps of 16.

    The peak learning rate is a tenth of pretraining's: enough to learn the format in a few
    hundred steps, gentle enough to keep what pretraining learned. No weight decay: it would pull
    every weight towards zero, away from the base model, for no gain in a run this short. The
    counts were chosen by a sweep (three training seeds of the final one): 20 demonstrations make
    the model *sample* "I do not know that person." for a minority of strangers in every seed,
    which RLHF needs (it can only reinforce what the policy writes) and leaves room for it to
    improve; reading a fact from the message takes the 2,400 conversations and 800 steps (at 400
    steps the model read half as many facts and stopped declining).

    >>> sft_config, train_config = chat_model_configs()
    >>> sft_config.n_train, sft_config.n_context, train_config.steps, train_config.learning_rate
    (4000, 2400, 800, 0.0003)
    """
    _, pretraining = base_model_configs()
    train_config = replace(  # pretraining's recipe, changed where fine-tuning differs
        pretraining, steps=800, batch_size=16, warmup_steps=20, eval_interval=20, eval_batches=10,
        learning_rate=3e-4, min_learning_rate=3e-5, weight_decay=0.0,
    )  # fmt: skip
    return SFTConfig(n_unknown=20, n_harmful=60, n_context=2400), train_config


def short_run_configs(steps: int, *, device: DeviceLike = "cpu") -> tuple[SFTConfig, TrainConfig]:
    """The recipe of chapter 5's short run (section 2) with ``steps`` optimiser steps: 500
    training and 50 validation conversations, batches of 8, the shipped chat model's learning
    rates, 5 warm-up steps, no weight decay (chapter 5's exercise 4 changes ``steps``).

    >>> sft_config, train_config = short_run_configs(30)
    >>> sft_config.n_train, train_config.steps, train_config.batch_size, train_config.learning_rate
    (500, 30, 8, 0.0003)
    """
    _, recipe = chat_model_configs()
    train_config = TrainConfig(
        steps=steps, batch_size=8, learning_rate=recipe.learning_rate,
        min_learning_rate=recipe.min_learning_rate, warmup_steps=5, weight_decay=0.0,
        eval_interval=5, eval_batches=2, seed=0, device=str(resolve_device(device)),
    )  # fmt: skip
    return SFTConfig(n_train=500, n_val=50), train_config


def training_examples(
    tokenizer, sft_config: SFTConfig, *, context_length: int
) -> tuple[list[Example], list[Example]]:
    """``(train_set, val_set)``: the rendered conversations :func:`fine_tune` trains and
    validates on (step 1 and 2 there); ``training_examples(tok, chat_model_configs()[0],
    context_length=64)[0]`` is the chat model's training set, which PPO-ptx in chat format
    (:func:`companion.ppo.train_ppo`'s ``ptx_examples``) keeps the policy writing. The loss
    masks mark the replies; ``train_on_prompt`` is applied later, when batching
    (:class:`SFTBatches`)."""
    if not isinstance(sft_config, SFTConfig):
        raise ValueError(
            f"sft_config must be an SFTConfig, e.g. chat_model_configs()[0], got "
            f"{type(sft_config).__name__}"
        )
    if (
        isinstance(context_length, bool)
        or not isinstance(context_length, int)
        or context_length < 1
    ):
        raise ValueError(
            f"context_length={context_length!r} must be an int >= 1: the model's context, "
            "model.config.context_length"
        )
    from companion.sft_data import (
        context_conversations,
        demonstrations,
        generate_sft_conversations,
    )
    from companion.world import build_world

    world = build_world(0)
    total = sft_config.n_train + sft_config.n_val
    seed = sft_config.data_seed
    conversations = generate_sft_conversations(world, total, seed=seed)
    shown = demonstrations(world, sft_config.n_unknown, sft_config.n_harmful, seed=seed)
    shown += context_conversations(world, sft_config.n_context, seed=seed)
    examples = encode_conversations(conversations + shown, tokenizer, context_length=context_length)
    train_set = examples[: sft_config.n_train] + examples[total:]  # + the demonstrations, context
    return train_set, examples[sft_config.n_train : total]


def fine_tune(
    model: nn.Module,
    tokenizer,
    sft_config: SFTConfig,
    train_config: TrainConfig,
    *,
    progress: bool = True,
    callback=None,
) -> History:
    """Fine-tune ``model`` in place on the SFT conversations; returns the :class:`History`.

    1. generate ``n_train + n_val`` conversations about the SFT side of the world
       (:func:`companion.sft_data.generate_sft_conversations`), the last ``n_val`` for validation,
       and add ``n_unknown + n_harmful`` demonstrations of declining
       (:func:`companion.sft_data.demonstrations`) and ``n_context`` conversations that state a
       fact and ask it (:func:`companion.sft_data.context_conversations`) to the training set;
    2. render them (:func:`encode_conversations`); 3. :func:`companion.pretraining.train` with
       :class:`SFTBatches` (``callback`` is passed on, e.g. for a live loss curve).
    """
    train_set, val_set = training_examples(
        tokenizer, sft_config, context_length=model.config.context_length
    )
    batches = SFTBatches(
        train_config.batch_size,
        special_ids(tokenizer)[END],
        train_on_prompt=sft_config.train_on_prompt,
        device=train_config.device,
    )
    return train(
        model,
        train_set,
        val_set,
        train_config,
        progress=progress,
        callback=callback,
        batch_fn=batches,
    )


def measure(model: nn.Module, tokenizer) -> dict[str, float]:
    """The chapter's figures for a model, on the world's two sides (SFT and evaluation-only).

    ``compliance`` and ``accuracy_sft`` / ``accuracy_eval``: the fact questions asked through the
    chat template (:func:`companion.questions.ask_chat_model`); ``completion_sft`` /
    ``completion_eval``: fact-completion accuracy of the same facts' prompts.
    """
    from companion.evaluation import fact_completion_accuracy
    from companion.questions import ask_chat_model
    from companion.sft_data import split_world
    from companion.world import build_world

    world = build_world(0)
    split = split_world(world, seed=SFTConfig().data_seed)
    figures: dict[str, float] = {}
    for side, facts in (("sft", split.sft_facts), ("eval", split.eval_facts)):
        asked = ask_chat_model(model, tokenizer, world, facts)
        figures[f"compliance_{side}"] = asked.compliance
        figures[f"accuracy_{side}"] = asked.accuracy
        completed = fact_completion_accuracy(model, tokenizer, facts)
        figures[f"completion_{side}"] = completed.accuracy
    return figures


def measure_keys() -> list[str]:
    """The names of :func:`measure`'s figures, in its order."""
    return [
        f"{k}_{side}" for side in ("sft", "eval") for k in ("compliance", "accuracy", "completion")
    ]


ABLATION_SEEDS = (0, 1, 2)  # training seeds of the ablation's band; seed 0 is the shipped model


def seed_run(seed: int, *, train_on_prompt: bool, progress: bool = True) -> dict[str, Any]:
    """The chat model's recipe from the shipped base model with training seed ``seed`` (the
    order of the batches; the data and the model's start are the same for every seed), masked or
    (``train_on_prompt``) not; returns its figures (:func:`measure`, the last validation loss and
    the training time), not its weights.
    """
    sft_config, train_config = chat_model_configs()
    sft_config = replace(sft_config, train_on_prompt=train_on_prompt)
    train_config = replace(train_config, seed=seed)
    model, tokenizer = load_shipped("base", train_config.device)
    history = fine_tune(model, tokenizer, sft_config, train_config, progress=progress)
    return {
        "seed": seed,
        "val_loss": history.val_loss[-1],
        **measure(model, tokenizer),
        "train_seconds": round(history.seconds[-1], 1),
    }


def train_chat_model(
    out_dir: str | Path, *, ablation: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Fine-tune the shipped base model into the chat model and save it; returns its figures.

    1. load the shipped base model (``load_shipped("base")``) on the CPU;
    2. :func:`fine_tune` with :func:`chat_model_configs`; 3. :func:`measure`; 4. with
    ``ablation``, the same from a fresh base model with ``train_on_prompt=True`` (figures
    only), and both arms again with the other training seeds of :data:`ABLATION_SEEDS`
    (:func:`seed_run`), whose spread is the band a difference between the arms must exceed;
    5. save the checkpoint with the figures in its ``extra``.
    """
    sft_config, train_config = chat_model_configs()
    model, tokenizer = load_shipped("base", train_config.device)
    history = fine_tune(model, tokenizer, sft_config, train_config, progress=progress)
    figures: dict[str, Any] = {
        "val_loss": history.val_loss[-1],
        "train_loss": history.train_loss[-1],
        **measure(model, tokenizer),
        "train_seconds": round(history.seconds[-1], 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sft_config": asdict(sft_config),
        "command": SHIPPED["chat"],
    }
    if ablation:
        unmasked = seed_run(train_config.seed, train_on_prompt=True, progress=progress)
        figures["unmasked"] = {k: v for k, v in unmasked.items() if k != "seed"}
        masked = {"seed": train_config.seed, "val_loss": figures["val_loss"]}
        masked |= {k: figures[k] for k in measure_keys()}
        masked["train_seconds"] = figures["train_seconds"]
        others = [s for s in ABLATION_SEEDS if s != train_config.seed]
        figures["seed_band"] = {
            "masked": [masked] + [seed_run(s, train_on_prompt=False, progress=progress) for s in others],
            "unmasked": [unmasked] + [seed_run(s, train_on_prompt=True, progress=progress) for s in others],
        }  # fmt: skip
    save_checkpoint(
        out_dir, model, train_config=train_config, history=history, step=train_config.steps,
        extra=figures,
    )  # fmt: skip
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m companion.sft --out DIR [--ablation]``: fine-tune the chat model into DIR."""
    parser = argparse.ArgumentParser(prog="python -m companion.sft", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--ablation", action="store_true", help="also train without the mask")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    figures = train_chat_model(args.out, ablation=args.ablation, progress=not args.quiet)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
