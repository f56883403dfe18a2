"""Hallucination, measured: ask a model about people and towns its corpus never mentions.

Taught in ``07_inference.ipynb`` (section 6). The course world holds *held-out* entities
(``world.held_out``): true in the world, absent from the corpus. Whatever a model states about
them, it invented. The same questions about in-corpus entities are the baseline: there the model
can know the answer.

A **prompt format** turns a :class:`~companion.world.Fact` into the token ids the model reads, so
any model plugs in with one line: the base model reads the fact's own prompt
(:func:`fact_prompt`, "Mira lives in the town of"); a chat model reads the fact's question in its
chat template (:func:`chat_prompt`), or the question followed by the start of its reply, which
names the subject (:func:`prefilled_chat_prompt`, "... Mira lives in"). :func:`ask` lets the
model write a few tokens after each prompt, finds the first answer **of the right kind** in them
(a town for "lives in", a colour for a pet's colour: ``world.choices(relation)``) with the
probability the model gave that answer's tokens (their product, at temperature 1;
:func:`companion.measurement.find_answer`), and sorts the reply into one :data:`OUTCOMES`
(:func:`classify`): an answer about the entity asked, a **substitution** (the reply is about
another entity of the world: "The shop in Pebbleton sells lamps." when Stonebridge was asked), a
refusal, or no answer. :func:`summarize` turns the outcomes into shares; :func:`auroc` and
:func:`bootstrap_interval` measure how well an answer's probability separates true answers about
known entities from invented ones about held-out entities. :func:`unstated_facts` asks the middle
case: an entity the model knows (a pet), a fact the world never states (its favourite food).

:func:`context_message` and :func:`read_from_context` measure the standard remedy in its
smallest form, retrieval-augmented generation by hand: put the fact the model lacks into the
user's message ("Bram works as a weaver. What is Bram's job?") and see whether the reply reads
it, against the same question asked cold and a control that states another value.

Abstention (a model trained to say "I do not know") is taught in chapters 5 and 6; this module
only measures it. Left out: a retriever (the facts are put in by hand) and calibration curves; it counts only answers from the world's own
vocabulary, so an invented answer outside it (a made-up town) is not counted as an answer.
"""

from __future__ import annotations

import html
import math
import random
import statistics
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from torch import nn

from companion.chat import COURSE_CHAT, ChatTemplate, question_ids
from companion.evaluation import majority_answer_accuracy
from companion.generation import generate_many
from companion.measurement import find_answer, has_word, says_do_not_know
from companion.world import RELATIONS, Fact, World

PromptFormat = Callable[[Fact], list[int]]  # a fact -> the token ids the model reads
OUTCOMES: tuple[str, ...] = ("answer", "substitution", "refusal", "no answer")  # see classify


def fact_prompt(tokenizer) -> PromptFormat:
    """The base model's format: the fact's own prompt, e.g. "Mira lives in the town of"."""
    return lambda fact: tokenizer.encode(fact.prompt)


def chat_prompt(tokenizer, template: ChatTemplate = COURSE_CHAT) -> PromptFormat:
    """A chat model's format: the fact's question as one user message in ``template``, ready
    for the reply (:func:`companion.chat.question_ids`)."""
    return lambda fact: question_ids(fact.question, tokenizer, template=template)


def reply_start(fact: Fact) -> str:
    """The fact's reply up to its answer: the words that name the subject.

    >>> reply_start(Fact("Pip", "pet_colour", "grey", "", "", "Pip is a grey cat."))
    'Pip is a'
    """
    return fact.reply[: fact.reply.index(" " + fact.answer)]


def prefilled_chat_prompt(tokenizer, template: ChatTemplate = COURSE_CHAT) -> PromptFormat:
    """A chat model's format with its reply begun: the question in ``template``, then
    :func:`reply_start` as the assistant's first words ("... <|assistant|> Mira lives in"), so
    the next words can only be about the entity asked."""
    return lambda fact: (
        question_ids(fact.question, tokenizer, template=template)
        + list(tokenizer.encode_ordinary(" " + reply_start(fact)))
    )


