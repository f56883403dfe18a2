"""Generation: the sampling rules (temperature, top-k, top-p) token by token and in distribution,
the KV cache against the plain loop (greedy, sampled, past the context window, batch > 1), stop
tokens, streaming, and every bad argument."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from companion.attention import causal_mask
from companion.environment import make_generator
from companion.generation import generate, next_token_probs, sample_next, stream
from companion.kv_cache import CachedGPT, KVCache, bytes_per_token
from companion.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=23, context_length=6, n_layer=2, n_head=2, d_model=16)


@pytest.fixture
def model() -> CachedGPT:
    torch.manual_seed(0)
    return CachedGPT(GPT(CONFIG)).eval()


PROMPT = torch.tensor([[1, 2, 3], [4, 5, 6]])


# --- greedy, seeds, the window ------------------------------------------------------------------


def test_greedy_is_deterministic_and_takes_the_argmax(model: GPT):
    a = generate(model, PROMPT, 8, temperature=0)
    b = generate(model, PROMPT, 8, temperature=0)
    assert a.shape == (2, 11) and torch.equal(a, b)
    assert torch.equal(a[:, :3], PROMPT)
    logits, _ = model(a[:, :3])
    assert torch.equal(a[:, 3], logits[:, -1].argmax(-1))


def test_temperature_zero_is_exactly_argmax():
    logits = torch.randn(50, 17, generator=make_generator(0))
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1, keepdim=True))
    probs = next_token_probs(logits, temperature=0)  # one-hot on the argmax, no division by 0
    assert torch.equal(probs.argmax(-1), logits.argmax(-1))
    assert torch.equal(probs.sum(-1), torch.ones(50))


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


def test_past_the_window_each_step_reads_the_last_context_length_tokens(model: GPT):
    L = CONFIG.context_length
    out = generate(model, PROMPT, 10, temperature=0)  # 3 + 10 tokens > L = 6
    for n in range(L + 1, out.shape[1]):  # the token at n was chosen from positions n-L … n-1
        logits, _ = model(out[:, n - L : n])
        assert torch.equal(out[:, n], logits[:, -1].argmax(-1))


def test_restores_training_mode(model: GPT):
    model.train()
    generate(model, PROMPT, 1, temperature=0)
    assert model.training
    model.eval()
    generate(model, PROMPT, 1, temperature=0)
    assert not model.training


def test_zero_new_tokens_returns_the_prompt(model: GPT):
    assert torch.equal(generate(model, PROMPT, 0), PROMPT)


# --- which tokens survive top-k and top-p -------------------------------------------------------


def kept(probs: torch.Tensor) -> set[int]:
    return {int(i) for i in (probs[0] > 0).nonzero()[:, 0]}


def test_top_k_keeps_the_k_largest_and_everything_tied_with_the_kth():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, -2.0, 4.0]])
    assert kept(next_token_probs(logits, top_k=1)) == {1}
    assert kept(next_token_probs(logits, top_k=2)) == {1, 3, 5}  # 3 and 5 tie at the 2nd place
    assert kept(next_token_probs(logits, top_k=3)) == {1, 3, 5}
    assert kept(next_token_probs(logits, top_k=4)) == {1, 2, 3, 5}
    assert kept(next_token_probs(logits, top_k=6)) == set(range(6))
    # renormalised over the survivors: e⁵ / (e⁵ + 2e⁴) for the best one
    top2 = next_token_probs(logits, top_k=2)
    assert math.isclose(
        top2[0, 1].item(), math.exp(5) / (math.exp(5) + 2 * math.exp(4)), rel_tol=1e-6
    )


def test_top_p_keeps_the_smallest_set_that_reaches_p_with_the_crossing_token_and_its_ties():
    logits = torch.tensor([[0.5, 0.25, 0.125, 0.125, 0.0]]).log()  # probabilities, exactly
    assert kept(next_token_probs(logits, top_p=0.3)) == {0}  # 0.5 alone reaches 0.3
    assert kept(next_token_probs(logits, top_p=0.6)) == {0, 1}  # 0.5 < 0.6 ≤ 0.75
    assert kept(next_token_probs(logits, top_p=0.8)) == {0, 1, 2, 3}  # 2 crosses; 3 ties with it
    assert kept(next_token_probs(logits, top_p=1.0)) == {0, 1, 2, 3}  # all with probability > 0
    tiny = torch.tensor([[10.0, 0.0, -30.0]])  # the last has probability ≈ 4e-18, not 0
    assert kept(next_token_probs(tiny, top_p=1.0)) == {0, 1, 2}  # p = 1 never drops a token
    probs = next_token_probs(logits, top_p=0.6)
    assert torch.allclose(probs, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0, 0.0]]))


def test_top_p_reads_the_tempered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    assert kept(next_token_probs(logits, top_p=0.6)) == {0}  # softmax: 0.665, 0.245, 0.090
    assert kept(next_token_probs(logits, top_p=0.6, temperature=3.0)) == {0, 1}  # 0.45, 0.32, 0.23


def test_top_k_and_top_p_combine_in_the_documented_order():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    both = next_token_probs(logits, top_k=3, top_p=0.96)  # top-k first: renormalised over 3 …
    assert kept(both) == {0, 1, 2}  # … 0.665 + 0.245 = 0.91 < 0.96, the third crosses
    # without top-k: 0.636 + 0.234 + 0.086 = 0.956 < 0.96, so the fourth (0.032) crosses
    assert kept(next_token_probs(logits, top_p=0.96)) == {0, 1, 2, 3}


# --- sampled frequencies match the distribution --------------------------------------------------

N_DRAWS = 40_000


def chi_square_critical(df: int, z: float = 4.0) -> float:
    """The chi-square quantile about 3e-5 from the top (z = 4 standard normal deviations), by
    Wilson and Hilferty's cube-root approximation."""
    a = 2 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def draw_counts(logits: torch.Tensor, seed: int, **sampling) -> torch.Tensor:
    rows = logits.expand(N_DRAWS, -1)  # (N, V): N independent draws in one call
    ids = sample_next(rows, generator=make_generator(seed), **sampling)  # (N, 1)
    return torch.bincount(ids[:, 0], minlength=logits.shape[-1]).double()  # (V,)


def softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) if x != -math.inf else 0.0 for x in xs]
    return [v / sum(e) for v in e]


LOGITS = [1.5, 0.2, -0.4, 1.0, -1.2, 0.0, 0.7, -2.0]
CASES = {  # the expected distribution, written out by hand from the rules
    "plain": ({}, softmax(LOGITS)),
    "temperature 2": ({"temperature": 2.0}, softmax([x / 2 for x in LOGITS])),
    "top-k 3": ({"top_k": 3}, softmax([x if x >= 0.7 else -math.inf for x in LOGITS])),
    # softmax(LOGITS) sorted: 0.357 (id 0), 0.217 (3), 0.161 (6), 0.097 (1), 0.080 (5) …:
    # 0.357 + 0.217 + 0.161 = 0.735 < 0.8, so id 1 crosses 0.8 and is the last one kept
    "top-p 0.8": ({"top_p": 0.8}, softmax([x if x >= 0.2 else -math.inf for x in LOGITS])),
}


@pytest.mark.parametrize("case", CASES)
def test_sampled_frequencies_match_the_distribution(case: str):
    """A chi-square test over the kept tokens, with a fixed seed: deterministic, so it cannot
    flake; the threshold (about 3e-5 from the top) is what a correct sampler exceeds with that
    probability for a random seed, and the test below shows it catches a wrong distribution."""
    sampling, expected = CASES[case]
    counts = draw_counts(torch.tensor([LOGITS]), seed=0, **sampling)
    p = torch.tensor(expected, dtype=torch.float64)
    assert (counts[p == 0] == 0).all(), "a filtered-out token was drawn"
    live = p > 0
    stat = ((counts[live] - N_DRAWS * p[live]) ** 2 / (N_DRAWS * p[live])).sum().item()
    assert stat < chi_square_critical(int(live.sum()) - 1), f"chi-square {stat:.1f}"


def test_the_frequency_test_can_fail():
    """The same statistic rejects draws at temperature 1 when told to expect temperature 1.2."""
    counts = draw_counts(torch.tensor([LOGITS]), seed=0)
    p = torch.tensor(softmax([x / 1.2 for x in LOGITS]), dtype=torch.float64)
    stat = ((counts - N_DRAWS * p) ** 2 / (N_DRAWS * p)).sum().item()
    assert stat > chi_square_critical(len(LOGITS) - 1)


# --- the KV cache --------------------------------------------------------------------------------


