"""Generation: greedy determinism, seeded sampling, top-k, context cropping, bad input."""

from __future__ import annotations

import pytest
import torch

from companion.environment import make_generator
from companion.generation import generate, sample_next
from companion.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=23, context_length=6, n_layer=1, n_head=2, d_model=16)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG)


PROMPT = torch.tensor([[1, 2, 3], [4, 5, 6]])


def test_greedy_is_deterministic_and_takes_the_argmax(model: GPT):
    a = generate(model, PROMPT, 8, temperature=0)
    b = generate(model, PROMPT, 8, temperature=0)
    assert a.shape == (2, 11) and torch.equal(a, b)
    assert torch.equal(a[:, :3], PROMPT)
    logits, _ = model(a[:, :3])
    assert torch.equal(a[:, 3], logits[:, -1].argmax(-1))


def test_same_generator_seed_gives_the_same_sample(model: GPT):
    a = generate(model, PROMPT, 10, generator=make_generator(7))
    b = generate(model, PROMPT, 10, generator=make_generator(7))
    c = generate(model, PROMPT, 10, generator=make_generator(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_top_k_one_equals_greedy(model: GPT):
    greedy = generate(model, PROMPT, 8, temperature=0)
    top1 = generate(model, PROMPT, 8, temperature=1.5, top_k=1, generator=make_generator(0))
    assert torch.equal(greedy, top1)


def test_top_k_only_samples_from_the_k_largest():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, -2.0]])
    g = make_generator(0)
    draws = {int(sample_next(logits, top_k=2, temperature=10.0, generator=g)) for _ in range(200)}
    assert draws == {1, 3}


def test_context_is_cropped_to_context_length(model: GPT):
    long_prompt = torch.arange(10)[None] % CONFIG.vocab_size  # longer than context_length=6
    out = generate(model, long_prompt, 1, temperature=0)
    logits, _ = model(long_prompt[:, -CONFIG.context_length :])
    assert out.shape == (1, 11)
    assert out[0, -1] == logits[0, -1].argmax()


def test_restores_training_mode(model: GPT):
    model.train()
    generate(model, PROMPT, 1, temperature=0)
    assert model.training
    model.eval()
    generate(model, PROMPT, 1, temperature=0)
    assert not model.training


def test_zero_new_tokens_returns_the_prompt(model: GPT):
    assert torch.equal(generate(model, PROMPT, 0), PROMPT)


def test_bad_arguments_raise(model: GPT):
    with pytest.raises(ValueError, match="temperature=-1"):
        generate(model, PROMPT, 1, temperature=-1)
    with pytest.raises(ValueError, match="top_k=0"):
        generate(model, PROMPT, 1, top_k=0)
    with pytest.raises(ValueError, match="top_k=24 must be between 1 and the vocabulary size 23"):
        generate(model, PROMPT, 1, top_k=24)
    with pytest.raises(ValueError, match="max_new_tokens=-2"):
        generate(model, PROMPT, -2)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        generate(model, torch.tensor([1, 2]), 1)
    with pytest.raises(ValueError, match=r"logits must be \(B, V\)"):
        sample_next(torch.zeros(1, 2, 3))