def entity_names(world: World, subject: str) -> tuple[str, ...]:
    """The names that stand for the entity ``subject`` belongs to: a town's name, or a person's
    name and their pet's (a pet's colour is a fact about the pet, but "Mira's cat" names it).

    >>> from companion.world import build_world
    >>> world = build_world(0)
    >>> p = world.people[0]
    >>> entity_names(world, p.pet) == entity_names(world, p.name) == (p.name, p.pet)
    True
    """
    for town in world.towns + world.held_out_towns:
        if town.name == subject:
            return (town.name,)
    for person in world.people + world.held_out_people:
        if subject in (person.name, person.pet):
            return (person.name, person.pet)
    raise ValueError(f"{subject!r} names no town, person or pet of this world")


def world_names(world: World) -> tuple[str, ...]:
    """Every town, person and pet name of ``world``, known and held out."""
    towns = world.towns + world.held_out_towns
    people = world.people + world.held_out_people
    return tuple(t.name for t in towns) + tuple(n for p in people for n in (p.name, p.pet))


def classify(reply: str, fact: Fact, world: World) -> str:
    """Which of :data:`OUTCOMES` ``reply`` (the model's new text after ``fact``'s prompt) is:

    1. ``"refusal"``: it declines (:func:`companion.measurement.says_do_not_know`);
    2. ``"substitution"``: the first name of the world in it (any town, person or pet, known or
       held out, as a whole word) belongs to another entity than the one asked
       (:func:`entity_names`) and comes before any answer of the right kind. A name that is
       itself such an answer (a town after "lives in") is the answer, and a name after the
       answer starts another sentence;
    3. ``"answer"``: it names an answer of the right kind (``world.choices(fact.relation)``),
       about the entity asked: the reply names it first, or names no one (the prompt did);
    4. ``"no answer"``: none of these.

    >>> from companion.world import build_world
    >>> world = build_world(0)
    >>> fact = world.held_out_facts[0]  # a held-out town's river
    >>> fact.question
    'Which river does Stonebridge lie on?'
    >>> [classify(r, fact, world) for r in (" Stonebridge lies on the river Elm.",
    ...     " Pebbleton lies on the river Elm.", " I do not know.", " Elm.", " the hills.")]
    ['answer', 'substitution', 'refusal', 'answer', 'no answer']
    """
    if says_do_not_know(reply):
        return "refusal"
    choices = world.choices(fact.relation)
    # the first word that is a name or an answer: a name first, not an answer, may substitute
    first, _ = find_answer([reply], [1.0], {*choices, *world_names(world)})
    if first not in (None, *choices, *entity_names(world, fact.subject)):
        return "substitution"
    answer, _ = find_answer([reply], [1.0], choices)
    return "no answer" if answer is None else "answer"