def test_cached_forward_equals_the_full_forward(model: GPT):
    ids = torch.tensor([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]])  # (2, 6), the whole window
    full, _ = model(ids)  # (B, 6, V)
    cache = KVCache(CONFIG, batch_size=2)
    pieces = [model(ids[:, :2], cache=cache)[0]]  # prefill 2 positions
    pieces.append(model(ids[:, 2:5], cache=cache)[0])  # 3 at once after 2: the bottom-right mask
    pieces.append(model(ids[:, 5:], cache=cache)[0])  # one more: attends to all 6
    assert cache.length == 6
    # reordered float32 sums of at most 4C = 64 terms of size ≲ 1 differ by ≲ 64 · 6e-8 per
    # layer: 1e-5 is far above that on any CPU, and far below what a wrong mask would change
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_cache_refuses_positions_past_its_room(model: GPT):
    cache = KVCache(CONFIG, batch_size=1, max_length=4)
    model(torch.tensor([[1, 2, 3]]), cache=cache)
    with pytest.raises(ValueError, match="holds 3 positions and has room for 4"):
        model(torch.tensor([[4, 5]]), cache=cache)
    with pytest.raises(ValueError, match="max_length=7 must be between 1 and context_length=6"):
        KVCache(CONFIG, batch_size=1, max_length=7)


def test_cache_memory_per_token():
    assert bytes_per_token(CONFIG) == 2 * 2 * 16 * 4  # keys and values, 2 layers, C = 16, float32
    cache = KVCache(CONFIG, batch_size=3)
    CachedGPT(GPT(CONFIG))(torch.zeros(3, 4, dtype=torch.long), cache=cache)
    assert cache.nbytes() == 3 * 4 * bytes_per_token(CONFIG)


def reference_run(model: GPT, out: torch.Tensor, T: int, seed: int | None, sampling: dict):
    """Replay the tokens ``out`` (B, T + n) step by step without a cache and with one, and return
    (largest logit difference between the two, smallest decision margin of the plain run).

    The margin is the gap between the two largest logits when greedy, and the distance from the
    uniform number u to the nearest boundary of the cumulative distribution when sampling
    (``sample_next`` draws one u per row per step from the generator, in order)."""
    L = CONFIG.context_length
    g = None if seed is None else make_generator(seed)
    cache = KVCache(CONFIG, batch_size=out.shape[0], max_length=min(L, out.shape[1] - 1))
    worst_diff, margin = 0.0, math.inf
    for n in range(T, out.shape[1]):
        plain = model(out[:, max(0, n - L) : n])[0][:, -1]  # (B, V)
        if n <= cache.max_length:
            cached = model(out[:, cache.length : n], cache=cache)[0][:, -1]
        else:
            cached = plain  # past the window both paths run the same full-window call
        worst_diff = max(worst_diff, (plain - cached).abs().max().item())
        if g is None:
            top2 = plain.topk(2, dim=-1).values  # (B, 2)
            margin = min(margin, (top2[:, 0] - top2[:, 1]).min().item())
        else:
            cdf = next_token_probs(plain, **sampling).cumsum(-1)  # (B, V)
            u = torch.rand(out.shape[0], 1, generator=g) * cdf[:, -1:]  # (B, 1)
            margin = min(margin, (cdf - u).abs().min().item())
    return worst_diff, margin


@pytest.mark.parametrize(
    "seed, sampling",
    [(None, {"temperature": 0}), (3, {}), (4, {"temperature": 0.8, "top_k": 10, "top_p": 0.9})],
    ids=["greedy", "sampled", "top-k-top-p"],
)
def test_cache_and_no_cache_give_identical_tokens_past_the_window(model: GPT, seed, sampling):
    """Batch of 2, 3-token prompts, 14 new tokens: 6 steps inside the window of 6, then 8 past it.

    Why this holds on any CPU: with the cache, a step inside the window computes the new
    position alone (matrix-vector products) where the plain loop computes all positions at once
    (matrix products), so the last float32 bits may differ, by far less than ``TOLERANCE``
    (checked below). A token can then differ only where the plain run's decision margin, the gap
    between the two best logits or between u and a boundary of the cumulative distribution, is
    smaller than that; the test checks that for this model and seed every margin is wider. Past
    the window both paths make the same call on the same tokens, bit for bit.
    """
    tolerance = 1e-5  # ≫ the ~1e-7 rounding of a 2-layer, width-16 float32 model; see above
    with_cache = generate(model, PROMPT, 14, use_cache=True, generator=_gen(seed), **sampling)
    without = generate(model, PROMPT, 14, use_cache=False, generator=_gen(seed), **sampling)
    assert torch.equal(with_cache, without)
    diff, margin = reference_run(model, without, PROMPT.shape[1], seed, sampling)
    assert diff < tolerance, "cache and plain logits differ by more than float32 rounding"
    assert margin > 2 * tolerance, "a decision too close to call: choose another seed"


def _gen(seed: int | None) -> torch.Generator | None:
    return None if seed is None else make_generator(seed)


def test_the_cached_forward_test_can_fail():
    """PyTorch's ``is_causal=True`` aligns its mask top-left: for 3 new queries after 2 stored
    keys it would hide keys the queries may see, and the outputs would change."""
    g = make_generator(0)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) for n in (3, 5, 5))  # (B, H, T or S, D)
    right = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(3, 5))
    top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (right - top_left).abs().max() > 1e-2


