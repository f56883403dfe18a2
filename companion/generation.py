"""Text generation: run the model, pick the next token, append it, repeat (autoregression).

Taught in ``03_transformer.ipynb`` (the model as a next-token distribution, the context window)
and ``07_inference.ipynb`` (temperature, top-k, top-p, the KV cache, streaming). Shape
vocabulary: B batch, T time, V vocabulary.

* :func:`next_token_probs`: the distribution a step draws from, after temperature, top-k, top-p.
* :func:`sample_next`: one token per row from that distribution (greedy at temperature 0).
* :func:`stream`: yields each new token (B, 1) as soon as it is chosen (what a chat UI shows);
  :func:`generate` collects the stream into one tensor.

Each step asks the model for the next token's logits given every id so far. By default the model
reads the last ``context_length`` ids afresh at each step. A model that knows a faster way offers
it as a ``decoder(batch_size, max_length)`` method returning that step function: chapter 3's
``GPT`` skips its input checks (``generate`` made them once), chapter 7's
:class:`companion.kv_cache.CachedGPT` runs the prompt once and then one token per step against
stored keys and values; the tokens are the same either way (tested, including past the context
window). Stop tokens end a row when the model writes one (e.g. ``<|end|>``).

:func:`generate_many` runs prompts of different lengths in batches of equal length (no
padding), on the model's own device, and on request gives each new token's probability. Left
out on purpose: beam search, repetition penalties, speculative decoding and padded batches.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from companion.environment import make_generator, model_device
from companion.model import check_token_ids


def _check_sampling(V: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """A ``ValueError`` saying what is allowed, for each sampling knob out of range."""
    number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not number or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(
            f"temperature={temperature!r} must be a finite number >= 0 (0 means greedy, 1 the "
            "model's own distribution, above 1 flatter)"
        )
    if top_k is not None and (
        not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= V
    ):
        raise ValueError(f"top_k={top_k!r} must be between 1 and the vocabulary size {V}, or None")
    if top_p is not None and (
        not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1
    ):
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] (1 keeps every token), or None")


def _check_logits(logits, temperature, top_k, top_p) -> None:
    if logits.dim() != 2:
        raise ValueError(
            f"logits must be (B, V), got shape {tuple(logits.shape)}; use logits[:, -1]"
        )
    _check_sampling(logits.shape[-1], temperature, top_k, top_p)


def next_token_probs(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The distribution (B, V) that :func:`sample_next` draws from, given logits (B, V).

    In this order:

    1. **temperature** divides the logits: below 1 sharpens, above 1 flattens; 0 is the limit,
       all the probability on the largest logit (the first one, if several tie);
    2. **top-k** keeps the ``top_k`` largest logits (every token tied with the k-th is kept too,
       so the result does not depend on how tokens are numbered);
    3. softmax, then **top-p** keeps the smallest set of most likely tokens whose probability
       reaches ``top_p``: the token that crosses ``top_p`` is kept, and so is every token tied
       with it; ``top_p=1`` keeps everything. Top-p reads the *tempered* probabilities;
    4. what is left is renormalised to sum to 1.

    The result is float32 whatever the logits' dtype (float16 and bfloat16 cannot hold small
    probabilities). Every temperature > 0 gives a distribution: one so small that every other
    logit's probability underflows puts it all on the largest (shared between exact ties).

    >>> logits = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    >>> next_token_probs(logits, temperature=0)
    tensor([[1., 0., 0., 0.]])
    >>> next_token_probs(logits).round(decimals=3)  # softmax: e² : e : 1 : 1
    tensor([[0.6100, 0.2250, 0.0830, 0.0830]])
    >>> next_token_probs(logits, top_k=3).round(decimals=3)  # the two tied 0.0 both stay
    tensor([[0.6100, 0.2250, 0.0830, 0.0830]])
    >>> next_token_probs(logits, top_p=0.7).round(decimals=3)  # 0.610 < 0.7 ≤ 0.610 + 0.225
    tensor([[0.7310, 0.2690, 0.0000, 0.0000]])
    """
    _check_logits(logits, temperature, top_k, top_p)
    return _probs(logits, temperature, top_k, top_p)