def unstated_facts(world: World) -> tuple[Fact, ...]:
    """A question about each known person's pet that the world never answers: its favourite
    food ("What is Pip's favourite food?"). Only people have a favourite food, so the corpus
    names every one of these pets and never states this fact; each fact's ``answer`` is ``""``
    (none is true), and any answer a model gives is invented about an entity it knows.

    >>> from companion.world import build_world
    >>> fact = unstated_facts(build_world(0))[0]
    >>> fact.question, fact.answer
    ("What is Olive's favourite food?", '')
    """
    prompt, question, _ = RELATIONS["food"]
    return tuple(
        Fact(p.pet, "food", "", prompt.format(name=p.pet), question.format(name=p.pet), "")
        for p in world.people
    )


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
    outcome: str  # one of OUTCOMES (classify); "answer": an answer about the entity asked

    @property
    def completion(self) -> str:
        """The new text, e.g. " Thornby. Mira"."""
        return "".join(self.pieces)

    @property
    def correct(self) -> bool:
        """The reply is about the entity asked and states the fact's true answer."""
        return self.outcome == "answer" and self.answer == self.fact.answer


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
    3. :func:`companion.measurement.find_answer` with ``world.choices(fact.relation)``;
    4. :func:`classify` the reply.

    Whether an entity is known is read from ``world.held_out``. The model runs where it is.
    """
    held_out = set(world.held_out_names)
    prompts = [list(prompt_format(f)) for f in facts]
    continuations = generate_many(
        model, prompts, list(stop_tokens), max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed, with_probs=True,
    )  # fmt: skip
    out = []
    for fact, c in zip(facts, continuations, strict=True):
        pieces = tuple(tokenizer.decode([token]) for token in c.ids)
        answer, probability = find_answer(pieces, c.probs, world.choices(fact.relation))
        outcome = classify("".join(pieces), fact, world)
        known = fact.subject not in held_out
        out.append(
            StatedAnswer(
                fact, known, tuple(c.ids), tuple(c.probs), pieces, answer, probability, outcome
            )
        )
    return out


def summarize(answers: Sequence[StatedAnswer], *, threshold: float = 0.5) -> dict[str, float]:
    """Shares of ``answers`` by outcome (:func:`classify`): ``answered`` (an answer about the
    entity asked; for a held-out entity, an invented one), ``confident`` (such an answer with
    probability ≥ ``threshold``), ``correct``, ``substituted``, ``refused``; and the median
    probability of the answers about the entity asked (NaN if none).

    >>> f = Fact("Mira", "job", "baker", "Mira works as a", "?", ".")
    >>> a = StatedAnswer(f, False, (1,), (0.8,), (" baker",), "baker", 0.8, "answer")
    >>> b = StatedAnswer(f, False, (2,), (0.9,), (" Bram",), "smith", 0.9, "substitution")
    >>> summarize([a, b])
    {'answered': 0.5, 'confident': 0.5, 'correct': 0.5, 'substituted': 0.5, 'refused': 0.0, \
'median_probability': 0.8}
    """
    if not answers:
        raise ValueError("no answers to summarize; pass the list that ask() returned")
    n = len(answers)
    stated = [a.probability for a in answers if a.outcome == "answer"]
    return {
        "answered": len(stated) / n,
        "confident": sum(p >= threshold for p in stated) / n,
        "correct": sum(a.correct for a in answers) / n,
        "substituted": sum(a.outcome == "substitution" for a in answers) / n,
        "refused": sum(a.outcome == "refusal" for a in answers) / n,
        "median_probability": statistics.median(stated) if stated else float("nan"),
    }


def chance_correct(world: World, facts: Sequence[Fact]) -> dict[str, float]:
    """The share of ``facts`` answered right by guessing, two ways: ``uniform`` (an answer drawn
    uniformly from ``world.choices(relation)``: the mean of 1 / the number of choices) and
    ``majority`` (always the relation's commonest answer among the known facts,
    :func:`companion.evaluation.majority_answer_accuracy`).
    """
    if not facts:
        raise ValueError("no facts; pass e.g. world.held_out_facts")
    uniform = sum(1 / len(world.choices(f.relation)) for f in facts) / len(facts)
    return {"uniform": uniform, "majority": majority_answer_accuracy(world.facts, facts)}


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """The area under the ROC curve of a score: the chance that a random positive scores
    higher than a random negative, a tie counting half (the Mann-Whitney U statistic over
    ``len(positives) * len(negatives)`` pairs). 1: the score separates them; 0.5: it does not.

    >>> auroc([0.9, 0.8, 0.4], [0.5, 0.1])  # pairs won: 2 + 2 + 1 of 6
    0.8333333333333334
    >>> auroc([0.5], [0.5, 0.2])  # a tie counts half: (0.5 + 1) / 2
    0.75
    """
    if not positives or not negatives:
        raise ValueError(
            f"auroc needs at least one positive and one negative score; got {len(positives)} "
            f"and {len(negatives)}"
        )
    if not all(math.isfinite(x) for x in (*positives, *negatives)):
        raise ValueError("auroc's scores must be finite numbers")
    # rank all scores together (ties share their mean rank); the positives' rank sum gives U
    scores = sorted([(x, 1) for x in positives] + [(x, 0) for x in negatives])
    rank_sum, i = 0.0, 0
    while i < len(scores):
        j = i
        while j < len(scores) and scores[j][0] == scores[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2  # ranks i+1 .. j share their mean
        rank_sum += mean_rank * sum(label for _, label in scores[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_interval(
    positives: Sequence[float],
    negatives: Sequence[float],
    *,
    resamples: int = 1000,
    level: float = 0.9,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval for :func:`auroc`: redraw ``positives`` and
    ``negatives`` with replacement (each group keeps its size) ``resamples`` times from a
    ``random.Random(seed)``, and return the middle ``level`` of the AUROCs as ``(low, high)``.

    Facts about one entity are treated as independent; they are not quite (40 held-out facts
    belong to 8 entities), so the interval is if anything too narrow.

    >>> bootstrap_interval([0.9, 0.8], [0.1, 0.2])  # every redraw separates them
    (1.0, 1.0)
    """
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"need 0 < level < 1 and resamples >= 1; got {level}, {resamples}")
    auroc(positives, negatives)  # checks the scores once
    rng = random.Random(seed)
    values = sorted(
        auroc(rng.choices(positives, k=len(positives)), rng.choices(negatives, k=len(negatives)))
        for _ in range(resamples)
    )
    tail = (1 - level) / 2
    return values[int(tail * resamples)], values[math.ceil((1 - tail) * resamples) - 1]


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


