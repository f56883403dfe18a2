"""Questions asked in words, and the replies scored: the base model and the chat model side by side.

Taught in ``05_sft.ipynb`` (section 3). A fact's **question** (``Fact.question``, "Where does Mira
live?") is asked two ways: :func:`ask_chat_model` as one user message in the chat template,
:func:`ask_base_model` as plain text and a newline (the base model has no template). Each reply
is scored with :mod:`companion.measurement`: answered right when it names the answer as a whole
word and no other answer of the same kind (:func:`~companion.measurement.reply_is_correct`), and
**in format** when the model ended it by itself within the token limit, in one line, writing no
turn marker (:func:`~companion.measurement.in_format`). Chapter 6 measures its aligned models'
accuracy with :func:`ask_chat_model` too.

:func:`ask_base_model_few_shot` is the **format baseline**: the base model prompted in its
corpus's own Q&A-sheet format after a worked example, its reply cut at the first newline.

Left out: judging free-form replies beyond the answer word, and sampled (non-greedy) answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from companion.chat import END, chat_many
from companion.corpus import END_OF_TEXT
from companion.evaluation import encode_prompt
from companion.generation import generate_many
from companion.measurement import in_format, reply_is_correct
from companion.world import Fact, World


@dataclass(frozen=True)
class ScoredAnswer:
    """One question, the model's reply, and how it was scored."""

    fact: Fact  # the fact asked about; the question was fact.question
    reply: str  # the reply, up to the stop token (excluded) or the length limit
    finished: bool  # the model stopped by itself within the length limit
    correct: bool  # reply_is_correct
    compliant: bool  # in_format


@dataclass(frozen=True)
class AnswerScores:
    """Answers to a list of questions, with the two rates."""

    answers: tuple[ScoredAnswer, ...]  # one per fact, in the order given

    @property
    def accuracy(self) -> float:
        """Fraction of replies with the right answer and no wrong one."""
        return sum(a.correct for a in self.answers) / len(self.answers)

    @property
    def compliance(self) -> float:
        """Fraction of replies in format: one turn, one line, stopped by the model."""
        return sum(a.compliant for a in self.answers) / len(self.answers)


def score_replies(
    world: World, facts: Sequence[Fact], replies: Sequence[tuple[str, bool]]
) -> AnswerScores:
    """Each ``(reply, finished)`` to a fact's question, scored.

    >>> from companion.world import build_world
    >>> world = build_world(0)
    >>> fact = world.facts[0]
    >>> scores = score_replies(world, [fact], [(fact.reply, True)])
    >>> scores.accuracy, scores.compliance
    (1.0, 1.0)
    """
    answers = tuple(
        ScoredAnswer(f, text, done, reply_is_correct(text, f.answer, world.wrong_answers(f)),
                     in_format(text, done))
        for f, (text, done) in zip(facts, replies, strict=True)
    )  # fmt: skip
    return AnswerScores(answers)


def ask_chat_model(
    model: nn.Module, tokenizer, world: World, facts: Sequence[Fact], *, max_new_tokens: int = 24
) -> AnswerScores:
    """Ask each fact's question as one user message in the chat template (greedy) and score it."""
    if not facts:
        raise ValueError("facts is empty; pass e.g. split_world(world).eval_facts")
    conversations = [[{"role": "user", "content": f.question}] for f in facts]
    replies = chat_many(model, tokenizer, conversations, max_new_tokens=max_new_tokens)
    return score_replies(world, facts, [(str(r), r.finished) for r in replies])


def ask_base_model(
    model: nn.Module, tokenizer, world: World, facts: Sequence[Fact], *, max_new_tokens: int = 24
) -> AnswerScores:
    """Give the base model each question as plain text and a newline (greedy) and score its
    continuation. It has no chat template, so it may stop at ``<|endoftext|>`` as well as at
    ``<|end|>``."""
    if not facts:
        raise ValueError("facts is empty; pass e.g. split_world(world).eval_facts")
    stops = [tokenizer.special_tokens[END], tokenizer.special_tokens[END_OF_TEXT]]
    prompts = [encode_prompt(tokenizer, f.question + "\n") for f in facts]
    out = generate_many(model, prompts, stops, max_new_tokens=max_new_tokens)
    return score_replies(world, facts, [(tokenizer.decode(c.ids), c.finished) for c in out])


def qa_prompt(question: str, examples: Sequence[Fact] = ()) -> str:
    """A question in the corpus's Q&A-sheet format, after worked examples in the same format.

    >>> from companion.world import build_world
    >>> world = build_world(0)
    >>> print(qa_prompt(world.facts[1].question, world.facts[:1]))
    Q: Which river does Larkmoor lie on?
    A: Larkmoor lies on the river Dove.
    Q: What does the shop in Larkmoor sell?
    A:
    """
    shots = "".join(f"Q: {f.question}\nA: {f.reply}\n" for f in examples)
    return f"{shots}Q: {question}\nA:"


def ask_base_model_few_shot(
    model: nn.Module,
    tokenizer,
    world: World,
    facts: Sequence[Fact],
    examples: Sequence[Fact],
    *,
    shots: int = 1,
    max_new_tokens: int = 24,
) -> AnswerScores:
    """The **format baseline**: the base model prompted in its pretraining data's own Q&A format
    (:func:`qa_prompt`), after ``shots`` worked examples, its reply cut at the first newline.

    The examples for a fact are the first ``shots`` of ``examples`` about another subject and
    another relation, so no example states the answer or asks the same kind of question. The
    stop is the caller's rule (a newline, or ``<|endoftext|>``), where the chat model writes its
    own ``<|end|>``: ``finished`` is True when one came within ``max_new_tokens``.
    """
    if not facts:
        raise ValueError("facts is empty; pass e.g. split_world(world).eval_facts")
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
        raise ValueError(f"shots={shots!r} must be an int >= 0 (the worked examples per question)")
    prompts = []
    for f in facts:
        usable = [e for e in examples if e.subject != f.subject and e.relation != f.relation]
        if len(usable) < shots:
            raise ValueError(
                f"only {len(usable)} of the examples differ from {f.subject!r}'s {f.relation!r} in "
                f"subject and relation, fewer than shots={shots}; pass more examples or fewer shots"
            )
        prompts.append(encode_prompt(tokenizer, qa_prompt(f.question, usable[:shots])))
    stops = [tokenizer.special_tokens[END_OF_TEXT]]
    out = generate_many(model, prompts, stops, max_new_tokens=max_new_tokens)
    replies = []
    for c in out:
        text = tokenizer.decode(c.ids)
        replies.append((text.split("\n")[0], c.finished or "\n" in text))
    return score_replies(world, facts, replies)
