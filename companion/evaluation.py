"""What a language model knows: fact-completion accuracy, and answers to questions.

Taught in ``04_pretraining.ipynb`` (the base model's knowledge of the course world) and
``05_sft.ipynb`` (questions asked to the base and the chat model); the inference chapter reuses
:func:`fact_completion_accuracy` on ``world.held_out_facts`` to measure hallucination. Shape
vocabulary: B batch (prompts of equal token length), T time.

A fact counts as known when the **greedy** continuation of its ``prompt`` begins with
``" " + answer`` followed by a non-letter (so "pie" does not count "pies"). Prompts are batched
by token length, so no padding or attention mask is needed.

A **question** (``Fact.question``) is answered right when the reply names the answer as a whole
word and no other answer of the same kind (:func:`reply_is_correct`), and answered **in format**
when the model ended its reply by itself within the token limit, in one line with no question
and no turn marker (:func:`is_compliant`). :func:`ask_chat_model` asks through the chat template;
:func:`ask_base_model` gives the base model the question as plain text and a newline.
:func:`majority_baseline` (per relation) and :func:`majority_answer_accuracy` (answers learnt on
one set of facts, scored on another) are the controls: always give a relation's most common
answer, which a model can do without knowing any one fact.

Left out: log-likelihood scoring of answer choices, few-shot prompts, and judging free-form
replies beyond the answer word.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from companion.environment import DeviceLike
from companion.generation import generate_many
from companion.world import Fact, World


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
    encoded = [_encode(tokenizer, p) for p in prompts]
    replies = generate_many(
        model, encoded, (), max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, seed=seed, device=device,
    )  # fmt: skip
    return [tokenizer.decode(ids) for ids, _ in replies]


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


@dataclass(frozen=True)
class Answer:
    """One question, the model's reply, and how it was scored."""

    fact: Fact  # the fact asked about; the question was fact.question
    reply: str  # the reply, up to the stop token (excluded) or the length limit
    finished: bool  # the model stopped by itself within the length limit
    correct: bool  # reply_is_correct
    compliant: bool  # is_compliant


@dataclass(frozen=True)
class AnswerScores:
    """Answers to a list of questions, with the two rates."""

    answers: tuple[Answer, ...]  # one per fact, in the order given

    @property
    def accuracy(self) -> float:
        """Fraction of replies with the right answer and no wrong one."""
        return sum(a.correct for a in self.answers) / len(self.answers)

    @property
    def compliance(self) -> float:
        """Fraction of replies that answer in one turn and stop."""
        return sum(a.compliant for a in self.answers) / len(self.answers)


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text) is not None


def reply_is_correct(reply: str, answer: str, wrong_answers: Sequence[str]) -> bool:
    """Whether ``reply`` names ``answer`` as a whole word and none of ``wrong_answers``.

    >>> reply_is_correct("Mira lives in Thornby.", "Thornby", ["Ashford"])
    True
    >>> reply_is_correct("Thornby or Ashford.", "Thornby", ["Ashford"])  # hedging is wrong
    False
    >>> reply_is_correct("She likes pies.", "pie", ["cake"])  # a whole word only
    False
    """
    return _has_word(reply, answer) and not any(_has_word(reply, w) for w in wrong_answers)


def is_compliant(reply: str, finished: bool) -> bool:
    """An answer in format: the model stopped by itself, and the reply is one non-empty line
    with no question mark and no turn marker in it.

    >>> is_compliant("Mira lives in Thornby.", True), is_compliant("Mira lives in", False)
    (True, False)
    >>> is_compliant("Thornby.\\nQ: What is Mira's job?", True)
    False
    """
    text = reply.strip()
    return finished and bool(text) and "\n" not in text and "?" not in text and "<|" not in text


def _score(
    world: World, facts: Sequence[Fact], replies: Sequence[tuple[str, bool]]
) -> AnswerScores:
    answers = tuple(
        Answer(f, text, done, reply_is_correct(text, f.answer, world.wrong_answers(f)),
               is_compliant(text, done))
        for f, (text, done) in zip(facts, replies, strict=True)
    )  # fmt: skip
    return AnswerScores(answers)


def ask_chat_model(
    model: nn.Module,
    tokenizer,
    world: World,
    facts: Sequence[Fact],
    *,
    max_new_tokens: int = 24,
    device: DeviceLike = None,
) -> AnswerScores:
    """Ask each fact's question as one user message in the chat template (greedy) and score it."""
    from companion.chat import chat_many

    if not facts:
        raise ValueError("facts is empty; pass e.g. split_world(world).eval_facts")
    conversations = [[{"role": "user", "content": f.question}] for f in facts]
    replies = chat_many(
        model, tokenizer, conversations, max_new_tokens=max_new_tokens, device=device
    )
    return _score(world, facts, [(str(r), r.finished) for r in replies])


def ask_base_model(
    model: nn.Module,
    tokenizer,
    world: World,
    facts: Sequence[Fact],
    *,
    max_new_tokens: int = 24,
    device: DeviceLike = None,
) -> AnswerScores:
    """Give the base model each question as plain text and a newline (greedy) and score its
    continuation. It has no chat template, so it may stop at ``<|endoftext|>`` as well as at
    ``<|end|>``."""
    from companion.chat import END
    from companion.corpus import END_OF_TEXT

    if not facts:
        raise ValueError("facts is empty; pass e.g. split_world(world).eval_facts")
    stops = [tokenizer.special_tokens[END], tokenizer.special_tokens[END_OF_TEXT]]
    prompts = [_encode(tokenizer, f.question + "\n") for f in facts]
    out = generate_many(model, prompts, stops, max_new_tokens=max_new_tokens, device=device)
    return _score(world, facts, [(tokenizer.decode(ids), done) for ids, done in out])


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
