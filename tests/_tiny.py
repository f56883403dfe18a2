"""A tiny corpus, model and training config that the training tests share (CPU and devices)."""

from __future__ import annotations

import torch

from companion.char_tokenizer import CharTokenizer
from companion.model import GPTConfig
from companion.train_config import TrainConfig

TEXT = "the cat sat on the mat. " * 40
TOKENIZER = CharTokenizer.from_text(TEXT)
TOKENS = torch.tensor(TOKENIZER.encode(TEXT))
TINY = GPTConfig(
    vocab_size=TOKENIZER.vocab_size, context_length=16, n_layer=1, n_head=2, d_model=16
)


def tiny_config(**changes) -> TrainConfig:
    values = dict(
        steps=8, batch_size=4, context_length=16, learning_rate=3e-3, warmup_steps=2,
        eval_interval=2, eval_batches=2, device="cpu",
    )  # fmt: skip
    return TrainConfig(**(values | changes))