def context_message(fact: Fact, value: str | None = None) -> str:
    """The user's message that states ``fact`` and then asks it: its statement with ``value`` in
    place of its answer (``None``: the true answer), then its question.

    >>> f = Fact("Bram", "job", "weaver", "Bram works as a", "What is Bram's job?", "")
    >>> context_message(f)
    "Bram works as a weaver. What is Bram's job?"
    >>> context_message(f, "smith")
    "Bram works as a smith. What is Bram's job?"
    """
    if not isinstance(fact, Fact):
        raise TypeError(f"fact must be a Fact, got a {type(fact).__name__}; e.g. world.facts[0]")
    value = fact.answer if value is None else value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"value={value!r}: the value to state must be a non-empty string")
    if value != value.strip() or not value.isprintable() or any(c in value for c in ".?!"):
        raise ValueError(
            f"value={value!r} must be one answer, e.g. 'smith': no surrounding spaces, newline "
            "or sentence end (the message adds its own)"
        )
    return f"{replace(fact, answer=value).statement} {fact.question}"


@dataclass(frozen=True)
class ContextTrial:
    """A chat model asked the same facts three ways (:func:`read_from_context`)."""

    cold: tuple[StatedAnswer, ...]  # the fact's question alone
    stated: tuple[StatedAnswer, ...]  # its statement, then its question
    other: tuple[StatedAnswer, ...]  # another value's statement, then the question
    other_values: tuple[str, ...]  # the value stated in ``other``, one per fact

    def __post_init__(self) -> None:
        facts = [a.fact for a in self.cold]
        if [a.fact for a in self.stated] != facts or [a.fact for a in self.other] != facts:
            raise ValueError("cold, stated and other must answer the same facts in the same order")
        if len(self.other_values) != len(facts):
            raise ValueError(f"other_values must hold one value per fact ({len(facts)})")

    def counts(self) -> dict[str, int]:
        """How many replies (of ``n``) give the first answer of the right kind equal to the true
        one (``*_right``) or to the other stated value (``other_follows``), decline
        (``*_declined``, :func:`companion.measurement.says_do_not_know`), or name the subject
        as a whole word (``*_names_subject``)."""
        out = {"n": len(self.cold)}
        runs = {"cold": self.cold, "stated": self.stated, "other": self.other}
        for name, run in runs.items():
            out[f"{name}_right"] = sum(a.answer == a.fact.answer for a in run)
            out[f"{name}_declined"] = sum(says_do_not_know(a.completion) for a in run)
            out[f"{name}_names_subject"] = sum(has_word(a.completion, a.fact.subject) for a in run)
        out["other_follows"] = sum(
            a.answer == v for a, v in zip(self.other, self.other_values, strict=True)
        )
        return out