# --- stop tokens and streaming --------------------------------------------------------------------


def test_stop_tokens_end_each_row_and_then_generation(model: GPT):
    free = generate(model, PROMPT, 12, generator=make_generator(0))  # (2, 15)
    stop = int(free[0, 5])  # row 0's third new token
    out = generate(model, PROMPT, 12, generator=make_generator(0), stop_tokens=[stop])
    ends = []
    for b in range(2):
        hits = [t for t in range(3, 15) if free[b, t] == stop]
        end = hits[0] if hits else 14
        ends.append(end)
        assert torch.equal(out[b, : end + 1], free[b, : end + 1])  # the free run up to the stop
        assert (out[b, end + 1 :] == stop).all()  # then the stop id, repeated
    assert out.shape == (2, max(ends) + 1)  # ends when every row has stopped
    again = generate(
        model, PROMPT, 12, generator=make_generator(0), stop_tokens=[stop], use_cache=False
    )
    assert torch.equal(out, again)


@pytest.mark.parametrize("use_cache", [True, False])
def test_stream_yields_what_generate_returns(model: GPT, use_cache: bool):
    kwargs = {"temperature": 0.9, "top_p": 0.95, "use_cache": use_cache}
    steps = list(stream(model, PROMPT, 9, generator=make_generator(5), **kwargs))
    assert all(s.shape == (2, 1) for s in steps) and len(steps) == 9
    whole = generate(model, PROMPT, 9, generator=make_generator(5), **kwargs)
    assert torch.equal(torch.cat([PROMPT, *steps], dim=1), whole)


def test_stream_checks_its_arguments_at_once_and_restores_the_mode_when_closed(model: GPT):
    with pytest.raises(ValueError, match="top_p=0"):
        stream(model, PROMPT, 3, top_p=0)  # before any next()
    model.train()
    steps = stream(model, PROMPT, 5, temperature=0)
    next(steps)
    assert not model.training  # eval while the stream is open
    steps.close()
    assert model.training


# --- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1}, r"temperature=-1 must be a finite number >= 0"),
        ({"temperature": float("nan")}, r"temperature=nan must be a finite number >= 0"),
        ({"temperature": float("inf")}, r"temperature=inf must be a finite number"),
        ({"top_k": 0}, r"top_k=0 must be between 1 and the vocabulary size 23"),
        ({"top_k": 24}, r"top_k=24 must be between 1 and the vocabulary size 23"),
        ({"top_k": 2.5}, r"top_k=2.5 must be between 1"),
        ({"top_p": 0}, r"top_p=0 must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p=1.5 must be in \(0, 1\]"),
        ({"top_p": float("nan")}, r"top_p=nan must be in \(0, 1\]"),
        ({"stop_tokens": [23]}, r"must be token ids between 0 and 22, e\.g\. \[tokenizer"),
        ({"stop_tokens": [True]}, r"must be token ids between 0 and 22"),
    ],
)
def test_bad_sampling_arguments_raise(model: GPT, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        generate(model, PROMPT, 1, **kwargs)


def test_bad_prompts_and_lengths_raise(model: GPT):
    with pytest.raises(ValueError, match="max_new_tokens=-2"):
        generate(model, PROMPT, -2)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        generate(model, torch.tensor([1, 2]), 1)
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"7 tokens .* context_length=6; keep the last 6"):
        generate(model, torch.ones(1, 7, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"logits must be \(B, V\)"):
        sample_next(torch.zeros(1, 2, 3))


def test_generate_many_reads_probabilities_without_dropout_and_keeps_the_mode():
    """A model left in train mode with dropout: the probabilities of the new tokens are those of
    eval mode (the same on every call), and the model is back in train mode afterwards."""
    from companion.generation import generate_many

    torch.manual_seed(0)
    noisy = GPT(GPTConfig(vocab_size=23, context_length=8, n_layer=2, n_head=2, d_model=16,
                          dropout=0.5)).train()  # fmt: skip
    first, again = (generate_many(noisy, [[1, 2, 3]], [], max_new_tokens=3, with_probs=True)
                    for _ in range(2))  # fmt: skip
    assert noisy.training
    assert first[0].probs == again[0].probs
    probs = noisy.eval()(torch.tensor([[1, 2, 3, *first[0].ids[:-1]]]))[0].softmax(-1)[0, 2:]
    expected = probs.gather(-1, torch.tensor(first[0].ids)[:, None])[:, 0]
    assert first[0].probs == pytest.approx(expected.tolist(), abs=1e-6)
