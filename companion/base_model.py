"""The course base model: its recipe and the command that trains it.

Taught in ``04_pretraining.ipynb``; every later chapter starts from the model that
``companion.checkpoints.load_shipped("base")`` returns. The model is a 0.9 M-parameter GPT
(4 blocks of width 128, context 64) trained on the course corpus (:mod:`companion.data`) with
:func:`companion.pretraining.train`: 1,200 AdamW steps of 32 × 64 tokens, about 2.5 M tokens or
5 passes over the corpus, on the CPU, seed 0.

It is **shipped**, not trained on the spot: ``companion/assets/base_model`` is a checkpoint
(3.6 MB of float32 weights, no optimiser state) written by::

    python -m companion.base_model --out companion/assets/base_model

(its measured time is in the README and in ``checkpoint.json``). The run is deterministic given
the seed; on another CPU or thread count float sums round differently, so a rerun is not
promised bit for bit: a test reruns it and checks the configuration and a validation loss within
0.02 of the shipped one. ``checkpoint.json`` records both configs, the loss
history, the final validation loss and the fact-completion accuracy over the world's 160 facts.

Left out: larger variants, and training on a GPU (it would differ in the last digits).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from companion.checkpoints import SHIPPED, save_checkpoint
from companion.data import COURSE_VOCAB_SIZE, encode_corpus, load_course_tokenizer, train_val_split
from companion.evaluation import fact_completion_accuracy
from companion.model import GPTConfig, count_parameters
from companion.pretraining import init_model, train
from companion.train_config import TrainConfig
from companion.world import build_world


def base_model_configs() -> tuple[GPTConfig, TrainConfig]:
    """The (GPTConfig, TrainConfig) of the course base model.

    >>> model_config, train_config = base_model_configs()
    >>> model_config.n_layer, model_config.d_model, train_config.steps, train_config.batch_size
    (4, 128, 1200, 32)
    """
    model_config = GPTConfig(
        vocab_size=COURSE_VOCAB_SIZE, context_length=64, n_layer=4, n_head=4, d_model=128
    )
    train_config = TrainConfig(
        steps=1200,
        batch_size=32,
        context_length=64,
        learning_rate=3e-3,
        min_learning_rate=3e-4,
        warmup_steps=100,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        grad_clip=1.0,
        eval_interval=200,
        eval_batches=20,
        seed=0,
        device="cpu",
    )
    return model_config, train_config


def train_base_model(out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train the course base model and save it to ``out_dir``; returns its figures.

    1. tokenise the course corpus and split it 90/10 (:func:`companion.data.train_val_split`);
    2. :func:`companion.pretraining.init_model` with the seed; 3. :func:`train`;
    4. greedy fact-completion accuracy over ``build_world().facts``; 5. save the checkpoint with
    the figures (final val loss, fact accuracy, seconds, parameters) in its ``extra``.
    """
    model_config, train_config = base_model_configs()
    train_tokens, val_tokens = train_val_split(encode_corpus(), 0.1)
    model = init_model(model_config, seed=train_config.seed, device=train_config.device)
    history = train(model, train_tokens, val_tokens, train_config, progress=progress)
    facts = build_world().facts
    result = fact_completion_accuracy(model, load_course_tokenizer(), facts)
    figures = {
        "val_loss": history.val_loss[-1],
        "train_loss": history.train_loss[-1],
        "fact_accuracy": result.accuracy,
        "facts": len(facts),
        "train_seconds": round(history.seconds[-1], 1),
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(model_config),
        "torch": torch.__version__,
        "command": SHIPPED["base"],
    }
    save_checkpoint(
        out_dir,
        model,
        train_config=train_config,
        history=history,
        step=train_config.steps,
        extra=figures,
    )
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m companion.base_model --out DIR``: train the base model and save it to DIR."""
    parser = argparse.ArgumentParser(prog="python -m companion.base_model", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    print(json.dumps(train_base_model(args.out, progress=not args.quiet), indent=1))


if __name__ == "__main__":
    main()
