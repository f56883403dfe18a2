"""What a language model knows: fact-completion accuracy, and the baselines it must beat.

Taught in ``04_pretraining.ipynb`` (the base model's knowledge of the course world); chapter 5
reuses it on the chat model. Shape vocabulary: B batch (prompts of equal token length), T time.

A fact counts as known when the **greedy** continuation of its ``prompt`` begins with
``" " + answer`` followed by a non-letter (:func:`companion.measurement.completion_is_correct`:
"pie" does not count "pies"). Prompts are batched by token length
(:func:`companion.generation.generate_many`), so no padding or attention mask is needed.
:func:`majority_baseline` (per relation) and :func:`majority_answer_accuracy` (answers learnt on
one set of facts, scored on another) are the controls: always give a relation's most common
answer, which a model can do without knowing any one fact. Questions asked in words, and their
replies scored, are chapter 5's (:mod:`companion.questions`).

Left out: log-likelihood scoring of answer choices, few-shot prompts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from companion.generation import generate_many
from companion.measurement import completion_is_correct
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


def most_common_answers(facts: Sequence[Fact]) -> dict[str, str]:
    """Per relation, the answer that most of ``facts`` give (the first seen wins a tie).

    >>> a, b = Fact("A", "job", "baker", "", "", ""), Fact("B", "job", "smith", "", "", "")
    >>> most_common_answers([a, b, b])
    {'job': 'smith'}
    """
    counts: dict[str, Counter] = {}
    for f in facts:
        counts.setdefault(f.relation, Counter())[f.answer] += 1
    return {relation: c.most_common(1)[0][0] for relation, c in counts.items()}


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
    guess = most_common_answers(facts)
    right: Counter = Counter(f.relation for f in facts if f.answer == guess[f.relation])
    total: Counter = Counter(f.relation for f in facts)
    return {relation: right[relation] / n for relation, n in total.items()}


def encode_prompt(tokenizer, text: str) -> list[int]:
    """``tokenizer.encode(text)``; a clear error for a prompt with no token to continue."""
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("an empty prompt has no token to continue; give at least one character")
    return ids


@torch.no_grad()
def complete(
    model: nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 20,
    temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
) -> list[str]:  # fmt: skip
    """The model's continuation of each prompt (the new text only), in the order given.

    ``temperature=0`` is greedy (``seed`` unused); otherwise sampling draws from a generator
    seeded with ``seed``, so the same call gives the same completions. Prompts of equal token
    length run as one batch (B, T), on the model's own device (it is never moved).

    >>> from companion.model import GPT, GPTConfig
    >>> from companion.char_tokenizer import CharTokenizer
    >>> tok = CharTokenizer.from_text("ab ")
    >>> model = GPT(GPTConfig(tok.vocab_size, 16, 1, 1, 8))
    >>> [len(c) for c in complete(model, tok, ["ab", "a b"], max_new_tokens=3)]
    [3, 3]
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings; wrap a single prompt as [prompt]")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    replies = generate_many(
        model, encoded, (), max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, seed=seed,
    )  # fmt: skip
    return [tokenizer.decode(c.ids) for c in replies]


def fact_completion_accuracy(model: nn.Module, tokenizer, facts: Sequence[Fact]) -> FactAccuracy:
    """Greedy-complete every fact's prompt and score it with
    :func:`companion.measurement.completion_is_correct`.

    Each prompt gets as many new tokens as the longest ``" " + answer`` needs, plus one to see
    the word boundary.
    """
    if not facts:
        raise ValueError("facts is empty; pass e.g. build_world().facts")
    longest = max(len(tokenizer.encode(" " + f.answer)) for f in facts)
    prompts = [f.prompt for f in facts]
    completions = complete(model, tokenizer, prompts, max_new_tokens=longest + 1, temperature=0)
    results = tuple(
        FactResult(f, c, completion_is_correct(c, f.answer))
        for f, c in zip(facts, completions, strict=True)
    )
    return FactAccuracy(sum(r.correct for r in results) / len(results), results)


def majority_answer_accuracy(train_facts: Sequence[Fact], test_facts: Sequence[Fact]) -> float:
    """Accuracy on ``test_facts`` of always answering a relation's most common answer among
    ``train_facts``.

    A model that learned only "which answer is usual for this kind of question" scores this.

    >>> a = Fact("A", "job", "baker", "", "", "")
    >>> b = Fact("B", "job", "smith", "", "", "")
    >>> majority_answer_accuracy([a, a, b], [a, b])
    0.5
    """
    if not train_facts or not test_facts:
        raise ValueError("train_facts and test_facts must both be non-empty lists of facts")
    guess = most_common_answers(train_facts)
    return sum(guess.get(f.relation) == f.answer for f in test_facts) / len(test_facts)