def _probs(logits, temperature, top_k, top_p) -> torch.Tensor:
    """:func:`next_token_probs` on arguments already checked (the decoding loop's, each step)."""
    if temperature == 0:
        best = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        return torch.zeros_like(logits).scatter_(-1, best, 1.0)  # (B, V), one-hot
    # In float32, the largest logit moved to 0 before dividing: a tiny temperature then sends
    # the others to -inf (probability 0, greedy in the limit), never past the largest float.
    logits = logits.float()  # (B, V)
    logits = logits - logits.max(dim=-1, keepdim=True).values  # (B, V), all <= 0
    divide = (logits < 0) & logits.isfinite()  # the largest stays 0 and -inf stays -inf
    logits = torch.where(divide, logits / temperature, logits)  # (B, V)
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V), ties with it stay
    probs = logits.softmax(dim=-1)  # (B, V)
    if top_p is not None and top_p < 1:
        ordered = probs.sort(dim=-1, descending=True, stable=True).values  # (B, V)
        before = ordered.cumsum(dim=-1) - ordered  # (B, V): mass of the more likely tokens
        n_kept = (before < top_p).sum(dim=-1, keepdim=True)  # (B, 1): up to the crossing one
        n_kept = n_kept.clamp(
            min=1
        )  # the most likely token stays (a top_p that float32 rounds to 0)
        smallest = ordered.gather(-1, n_kept - 1)  # (B, 1): the crossing token's probability
        probs = probs.masked_fill(probs < smallest, 0.0)  # (B, V), ties with it stay
        probs = probs / probs.sum(dim=-1, keepdim=True)  # (B, V), renormalised
    return probs


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token id per row from last-position logits (B, V); returns (B, 1).

    ``temperature=0`` takes the most likely token (greedy, no randomness). Otherwise the
    distribution of :func:`next_token_probs` is sampled by inverse transform: draw u uniform in
    [0, 1) from ``generator`` (one number per row), walk along the tokens adding up their
    probabilities, and take the first token whose running total passes u. Each row uses exactly
    one number from ``generator`` per call, whatever the logits, so two runs that see slightly
    different logits stay in step.

    >>> sample_next(torch.tensor([[0.1, 3.0, -1.0]]), temperature=0)
    tensor([[1]])
    >>> sample_next(torch.tensor([[0.1, 3.0, -1.0]]), top_k=1)  # only one candidate is left
    tensor([[1]])
    """
    _check_logits(logits, temperature, top_k, top_p)
    return _sample(logits, temperature, top_k, top_p, generator)


def _sample(logits, temperature, top_k, top_p, generator) -> torch.Tensor:
    """:func:`sample_next` on arguments already checked (the decoding loop's, each step)."""
    if temperature == 0:  # greedy: the largest logit; top-k and top-p cannot change it
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    probs = _probs(logits, temperature, top_k, top_p)
    cdf = probs.cumsum(dim=-1)  # (B, V): running totals, the last one is ≈ 1
    total = cdf[:, -1:]  # (B, 1)
    if not bool(total.isfinite().all()):  # NaN or +inf among the logits, or a row all -inf
        raise ValueError(
            "the logits hold NaN or +inf (or a row is all -inf), so no token can be drawn; the "
            "model's weights or inputs have overflowed: check them (torch.isfinite)"
        )
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    target = torch.minimum(u * total, total.nextafter(torch.zeros_like(total)))  # (B, 1) < total
    return torch.searchsorted(cdf, target, right=True)  # (B, 1): first total above the target


def _check_stop_tokens(stop_tokens: Collection[int], V: int) -> None:
    if isinstance(stop_tokens, (str, bytes, torch.Tensor)) or not isinstance(
        stop_tokens, Collection
    ):
        raise TypeError(
            f"stop_tokens must be a list of token ids, got {type(stop_tokens).__name__}; "
            "e.g. stop_tokens=[tokenizer.special_tokens['<|end|>']]"
        )
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < V for s in stop_tokens):
        raise ValueError(
            f"stop_tokens={stop_tokens!r} must be token ids between 0 and {V - 1}, "
            "e.g. [tokenizer.special_tokens['<|end|>']]"
        )