def read_from_context(
    model: nn.Module,
    tokenizer,
    world: World,
    facts: Sequence[Fact],
    *,
    seed: int = 0,
    max_new_tokens: int = 16,
    stop_tokens: Collection[int] = (),
    template: ChatTemplate = COURSE_CHAT,
) -> ContextTrial:
    """Ask each fact greedily in ``template``, three ways (:func:`ask`): **cold** (its question
    alone), **stated** (:func:`context_message`: its statement, then its question) and
    **other** (the statement of another value of the relation, one of
    ``world.wrong_answers(fact)`` drawn with ``random.Random(seed)``, then the question). A
    model that reads its context follows the stated value in both; one that recalls gives the
    same answer in all three. The model runs where it is, and keeps its mode.
    """
    facts = _check_context_call(world, facts, seed, max_new_tokens, template)
    rng = random.Random(seed)
    other_values = tuple(rng.choice(world.wrong_answers(f)) for f in facts)

    def message_format(values: Mapping[Fact, str] | None) -> PromptFormat:
        return lambda fact: question_ids(
            context_message(fact, None if values is None else values[fact]), tokenizer,
            template=template,
        )  # fmt: skip

    formats = (
        chat_prompt(tokenizer, template),
        message_format(None),
        message_format(dict(zip(facts, other_values, strict=True))),
    )
    # the probabilities are read over prompt + reply, which must fit the model's window
    longest, L = max(len(fmt(f)) for fmt in formats for f in facts), model.config.context_length
    if longest + max_new_tokens - 1 > L:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} after a prompt of {longest} tokens runs past "
            f"context_length={L}; use at most {L + 1 - longest}"
        )
    kwargs = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "stop_tokens": stop_tokens}
    runs = [tuple(ask(model, tokenizer, world, facts, fmt, **kwargs)) for fmt in formats]
    return ContextTrial(*runs, other_values)


def _check_context_call(world, facts, seed, max_new_tokens, template) -> tuple[Fact, ...]:
    """:func:`read_from_context`'s arguments checked before any generation; ``facts`` as a tuple
    (a generator is read once)."""
    if not isinstance(world, World):
        raise TypeError(f"world must be a World, got a {type(world).__name__}; e.g. build_world(0)")
    if isinstance(facts, Fact) or facts is None:
        raise TypeError("facts must be a list of Facts; for one fact pass [fact]")
    facts = tuple(facts)
    if not facts:
        raise ValueError("no facts; pass e.g. the held-out facts of CONTEXT_RELATIONS")
    for fact in facts:
        if not isinstance(fact, Fact):
            raise TypeError(f"facts must be Facts, got a {type(fact).__name__}: {fact!r}")
    if len(set(facts)) != len(facts):
        raise ValueError("each fact once: a repeated fact would be stated one other value only")
    own = {*world.facts, *world.held_out_facts}
    for fact in facts:
        if fact not in own:  # another world's fact would be scored against this world's
            raise ValueError(
                f"{fact!r} is not a fact of this world (seed {world.seed}); pass the world the "
                "facts came from"
            )
        if not world.wrong_answers(fact):
            raise ValueError(f"{fact.relation!r} has no other value to state in this world")
    if isinstance(seed, bool) or not isinstance(seed, int):  # "1" or None: another draw, silently
        raise ValueError(f"seed={seed!r} must be an int, e.g. 0")
    if not isinstance(template, ChatTemplate):
        raise TypeError(
            f"template must be a ChatTemplate, got a {type(template).__name__}; e.g. COURSE_CHAT"
        )
    n = max_new_tokens
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:  # 0 would count nothing, silently
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 1")
    return facts
