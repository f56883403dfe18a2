"""The Llama-style model's KV cache: cached against uncached logits at every decoding step, and
sampling far from temperature 1 equal draw for draw (chapter 7's cache on chapter 9's model,
without the model file: a tiny random model)."""

from __future__ import annotations

import copy
import doctest
import math

import pytest
import torch

import companion.kv_cache
from companion.environment import make_generator
from companion.generation import generate, next_token_probs
from companion.kv_cache import CachedGPT
from companion.llama import Llama, LlamaConfig
from companion.model import GPT, GPTConfig

LLAMA_TINY = LlamaConfig(
    vocab_size=29, context_length=12, n_layer=2, n_head=4, d_model=32, n_kv_head=2, d_ff=48,
    rope_base=100.0, tie_embeddings=False,
)  # fmt: skip
GPT_TINY = GPTConfig(vocab_size=29, context_length=12, n_layer=2, n_head=4, d_model=32)
PROMPT = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
U = 2.0**-24  # float32's unit roundoff


@pytest.fixture(scope="module")
def llama() -> Llama:
    torch.manual_seed(0)
    model = Llama(LLAMA_TINY).eval()
    with torch.no_grad():  # larger weights than the init's, so positions matter more
        for p in model.parameters():
            p.mul_(5.0 if p.dim() == 2 else 1.0)
    return model


def test_docstring_examples_run():
    result = doctest.testmod(companion.kv_cache)
    assert result.attempted > 0 and result.failed == 0


def replay(model, out: torch.Tensor, T: int, cached: bool) -> list[torch.Tensor]:
    """The logits (B, V) each step of a run that produced ``out`` (B, T + n) saw: from the model's
    own step function, as ``generate`` runs it (``cached``), or from the whole window each step."""
    L = model.config.context_length
    with torch.no_grad():
        if cached:
            next_logits = model.decoder(out.shape[0], min(L, out.shape[1]))
            return [next_logits(out[:, :n]) for n in range(T, out.shape[1])]
        return [model(out[:, max(0, n - L) : n])[0][:, -1] for n in range(T, out.shape[1])]


def float32_tolerance(model, out: torch.Tensor, T: int) -> float:
    """How far two float32 evaluations of this network's logits may differ, derived here.

    As in ``tests/test_smollm2.py``: the model in float64 gives the exact logits (up to 1e-16);
    e = max |float32 - exact| over the plain run's steps is this CPU's float32 rounding for this
    network. Another evaluation order (the cache's matrix-vector products) makes errors of the
    same size (the classic dot-product bound holds for every order of summation), so two
    evaluations differ by at most about 2e; 4e leaves room for the other order's error being up to
    twice ours. Floor: a logit of size |z| is known to u·|z| at best, so at least 4·u·max|z|.
    """
    exact_model = copy.deepcopy(model).double()
    plain = replay(model, out, T, cached=False)
    exact = replay(exact_model, out, T, cached=False)
    worst = max((p.double() - e).abs().max().item() for p, e in zip(plain, exact, strict=True))
    largest = max(e.abs().max().item() for e in exact)
    return max(4 * worst, 4 * U * largest)


def test_llama_cached_logits_equal_uncached_at_every_step(llama: Llama):
    """4-token prompts, 14 new tokens: 8 cached steps inside the 12-token window, 6 past it."""
    out = generate(llama, PROMPT, 14, temperature=0)
    T = PROMPT.shape[1]
    tolerance = float32_tolerance(llama, out, T)
    assert tolerance < 1e-5  # float32 rounding: a wrong RoPE position moves logits by ~1e-2
    plain, cached = replay(llama, out, T, cached=False), replay(llama, out, T, cached=True)
    for step, (p, c) in enumerate(zip(plain, cached, strict=True)):
        assert (p - c).abs().max().item() <= tolerance, f"step {step}"
    inside = LLAMA_TINY.context_length - T  # steps 0 … 7 used the cache
    assert all(
        torch.equal(p, c) for p, c in zip(plain[inside + 1 :], cached[inside + 1 :], strict=True)
    )


def _margin(logits: list[torch.Tensor], seed: int, temperature: float) -> float:
    """The smallest distance, over the steps, from the uniform u of ``sample_next`` (one per row
    and step, drawn in order from the generator) to a boundary of the cumulative distribution."""
    g, margin = make_generator(seed), math.inf
    for step in logits:
        cdf = next_token_probs(step, temperature=temperature).cumsum(-1)  # (B, V)
        u = torch.rand(step.shape[0], 1, generator=g) * cdf[:, -1:]  # (B, 1)
        margin = min(margin, (cdf - u).abs().min().item())
    return margin


@pytest.mark.parametrize("temperature", [0.3, 2.0])
@pytest.mark.parametrize("kind", ["llama", "gpt"])
def test_sampling_on_the_cached_path_equals_the_uncached_draw_for_draw(
    llama: Llama, kind: str, temperature: float
):
    """Far from temperature 1 the division by T magnifies (0.3) or flattens (2.0) the logits, so
    a cache that fed the sampler scaled or stale logits would draw other tokens. A token may
    differ only where u falls within float32 rounding of a boundary of the cumulative
    distribution; the test checks that no draw of this seed is that close."""
    if kind == "gpt":
        torch.manual_seed(1)
        model = CachedGPT(GPT(GPT_TINY)).eval()
    else:
        model = llama
    seed = 3
    runs = [
        generate(model, PROMPT, 14, temperature=temperature, use_cache=c,
                 generator=make_generator(seed))
        for c in (True, False)
    ]  # fmt: skip
    assert torch.equal(*runs)
    assert not torch.equal(runs[0], generate(model, PROMPT, 14, temperature=0))  # it sampled
    T = PROMPT.shape[1]
    plain, cached = replay(model, runs[1], T, False), replay(model, runs[1], T, True)
    diff = max((p - c).abs().max().item() for p, c in zip(plain, cached, strict=True))
    assert diff < 1e-5  # float32 rounding (the test above derives it for the Llama model)
    assert _margin(plain, seed, temperature) > 1e-4, "a draw too close to call: another seed"