def stream(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Collection[int] = (),
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the new tokens one step at a time, each (B, 1), as :func:`generate` chooses them.

    The arguments are checked when ``stream`` is called, before the first token. While the
    stream is open the model is in eval mode; it goes back to its mode when the stream ends or
    is closed. See :func:`generate` for the arguments.

    >>> from companion.model import GPT, GPTConfig
    >>> _ = torch.manual_seed(0)
    >>> model = GPT(GPTConfig(vocab_size=5, context_length=4, n_layer=1, n_head=1, d_model=8))
    >>> [tuple(t.shape) for t in stream(model, torch.tensor([[1, 2]]), 3, temperature=0)]
    [(1, 1), (1, 1), (1, 1)]
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be (B, T), got {got}; use idx[None] for one sequence")
    if idx.dtype != torch.long:
        raise ValueError(f"idx must hold int64 token ids, got {idx.dtype}; use torch.tensor([ids])")
    L, V = model.config.context_length, model.config.vocab_size
    if idx.shape[1] == 0:
        raise ValueError("the prompt is empty (T=0); give at least one token, e.g. <|endoftext|>")
    if idx.shape[1] > L:
        raise ValueError(
            f"the prompt has {idx.shape[1]} tokens but the model reads at most context_length="
            f"{L}; keep the last {L} (idx[:, -{L}:]) or shorten it"
        )
    check_token_ids(idx, V, "idx")
    _check_sampling(V, temperature, top_k, top_p)
    _check_stop_tokens(stop_tokens, V)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
            "make one with companion.environment.make_generator(seed)"
        )
    sampling = (temperature, top_k, top_p, generator)
    B, max_length = idx.shape[0], min(L, idx.shape[1] + max_new_tokens)
    if use_cache and hasattr(model, "decoder"):  # the model's own step function
        next_logits = model.decoder(B, max_length)
    else:  # the plain step: the model on the last L ids
        next_logits = lambda ids: model(ids[:, -L:])[0][:, -1]  # noqa: E731
    return _steps(model, idx, max_new_tokens, next_logits, sampling, stop_tokens)


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """The model in eval mode (no dropout) inside the block, back in its own mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()  # torch re-enters no_grad at each resume, so the caller's code is unaffected
def _steps(model, idx, max_new_tokens, next_logits, sampling, stop_tokens):
    """The loop behind :func:`stream`, in numbered steps (arguments already checked)."""
    B = idx.shape[0]
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=idx.dtype, device=idx.device)  # (S,)
    stopped = torch.zeros(B, 1, dtype=torch.bool, device=idx.device)  # (B, 1)
    with _eval_mode(model):
        for _ in range(max_new_tokens):
            # 1. Logits (B, V) for the next position, given every id so far: the model reads
            #    the last context_length of them (or, with a decoder that keeps a cache, only
            #    the ones it has not seen).
            logits = next_logits(idx)  # (B, V)
            # 2. Choose one token per row.
            next_id = _sample(logits, *sampling)  # (B, 1)
            # 3. A row that has stopped repeats its stop token.
            if len(stops):
                next_id = torch.where(stopped, idx[:, -1:], next_id)  # (B, 1)
                stopped |= torch.isin(next_id, stops)
            # 4. Append it: the next step conditions on it, like on the prompt.
            idx = torch.cat([idx, next_id], dim=1)  # (B, T + 1)
            yield next_id
            if len(stops) and bool(stopped.all()):
                break


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Collection[int] = (),
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend the prompt ``idx`` (B, T) by up to ``max_new_tokens`` tokens; returns
    (B, T + max_new_tokens), or fewer new columns when ``stop_tokens`` stopped every row.

    * ``temperature``, ``top_k``, ``top_p``: how each token is chosen (:func:`next_token_probs`);
      ``generator`` makes sampling reproducible (temperature 0 uses none).
    * ``stop_tokens``: ids that end a row (kept in the output, e.g. ``<|end|>``). Once a row has
      written one, its later positions repeat that id, and generation ends early as soon as every
      row has stopped.
    * ``use_cache``: run the model's own step function (its ``decoder`` method, if it has one:
      chapter 7's KV cache prefills the prompt once, then runs one token per step against the
      stored keys and values). ``False`` calls the model on the window at each step. The tokens
      are the same either way.
    * The prompt must hold 1 to ``context_length`` tokens (a ``ValueError`` otherwise: cutting a
      prompt silently would hide the loss of its beginning).

    **Past the context window.** The position embeddings end at ``context_length`` (L). Once
    the sequence is longer than L, each step reads only its last L tokens, at positions 0 … L - 1
    (a sliding window: the oldest tokens are forgotten). A KV cache (chapter 7) cannot be reused
    then: every stored key and value was computed at another position and saw tokens that have
    left the window, so from then on each step runs the whole window afresh (the same
    computation with or without the cache, so the outputs stay identical).

    The model is put in eval mode (no dropout) while generating and back in its mode afterwards.

    >>> from companion.model import GPT, GPTConfig
    >>> _ = torch.manual_seed(0)
    >>> model = GPT(GPTConfig(vocab_size=5, context_length=4, n_layer=1, n_head=1, d_model=8))
    >>> generate(model, torch.tensor([[1, 2]]), 3, temperature=0).shape
    torch.Size([1, 5])
    """
    steps = stream(
        model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        stop_tokens=stop_tokens, use_cache=use_cache, generator=generator,
    )  # fmt: skip
    return torch.cat([idx, *steps], dim=1)  # (B, T + new)


