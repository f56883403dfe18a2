"""What a language model knows: fact-completion accuracy, and sampled completions of prompts.

Taught in ``04_pretraining.ipynb`` (the base model's knowledge of the course world); the
inference chapter reuses :func:`fact_completion_accuracy` on ``world.held_out_facts`` to measure
hallucination. Shape vocabulary: B batch (prompts of equal token length), T time.

A fact counts as known when the **greedy** continuation of its ``prompt`` begins with
``" " + answer`` followed by a non-letter (so "pie" does not count "pies"). Prompts are batched
by token length, so no padding or attention mask is needed.

:func:`majority_baseline` is the control for every per-relation score: the accuracy of always
giving a relation's most common answer, which a model can reach without knowing any one fact.

Left out: log-likelihood scoring of answer choices, few-shot prompts, and exact-match on chat
replies (the SFT chapter adds that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from companion.environment import DeviceLike, make_generator, resolve_device
from companion.generation import generate
from companion.world import Fact


@dataclass(frozen=True)
class FactResult:
    """One fact, what the model wrote after its prompt, and whether that was right."""

    fact: Fact  # the fact asked
    completion: str  # the greedy continuation, e.g. " Thornby. Mira"
    correct: bool  # the completion begins with " " + answer and a word boundary


@dataclass(frozen=True)
class FactAccuracy:
    """Accuracy over a list of facts, with every fact's result."""

    accuracy: float  # fraction of facts completed correctly, 0 … 1
    results: tuple[FactResult, ...]  # one per fact, in the order given

    def by_relation(self) -> dict[str, float]:
        """Accuracy per relation, e.g. ``{"home_town": 0.9, "job": 0.75, ...}``."""
        groups: dict[str, list[bool]] = {}
        for r in self.results:
            groups.setdefault(r.fact.relation, []).append(r.correct)
        return {rel: sum(ok) / len(ok) for rel, ok in groups.items()}


def majority_baseline(facts: Sequence[Fact]) -> dict[str, float]:
    """Per relation, the accuracy of always answering that relation's most common answer.

    The control for :meth:`FactAccuracy.by_relation`: a model that scores no more than this on
    a relation may have learnt only which answer is commonest, not who has which. Worked
    example: two of three towns lie on the Elm, so "always Elm" scores 2/3.

    >>> def river(town, name):
    ...     return Fact(town, "river", name, f"{town} lies on the river", "", "")
    >>> facts = [river("A", "Elm"), river("B", "Elm"), river("C", "Ash")]
    >>> {k: round(v, 3) for k, v in majority_baseline(facts).items()}
    {'river': 0.667}
    """
    if not facts:
        raise ValueError("facts is empty; pass e.g. build_world().facts")
    answers: dict[str, dict[str, int]] = {}
    for f in facts:
        counts = answers.setdefault(f.relation, {})
        counts[f.answer] = counts.get(f.answer, 0) + 1
    return {rel: max(counts.values()) / sum(counts.values()) for rel, counts in answers.items()}


def is_correct(completion: str, answer: str) -> bool:
    """Whether ``completion`` begins with ``" " + answer`` followed by a non-letter or nothing.

    >>> is_correct(" pie. Then", "pie"), is_correct(" pies", "pie"), is_correct("pie", "pie")
    (True, False, False)
    """
    expected = " " + answer
    if not completion.startswith(expected):
        return False
    rest = completion[len(expected) :]
    return not rest or not rest[0].isalpha()


def _encode(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("an empty prompt has no token to continue; give at least one character")
    return ids


@torch.no_grad()
def complete(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 20,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    device: DeviceLike = None,
) -> list[str]:
    """The model's continuation of each prompt (the new text only), in the order given.

    ``temperature=0`` is greedy (``seed`` unused); otherwise sampling draws from a generator
    seeded with ``seed``, so the same call gives the same completions. Prompts of equal token
    length run as one batch (B, T). The model is moved to ``device`` (and stays there).

    >>> from companion.model import GPT, GPTConfig
    >>> from companion.char_tokenizer import CharTokenizer
    >>> tok = CharTokenizer.from_text("ab ")
    >>> model = GPT(GPTConfig(tok.vocab_size, 16, 1, 1, 8))
    >>> [len(c) for c in complete(model, tok, ["ab", "a b"], max_new_tokens=3, device="cpu")]
    [3, 3]
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings; wrap a single prompt as [prompt]")
    target = resolve_device(device)
    model.to(target)
    generator = None if temperature == 0 else make_generator(seed, target)
    encoded = [_encode(tokenizer, p) for p in prompts]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    out: list[str] = [""] * len(prompts)
    for _, indices in sorted(by_length.items()):
        idx = torch.tensor([encoded[i] for i in indices], device=target)  # (B, T)
        new = generate(
            model, idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator
        )[:, idx.shape[1] :]  # (B, max_new_tokens)
        for i, row in zip(indices, new.tolist(), strict=True):
            out[i] = tokenizer.decode(row)
    return out


def fact_completion_accuracy(
    model: nn.Module, tokenizer, facts: Sequence[Fact], *, device: DeviceLike = None
) -> FactAccuracy:
    """Greedy-complete every fact's prompt and score it with :func:`is_correct`.

    Each prompt gets as many new tokens as the longest ``" " + answer`` needs, plus one to see
    the word boundary.
    """
    if not facts:
        raise ValueError("facts is empty; pass e.g. build_world().facts")
    longest = max(len(tokenizer.encode(" " + f.answer)) for f in facts)
    prompts = [f.prompt for f in facts]
    completions = complete(
        model, tokenizer, prompts, max_new_tokens=longest + 1, temperature=0, device=device
    )
    results = tuple(
        FactResult(f, c, is_correct(c, f.answer)) for f, c in zip(facts, completions, strict=True)
    )
    return FactAccuracy(sum(r.correct for r in results) / len(results), results)
