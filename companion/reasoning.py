"""Two-hop questions, chain of thought, GRPO on them, and spending compute at inference time.

Taught in ``08_reasoning.ipynb``. A *two-hop* question needs two facts the model already knows:
"Which river flows through the town where Kofi lives?" needs Kofi's home town (Pebbleton) and
Pebbleton's river (Dove). Every reply ends with its answer as ``So: Dove.``, which
:func:`check_answer` reads: *right*, *wrong* or *malformed*. A *trace* (chain of thought) writes
the middle fact down first::

    Kofi lives in Pebbleton. Pebbleton lies on the river Dove. So: Dove.

The questions are split by *person* (:func:`split_people`): training sees some people's
questions, evaluation asks only the others', so an accuracy on the held-out side is not a
remembered answer to a trained question. :func:`majority_baseline` is the score of always giving
a relation's commonest answer. The corpus, though, also states a person's river and goods next to
their name (:func:`co_statements` counts them), so a direct answer can be recalled rather than
composed: the chapter measures this.

GRPO itself is in :mod:`companion.grpo`; :func:`two_hop_grpo` runs it with the world as the
judge. At inference time, :func:`sample_answers` draws N replies per question, and
:func:`majority_vote` (self-consistency), best-of-N with the world as a perfect verifier, and
:func:`pass_at_k` turn them into accuracies (:func:`scaling_table`). :func:`train_reasoning_model`
is the recipe of the shipped model (``python -m companion.reasoning --out DIR``).

Left out: questions of more than two hops, learned verifiers, and process rewards.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from companion.chat import END, chat_many, question_ids, special_ids
from companion.checkpoints import check_can_save, load_shipped, save_checkpoint
from companion.corpus import END_OF_TEXT
from companion.evaluation import most_common_answers
from companion.generation import generate_many
from companion.grpo import GRPOConfig, GRPOLog, train_grpo
from companion.kv_cache import CachedGPT
from companion.measurement import has_word
from companion.model import GPT
from companion.sft import SFTBatches, encode_conversations
from companion.train_config import TrainConfig
from companion.world import RELATIONS, Fact, Person, World, build_world

# relation of the town -> the two-hop question about a person. The hops are the person's
# home_town fact and the town's fact; their replies (RELATIONS) are the trace's two sentences.
# Caution: the corpus also names a person with their town's river or goods in one sentence
# ("Kofi has a house in Pebbleton, by the river Dove."), about 100 and 55 times per person, so
# a model can know these answers without composing two facts.
TWO_HOP: dict[str, str] = {
    "river": "Which river flows through the town where {name} lives?",
    "goods": "What does the shop in the town where {name} lives sell?",
}
# the answer line every reply ends with; \b: "So" as a word ("ALSo: Dove." has no answer line)
FINAL = re.compile(r"\bSo: ([A-Za-z]+)\.$")


@dataclass(frozen=True)
class TwoHop:
    """One two-hop question, e.g. Kofi's river: ``TwoHop("Kofi", "river", "Pebbleton", "Dove",
    "Which river flows through the town where Kofi lives?")``."""

    person: str  # who the question is about, e.g. "Kofi"
    relation: str  # the town's relation asked: "river" or "goods"
    town: str  # the middle fact: the person's home town, e.g. "Pebbleton"
    answer: str  # e.g. "Dove"
    question: str  # the question asked

    def __post_init__(self) -> None:
        for name in ("person", "relation", "town", "answer", "question"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(
                    f"TwoHop.{name} must be a str, got {type(value).__name__} {value!r}"
                )
        for name in ("person", "town"):
            if not getattr(self, name).strip():
                raise ValueError(f"TwoHop.{name} is empty: give the {name}'s name, e.g. 'Kofi'")
        if self.relation not in TWO_HOP:
            raise ValueError(
                f"TwoHop.relation={self.relation!r} is not a two-hop relation; the known ones are "
                f"{', '.join(map(repr, TWO_HOP))} (the keys of TWO_HOP)"
            )
        _check_answer(self.answer)

    @property
    def trace(self) -> str:
        """The chain of thought: both hops, then the answer line."""
        first = RELATIONS["home_town"][2].format(name=self.person, town=self.town)
        second = RELATIONS[self.relation][2].format(town=self.town, **{self.relation: self.answer})
        return f"{first} {second} So: {self.answer}."

    @property
    def direct(self) -> str:
        """The answer alone, in the same answer line: ``"So: Dove."``."""
        return f"So: {self.answer}."

    @property
    def fact(self) -> Fact:
        """The question as a :class:`Fact` about the person (for the evaluation's baselines)."""
        return Fact(self.person, self.relation, self.answer, "", self.question, self.trace)


def two_hop_questions(people: Sequence[Person]) -> tuple[TwoHop, ...]:
    """Every person's two-hop questions, in :data:`TWO_HOP`'s order.

    >>> from companion.world import build_world
    >>> q = two_hop_questions(build_world(0).people[:1])
    >>> [x.relation for x in q], q[0].trace == f"{q[0].person} lives in {q[0].town}. " + (
    ...     f"{q[0].town} lies on the river {q[0].answer}. So: {q[0].answer}.")
    (['river', 'goods'], True)
    """
    bad = next((p for p in people if not isinstance(p, Person)), None)
    if bad is not None:
        raise TypeError(
            f"people must be Person objects, got a {type(bad).__name__}; pass e.g. world.people "
            "or one side of split_people(world)"
        )
    return tuple(
        TwoHop(p.name, relation, p.town.name, p.town.fields()[relation], q.format(name=p.name))
        for p in people
        for relation, q in TWO_HOP.items()
    )


def split_people(
    world: World, *, n_held_out: int = 12, seed: int = 0
) -> tuple[tuple[Person, ...], tuple[Person, ...]]:
    """``(train_people, held_out_people)``: the world's in-corpus people, ``n_held_out`` of them
    (drawn with ``random.Random``) kept for evaluation only; each side in the world's order.

    Only in-corpus people: the hops must be facts the base model could know.

    >>> from companion.world import build_world
    >>> train, held = split_people(build_world(0))
    >>> len(train), len(held), set(train) & set(held)
    (12, 12, set())
    """
    if not isinstance(world, World):
        raise TypeError(
            f"world must be a World, got a {type(world).__name__}; pass e.g. build_world(0)"
        )
    n = len(world.people)
    if isinstance(n_held_out, bool) or not isinstance(n_held_out, int) or not 1 <= n_held_out < n:
        raise ValueError(
            f"n_held_out={n_held_out!r} must be an int from 1 to {n - 1}: the world has {n} "
            "people and both sides need someone"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):  # seed=1.0 would draw another split
        raise ValueError(f"seed must be an int, got {seed!r}; pass e.g. seed=0")
    held = set(random.Random(f"reasoning-split:{seed}").sample(range(n), n_held_out))
    people = world.people
    return (
        tuple(p for i, p in enumerate(people) if i not in held),
        tuple(p for i, p in enumerate(people) if i in held),
    )


def majority_baseline(train: Sequence[TwoHop], test: Sequence[TwoHop]) -> dict[str, float]:
    """Per relation, the accuracy on ``test`` of always giving the relation's commonest answer
    among ``train`` (:func:`companion.evaluation.most_common_answers`).

    >>> a = TwoHop("A", "river", "X", "Dove", "")
    >>> b = TwoHop("B", "river", "Y", "Elm", "")
    >>> majority_baseline([a, a, b], [a, b, b, b])
    {'river': 0.25}
    """
    _check_questions(train, "train")
    _check_questions(test, "test")
    guess = most_common_answers([q.fact for q in train])
    unseen = sorted({q.relation for q in test} - set(guess))
    if unseen:  # no commonest answer to give: a score of 0 would not be a baseline
        raise ValueError(
            f"test asks about {', '.join(map(repr, unseen))} but train has no such question, so "
            "there is no commonest answer to guess; put questions of that relation in train or "
            "leave them out of test"
        )
    out: dict[str, list[bool]] = {}
    for q in test:
        out.setdefault(q.relation, []).append(guess.get(q.relation) == q.answer)
    return {relation: sum(ok) / len(ok) for relation, ok in out.items()}


def final_answer(reply: str) -> str | None:
    """The word of the reply's closing ``So: X.``, or None if it does not end that way.

    >>> final_answer("Kofi lives in Pebbleton. So: Dove."), final_answer("Dove.")
    ('Dove', None)
    """
    if not isinstance(reply, str):
        raise TypeError(
            f"reply must be a str, got {type(reply).__name__}; decode token ids first "
            "(tokenizer.decode)"
        )
    match = FINAL.search(reply.strip())
    return match[1] if match else None


def check_answer(reply: str, answer: str, *, finished: bool = True) -> str:
    """``"right"``, ``"wrong"`` or ``"malformed"``: malformed if the model did not stop by
    itself (``finished``) or the reply does not end with ``So: X.``; else right if X is the
    answer.

    >>> check_answer("So: Dove.", "Dove"), check_answer("So: Elm.", "Dove")
    ('right', 'wrong')
    >>> check_answer("It is Dove.", "Dove"), check_answer("So: Dove.", "Dove", finished=False)
    ('malformed', 'malformed')
    """
    _check_answer(answer)
    if not isinstance(finished, bool):  # "False" or None would be read as True or False
        raise TypeError(
            f"finished must be True or False, got {type(finished).__name__} {finished!r}"
        )
    said = final_answer(reply)
    if not finished or said is None:
        return "malformed"
    return "right" if said == answer else "wrong"


def _check_answer(answer: str) -> None:
    """A TypeError or ValueError unless ``answer`` reads back from its answer line ``So: X.``
    (one word of letters): any other answer would score every reply wrong."""
    if not isinstance(answer, str):
        raise TypeError(
            f"answer must be a str, got {type(answer).__name__} {answer!r}; pass e.g. "
            "question.answer"
        )
    if final_answer(f"So: {answer}.") != answer:
        raise ValueError(
            f"answer={answer!r} cannot be read from an answer line (FINAL reads one word of "
            "letters, e.g. 'Dove'), so every reply would be scored wrong; give a one-word answer"
        )


def _check_model(model: nn.Module) -> None:
    """A TypeError unless ``model`` is a language model of the course (an nn.Module with a
    ``config`` that has a ``context_length``)."""
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not hasattr(config, "context_length"):
        raise TypeError(
            f"model must be the course's GPT (an nn.Module with a config), got a "
            f"{type(model).__name__}; e.g. load_shipped('chat')[0]"
        )


def _check_questions(questions: Sequence[TwoHop], name: str) -> None:
    """A ValueError if ``questions`` is empty, a TypeError if one is not a :class:`TwoHop`."""
    if isinstance(questions, TwoHop) or not isinstance(questions, Sequence):
        raise TypeError(
            f"{name} must be a list or tuple of TwoHop questions, got a "
            f"{type(questions).__name__}; for one question pass [question]"
        )
    if not questions:
        raise ValueError(f"{name} is empty: pass a non-empty list of TwoHop questions")
    bad = next((q for q in questions if not isinstance(q, TwoHop)), None)
    if bad is not None:
        raise TypeError(
            f"{name} must hold TwoHop questions, got a {type(bad).__name__}; pass e.g. "
            "two_hop_questions(train_people)"
        )


def where_wrong(reply: str, question: TwoHop, *, finished: bool = True) -> str:
    """For a trace: ``"right"``, ``"format"`` (malformed), ``"first hop"`` (the home town is
    not named) or ``"second hop"`` (the town is right, the answer not).

    >>> q = TwoHop("Kofi", "river", "Pebbleton", "Dove", "")
    >>> where_wrong("Kofi lives in Pebbleton. Pebbleton lies on the river Elm. So: Elm.", q)
    'second hop'
    """
    if not isinstance(question, TwoHop):
        raise TypeError(f"question must be a TwoHop, got a {type(question).__name__}")
    outcome = check_answer(reply, question.answer, finished=finished)
    if outcome != "wrong":
        return {"right": "right", "malformed": "format"}[outcome]
    return "second hop" if has_word(reply, question.town) else "first hop"


def conversations(questions: Sequence[TwoHop], *, trace: bool) -> list[list[dict[str, str]]]:
    """One conversation per question: the question, and the trace (``trace=True``) or the
    answer alone."""
    _check_questions(questions, "questions")
    if not isinstance(trace, bool):  # "no" would be read as True
        raise TypeError(f"trace must be True or False, got {type(trace).__name__} {trace!r}")
    return [
        [
            {"role": "user", "content": q.question},
            {"role": "assistant", "content": q.trace if trace else q.direct},
        ]
        for q in questions
    ]


def fine_tune_two_hop(
    model: nn.Module, tokenizer, questions: Sequence[TwoHop], config: TrainConfig, *,
    trace: bool, progress: bool = False,
):  # fmt: skip
    """Chapter 5's SFT, in place, on the questions' conversations (every one for training and
    for the validation loss); returns the :class:`companion.train_config.History`."""
    from companion.pretraining import train

    if not isinstance(config, TrainConfig):
        raise TypeError(
            f"config must be a TrainConfig, got a {type(config).__name__}; e.g. "
            "two_hop_config(steps=60, seed=0)"
        )
    _check_model(model)
    examples = encode_conversations(
        conversations(questions, trace=trace), tokenizer,
        context_length=model.config.context_length,
    )  # fmt: skip
    batches = SFTBatches(config.batch_size, special_ids(tokenizer)[END], device=config.device)
    return train(model, examples, examples, config, progress=progress, batch_fn=batches)


def answer_outcomes(
    model: nn.Module, tokenizer, questions: Sequence[TwoHop], *, max_new_tokens: int = 32,
    temperature: float = 0.0, seed: int = 0,
) -> list[str]:  # fmt: skip
    """Each question's greedy (or sampled) reply, judged by :func:`where_wrong`."""
    _check_questions(questions, "questions")
    replies = chat_many(
        model, tokenizer, [[{"role": "user", "content": q.question}] for q in questions],
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
    )  # fmt: skip
    return [where_wrong(r, q, finished=r.finished) for r, q in zip(replies, questions, strict=True)]


def two_hop_grpo(
    model: nn.Module, tokenizer, questions: Sequence[TwoHop], config: GRPOConfig | None = None
) -> tuple[nn.Module, GRPOLog]:
    """:func:`train_grpo` on two-hop questions asked in the chat template; reward 1 for a right
    final answer (:func:`check_answer`), 0 for a wrong or malformed one."""
    _check_questions(questions, "questions")
    prompts = [question_ids(q.question, tokenizer) for q in questions]

    def reward(i: int, reply: Sequence[int], finished: bool) -> float:
        text = tokenizer.decode(list(reply))
        return float(check_answer(text, questions[i].answer, finished=finished) == "right")

    return train_grpo(model, prompts, reward, special_ids(tokenizer)[END], config)


# where a sentence ends: after . ! or ? and a space, or at a document's end marker
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|" + re.escape(END_OF_TEXT))


def co_statements(corpus: str, questions: Sequence[TwoHop]) -> list[int]:
    """For each question, how many sentences of ``corpus`` name its person and its answer
    together (as whole words): a count above 0 means the answer could be recalled, not composed.

    >>> q = TwoHop("Kofi", "river", "Pebbleton", "Dove", "")
    >>> co_statements("Kofi lives by the Dove. Kofi bakes.<|endoftext|>The Dove is wide.", [q])
    [1]
    """
    if not isinstance(corpus, str):
        raise TypeError(f"corpus must be a str, got {type(corpus).__name__}")
    _check_questions(questions, "questions")
    people = {q.person for q in questions}
    by_person: dict[str, list[set[str]]] = {p: [] for p in people}
    for sentence in SENTENCE_END.split(corpus):  # one pass: linear in the corpus
        words = set(re.findall(r"[A-Za-z]+", sentence))
        for person in people & words:
            by_person[person].append(words)
    return [sum(q.answer in words for words in by_person[q.person]) for q in questions]


def _sampling_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` to sample from, in eval mode on its device, behind chapter 7's KV
    cache for a GPT: the cache re-lays the weights it is given, so the caller's model, its
    weights and its modes stay as they are."""
    copied = copy.deepcopy(model).eval()
    return CachedGPT(copied) if isinstance(copied, GPT) else copied


def answers_after_first_hop(
    model: nn.Module, tokenizer, questions: Sequence[TwoHop], towns: Sequence[str], *,
    max_new_tokens: int = 24,
) -> list[str | None]:  # fmt: skip
    """The greedy final answer of each question when its reply is begun for the model with a
    first hop of our choosing, ``"Kofi lives in <towns[i]>."``: does the second hop follow the
    town written, or the person? None where the reply has no answer line. A copy of the model
    runs, on its device; the model itself is not changed."""
    _check_questions(questions, "questions")
    _check_model(model)
    if isinstance(towns, str) or len(towns) != len(questions):
        raise ValueError(f"towns must hold one town per question ({len(questions)})")
    starts = [
        RELATIONS["home_town"][2].format(name=q.person, town=t)
        for q, t in zip(questions, towns, strict=True)
    ]
    prompts = [
        question_ids(q.question, tokenizer) + list(tokenizer.encode_ordinary(" " + start))
        for q, start in zip(questions, starts, strict=True)
    ]
    out = generate_many(
        _sampling_copy(model), prompts, [special_ids(tokenizer)[END]],
        max_new_tokens=max_new_tokens, temperature=0.0,
    )  # fmt: skip
    return [
        final_answer(start + tokenizer.decode(list(c.ids))) if c.finished else None
        for start, c in zip(starts, out, strict=True)
    ]


# --- spending compute at inference time -------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One sampled reply: its final answer (None if malformed) and its length in tokens."""

    answer: str | None  # the word of "So: X.", or None
    tokens: int  # reply tokens, the stop token included when written

    def __post_init__(self) -> None:
        if not (self.answer is None or isinstance(self.answer, str)):
            raise TypeError(f"Sample.answer must be a str or None, got {self.answer!r}")
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 0:
            raise ValueError(f"Sample.tokens must be an int >= 0, got {self.tokens!r}")


def sample_answers(
    model: nn.Module, tokenizer, questions: Sequence[TwoHop], n: int, *,
    temperature: float = 1.0, max_new_tokens: int = 32, seed: int = 0,
) -> list[list[Sample]]:  # fmt: skip
    """``n`` replies to each question, sampled at ``temperature`` through chapter 7's KV cache;
    ``[question][sample]``. A copy of the model samples, on the model's device, in eval mode: the
    model itself is not changed."""
    _check_questions(questions, "questions")
    _check_model(model)
    for name, value in (("n", n), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    stop = special_ids(tokenizer)[END]
    prompts = [question_ids(q.question, tokenizer) for q in questions for _ in range(n)]
    out = generate_many(
        _sampling_copy(model), prompts, [stop], max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed % 2**64,
    )  # fmt: skip
    samples = []
    for c in out:
        answer = final_answer(tokenizer.decode(list(c.ids))) if c.finished else None
        samples.append(Sample(answer, len(c.ids) + int(c.finished)))
    return [samples[i * n : (i + 1) * n] for i in range(len(questions))]


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The commonest answer, malformed replies (None) left out; a tie goes to the answer that
    came first; None if every reply is malformed.

    >>> majority_vote(["Dove", None, "Elm", "Elm", "Dove"]), majority_vote([None, None])
    ('Dove', None)
    """
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise TypeError(f"answers must be a list of answers, got a {type(answers).__name__}")
    bad = next((a for a in answers if not (a is None or isinstance(a, str))), None)
    if bad is not None:
        raise TypeError(
            f"answers must be strs or None, got a {type(bad).__name__}; from samples pass "
            "[s.answer for s in row]"
        )
    counts = Counter(a for a in answers if a is not None)  # keeps first-seen order on ties
    return counts.most_common(1)[0][0] if counts else None


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k replies drawn without replacement from n, of which c
    are right, is right: ``1 − C(n−c, k) / C(n, k)`` (the unbiased estimator of Chen et al.
    2021), computed as a product of min(c, k) factors, so that a large n neither overflows nor
    takes long.

    >>> pass_at_k(4, 1, 2), pass_at_k(4, 0, 4), pass_at_k(4, 4, 1)
    (0.5, 0.0, 1.0)
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(
            f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}: c counts the right "
            "replies among the n drawn, and k of those n are picked"
        )
    if n - c < k:  # every pick of k holds a right reply
        return 1.0
    miss = 1.0  # C(n-c, k) / C(n, k), as a product of min(c, k) factors
    if c <= k:
        for i in range(n - c + 1, n + 1):  # = prod over the c right ones of (1 - k / i)
            miss *= 1.0 - k / i
    else:
        for i in range(k):  # = prod over the k picks of (n - c - i) / (n - i)
            miss *= (n - c - i) / (n - i)
    return 1.0 - miss


def scaling_table(
    samples: Sequence[Sequence[Sample]], questions: Sequence[TwoHop], ks: Sequence[int]
) -> list[dict[str, float]]:
    """For each k: accuracy of the majority vote over each question's first k samples
    (self-consistency), of best-of-k picked by the world (right if any of the first k is right:
    a perfect verifier), the mean :func:`pass_at_k` over all n samples, and the reply tokens
    spent per question (the first k samples' lengths, summed, averaged over questions)."""
    _check_questions(questions, "questions")
    if not isinstance(samples, Sequence) or len(samples) != len(questions):
        raise ValueError(
            f"samples must hold one list of samples per question ({len(questions)}): pass the "
            "output of sample_answers for these questions"
        )
    if any(not isinstance(s, Sample) for row in samples for s in row):
        raise TypeError("samples must hold Sample objects: pass the output of sample_answers")
    n = len(samples[0])
    if n == 0 or any(len(row) != n for row in samples):
        raise ValueError(
            f"every question needs the same number (>= 1) of samples, got "
            f"{sorted({len(row) for row in samples})}"
        )
    if isinstance(ks, str | int) or not isinstance(ks, Sequence):
        raise TypeError(f"ks must be a list of sample counts, e.g. [1, 4, 16], got {ks!r}")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n]
    if bad or not ks:
        raise ValueError(f"ks={list(ks)!r} must be ints from 1 to {n}, the samples per question")
    rows = []
    for k in ks:
        vote = best = passed = spent = 0.0
        for q, drawn in zip(questions, samples, strict=True):
            first = drawn[:k]
            vote += majority_vote([s.answer for s in first]) == q.answer
            best += any(s.answer == q.answer for s in first)
            passed += pass_at_k(n, sum(s.answer == q.answer for s in drawn), k)
            spent += sum(s.tokens for s in first)
        m = len(questions)
        rows.append({"k": k, "majority_vote": vote / m, "best_of_k": best / m,
                     "pass_at_k": passed / m, "tokens": spent / m})  # fmt: skip
    return rows


# --- the shipped reasoning model ---------------------------------------------------------------


def two_hop_config(steps: int, seed: int) -> TrainConfig:
    """The SFT recipe on two-hop conversations: batches of 8, AdamW at 3e-4 after 10 warm-up
    steps (fewer for a very short run), cosine to 3e-5, no weight decay, on the CPU."""
    for name, value in (("steps", steps), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if steps < 2:
        raise ValueError(f"steps={steps} must be at least 2 (one warm-up step, one more)")
    return TrainConfig(
        steps=steps, batch_size=8, learning_rate=3e-4, min_learning_rate=3e-5,
        warmup_steps=min(10, steps - 1), weight_decay=0.0, eval_interval=steps, eval_batches=1,
        seed=seed, device="cpu",
    )  # fmt: skip


SHORT_SFT_STEPS = 20  # the chain-of-thought SFT GRPO starts from: deliberately too short
SHIPPED_GRPO = GRPOConfig(
    iterations=20, questions=8, group_size=8, updates=2, learning_rate=1e-4, clip=0.2,
    kl_coef=0.0, temperature=1.0, max_new_tokens=32, seed=0,
)  # fmt: skip
COMMAND = "python -m companion.reasoning --out companion/assets/reasoning_model"


def short_cot_then_grpo(
    chat: nn.Module, tokenizer, world: World, *, seed: int, config: GRPOConfig | None = None,
) -> tuple[nn.Module, nn.Module, GRPOLog]:  # fmt: skip
    """One run of the chapter's recipe, on ``split_people(world, seed=seed)``'s training side:
    a copy of ``chat`` fine-tuned :data:`SHORT_SFT_STEPS` steps on traces, then GRPO from it
    (``config``, :data:`SHIPPED_GRPO` by default, with ``seed``). Returns ``(short, tuned,
    log)``; ``chat`` is left as it is."""
    config = SHIPPED_GRPO if config is None else config
    if not isinstance(config, GRPOConfig):
        raise TypeError(f"config must be a GRPOConfig, got a {type(config).__name__}")
    _check_model(chat)

    train_people, _ = split_people(world, seed=seed)
    questions = two_hop_questions(train_people)
    short = copy.deepcopy(chat)
    fine_tune_two_hop(
        short, tokenizer, questions, two_hop_config(SHORT_SFT_STEPS, seed), trace=True
    )
    short.eval()
    tuned, log = two_hop_grpo(short, tokenizer, questions, replace(config, seed=seed))
    return short, tuned, log


def train_reasoning_model(out_dir: str | Path) -> dict:
    """The shipped reasoning model: :func:`short_cot_then_grpo` from the shipped chat model on
    world 0, seed 0; saved to ``out_dir`` with its figures (also returned). ``out_dir`` is
    checked before any training: it must be new, or a checkpoint folder to replace."""
    if not isinstance(out_dir, str | Path) or not str(out_dir):
        raise TypeError(f"out_dir must be a folder's path, got {out_dir!r}")
    check_can_save(out_dir)  # what save_checkpoint would refuse, refused before training

    chat, tokenizer = load_shipped("chat", "cpu")
    world = build_world(0)
    start = time.perf_counter()
    short, tuned, log = short_cot_then_grpo(chat, tokenizer, world, seed=0)
    train_people, held_people = split_people(world, seed=0)
    figures = {
        "command": COMMAND, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 1), "grpo_config": asdict(SHIPPED_GRPO),
        "short_sft_steps": SHORT_SFT_STEPS, "log": asdict(log),
    }  # fmt: skip
    for name, model in (("short", short), ("grpo", tuned)):
        for side, people in (("train", train_people), ("held_out", held_people)):
            outcomes = answer_outcomes(model, tokenizer, two_hop_questions(people))
            figures[f"{name}_{side}"] = dict(Counter(outcomes))
    save_checkpoint(out_dir, tuned, extra=figures)
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m companion.reasoning --out DIR``: retrain the shipped reasoning model."""
    parser = argparse.ArgumentParser(prog="python -m companion.reasoning", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    args = parser.parse_args(argv)
    figures = train_reasoning_model(args.out)
    print(json.dumps({k: v for k, v in figures.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