@dataclass(frozen=True)
class Continuation:
    """What :func:`generate_many` wrote after one prompt."""

    ids: list[int]  # the new ids, up to the first stop id (excluded)
    finished: bool  # a stop id came within max_new_tokens
    probs: list[float] | None = None  # with_probs: each new id's probability at temperature 1


@torch.no_grad()
def generate_many(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    stop_ids: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    with_probs: bool = False,
) -> list[Continuation]:
    """For each prompt (a list of ids), a :class:`Continuation`: the new ids up to a stop id
    (excluded) and whether one came before ``max_new_tokens``. Used for prompts of mixed
    lengths: fact completions (chapter 4), chat replies (chapter 5), hallucination (chapter 7).

    1. group the prompts by length; each group runs as one batch (B, T), shortest first,
       drawing from one generator seeded with ``seed`` (unused when greedy);
    2. :func:`generate` each batch on the model's own device (the model is never moved);
    3. with ``with_probs``, one more forward pass over prompt + new ids gives the probability
       the model (at temperature 1) gave each new id;
    4. cut each row at its first stop id.

    >>> from companion.model import GPTConfig
    >>> _ = torch.manual_seed(0)
    >>> model = GPT(GPTConfig(vocab_size=5, context_length=8, n_layer=1, n_head=1, d_model=8))
    >>> out = generate_many(model, [[1, 2], [3]], [], max_new_tokens=2, with_probs=True)
    >>> [(len(c.ids), c.finished, len(c.probs)) for c in out]
    [(2, False, 2), (2, False, 2)]
    """
    device = model_device(model)
    generator = None if temperature == 0 else make_generator(seed, device)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):
        by_length.setdefault(len(ids), []).append(i)
    out: list[Continuation] = [Continuation([], False)] * len(prompts)
    for length, indices in sorted(by_length.items()):
        idx = torch.tensor([list(prompts[i]) for i in indices], device=device)  # (B, T)
        full = generate(
            model,
            idx,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            stop_tokens=list(stop_ids),
        )  # (B, T + new)
        chosen = None
        if with_probs:  # a few rows at a time: (B, T, V) logits reach 100 MB at V = 49,152
            chosen = []
            at_once = max(1, 2**22 // (full.shape[1] * model.config.vocab_size))  # 16 MB
            with _eval_mode(model):  # as generation: dropout would make the probabilities random
                for rows in full.split(at_once):
                    logits, _ = model(rows[:, :-1])  # (b, T + new - 1, V): t predicts t + 1
                    probs = logits[:, length - 1 :].softmax(-1)  # (b, new, V)
                    chosen += probs.gather(-1, rows[:, length:, None])[..., 0].tolist()
        for row, i in enumerate(indices):
            new = full[row, length:].tolist()
            cut = next((t for t, token in enumerate(new) if token in stop_ids), len(new))
            p = None if chosen is None else chosen[row][:cut]
            out[i] = Continuation(new[:cut], cut < len(new), p)
    return out
