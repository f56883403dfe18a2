"""Hallucination, measured: ask a model about people and towns its corpus never mentions.

Taught in ``07_inference.ipynb`` (section 6). The course world holds *held-out* entities
(``world.held_out``): true in the world, absent from the corpus. Whatever a model states about
them, it invented. The same questions about in-corpus entities are the baseline: there the model
can know the answer.

A **prompt format** turns a :class:`~companion.world.Fact` into the token ids the model reads, so
any model plugs in with one line: the base model reads the fact's own prompt
(:func:`fact_prompt`, "Mira lives in the town of"); a chat model reads the fact's question in its
chat template (:func:`chat_prompt`). :func:`ask` lets the model write a few tokens after each
prompt and finds the first answer **of the right kind** in them (a town for "lives in", a colour
for a pet's colour: ``world.choices(relation)``), with the probability the model gave that
answer's tokens (their product, at temperature 1; :func:`companion.measurement.find_answer`).
:func:`summarize` turns the answers into shares:

* ``answered``: stated an answer of the right kind (for a held-out entity: an invented one);
* ``confident``: answered with probability ≥ ``threshold`` (0.5: more likely than all else);
* ``correct``: the stated answer is the true one (for held-out entities: luck);
* ``median_probability``: over the answered questions.

Abstention (a model trained to say "I do not know") is chapter 6's; this module only measures
it, as a reply that states no answer. Left out: retrieval and calibration curves; it counts only
answers from the world's own vocabulary, so an invented answer outside it (a made-up town) is
not counted as an answer.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from torch import nn

from companion.chat import COURSE_CHAT, ChatTemplate, question_ids
from companion.generation import generate_many
from companion.measurement import find_answer
from companion.world import Fact, World

PromptFormat = Callable[[Fact], list[int]]  # a fact -> the token ids the model reads


def fact_prompt(tokenizer) -> PromptFormat:
    """The base model's format: the fact's own prompt, e.g. "Mira lives in the town of"."""
    return lambda fact: tokenizer.encode(fact.prompt)


def chat_prompt(tokenizer, template: ChatTemplate = COURSE_CHAT) -> PromptFormat:
    """A chat model's format: the fact's question as one user message in ``template``, ready
    for the reply (:func:`companion.chat.question_ids`)."""
    return lambda fact: question_ids(fact.question, tokenizer, template=template)


@dataclass(frozen=True)
class StatedAnswer:
    """What a model wrote after one fact's prompt, and the answer found in it."""

    fact: Fact  # the fact asked about
    known: bool  # True: the corpus describes the fact's entity; False: held out
    ids: tuple[int, ...]  # the new token ids, up to (without) a stop token
    probs: tuple[float, ...]  # the probability the model gave each of them (temperature 1)
    pieces: tuple[str, ...]  # each new token's text
    answer: str | None  # the first value of the right kind in the completion, or None
    probability: float  # product of the probabilities of the answer's tokens; 0.0 if none

    @property
    def completion(self) -> str:
        """The new text, e.g. " Thornby. Mira"."""
        return "".join(self.pieces)

    @property
    def correct(self) -> bool:
        """The stated answer is the fact's true answer."""
        return self.answer == self.fact.answer


def ask(
    model: nn.Module,
    tokenizer,
    world: World,
    facts: Sequence[Fact],
    prompt_format: PromptFormat,
    *,
    max_new_tokens: int = 6,
    temperature: float = 0.0,
    seed: int = 0,
    stop_tokens: Collection[int] = (),
) -> list[StatedAnswer]:
    """Let the model continue each fact's prompt and find the answer it gives.

    1. format each fact's prompt;
    2. :func:`companion.generation.generate_many` ``max_new_tokens`` tokens (greedy at
       temperature 0, else sampled from a generator seeded with ``seed``), cut at the first stop
       token, with the probability the model (at temperature 1) gave each new token;
    3. :func:`companion.measurement.find_answer` with ``world.choices(fact.relation)``.

    Whether an entity is known is read from ``world.held_out``. The model runs where it is.
    """
    held_out = {e.name for e in world.held_out} | {p.pet for p in world.held_out_people}
    prompts = [list(prompt_format(f)) for f in facts]
    continuations = generate_many(
        model, prompts, list(stop_tokens), max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed, with_probs=True,
    )  # fmt: skip
    out = []
    for fact, c in zip(facts, continuations, strict=True):
        pieces = tuple(tokenizer.decode([token]) for token in c.ids)
        answer, probability = find_answer(pieces, c.probs, world.choices(fact.relation))
        known = fact.subject not in held_out
        out.append(
            StatedAnswer(fact, known, tuple(c.ids), tuple(c.probs), pieces, answer, probability)
        )
    return out


def summarize(answers: Sequence[StatedAnswer], *, threshold: float = 0.5) -> dict[str, float]:
    """Shares of ``answers``: answered, confident (probability ≥ ``threshold``), correct, and
    the median probability of the stated answers (NaN if none).

    >>> f = Fact("Mira", "job", "baker", "Mira works as a", "?", ".")
    >>> a = StatedAnswer(f, False, (1,), (0.8,), (" baker",), "baker", 0.8)
    >>> b = StatedAnswer(f, False, (2,), (0.3,), (" the",), None, 0.0)
    >>> summarize([a, b])
    {'answered': 0.5, 'confident': 0.5, 'correct': 0.5, 'median_probability': 0.8}
    """
    if not answers:
        raise ValueError("no answers to summarize; pass the list that ask() returned")
    n = len(answers)
    stated = [a.probability for a in answers if a.answer is not None]
    return {
        "answered": len(stated) / n,
        "confident": sum(p >= threshold for p in stated) / n,
        "correct": sum(a.correct for a in answers) / n,
        "median_probability": statistics.median(stated) if stated else float("nan"),
    }


def coloured_tokens_html(pieces: Sequence[str], probs: Sequence[float]) -> str:
    """Tokens as boxes coloured by the probability the model gave them: red near 0, yellow
    near 0.5, green near 1; the probability shows on hover.

    >>> coloured_tokens_html([" Elm"], [1.0]).count("hsl(120")
    1
    """
    boxes = [
        f'<span title="{p:.3f}" style="background:hsl({120 * p:.0f},75%,75%);padding:1px 2px;'
        f'margin:1px;border-radius:3px;font-family:monospace;white-space:pre">'
        f"{html.escape(piece)}</span>"
        for piece, p in zip(pieces, probs, strict=True)
    ]
    return "".join(boxes)
