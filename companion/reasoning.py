"""Two-hop questions, chain of thought, and GRPO: reinforcement learning with checkable answers.

For chapter 8, reasoning (issue 27; its notebook is not written yet, so no chapter teaches this
module today). A *two-hop* question needs two facts the base model already knows: "Which river
flows through the town where Kofi lives?" needs Kofi's home town (Pebbleton) and Pebbleton's
river (Dove). (The corpus also states these two answers next to the person directly, see
``TWO_HOP``, so the chapter still needs a chain the corpus never puts together.) Every reply ends with
its answer as ``So: Dove.``, which :func:`check_answer` reads: *right*, *wrong* or *malformed*.
A *trace* (chain of thought) writes the middle fact down first::

    Kofi lives in Pebbleton. Pebbleton lies on the river Dove. So: Dove.

The questions are split by *person* (:func:`split_people`): training sees some people's
questions, evaluation asks only the others', so an accuracy measures composing facts, not
answers remembered. :func:`majority_baseline` is the score of always giving a relation's
commonest answer.

**GRPO** (Shao et al. 2024, DeepSeekMath, section 4.1) samples a *group* of G replies per
question, rewards each 1 if its final answer is right by the world and 0 otherwise (malformed
included), and uses the reward minus its group's mean, over the group's standard deviation, as
every token's advantage (:func:`group_advantages`): no value model. A group whose rewards are all
equal has zero advantages and teaches nothing; the trainer counts such groups and says when a
whole batch is like that. The loss (:func:`grpo_loss`) is PPO's per-token clipped ratio
(:func:`companion.ppo.clipped_objective`) averaged over *every reply token of the batch* (the
token-mean of DAPO, Yu et al. 2025; DeepSeekMath averages each reply first), plus optionally
``β`` times the k3 estimate of KL to the starting model (:func:`kl_k3`). Shape vocabulary: B
questions (groups), G replies per group, T time, V vocabulary.

Left out: process rewards, a learned verifier, length penalties, and questions of more than two
hops.
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from companion.chat import END, chat_many, question_ids, special_ids
from companion.environment import model_device
from companion.evaluation import most_common_answers
from companion.generation import generate_many
from companion.kv_cache import CachedGPT
from companion.measurement import has_word
from companion.model import GPT
from companion.ppo import clipped_objective
from companion.replies import pad_sequences, token_logprobs
from companion.sft import SFTBatches, encode_conversations
from companion.train_config import TrainConfig, check_loss, check_recipe
from companion.world import RELATIONS, Fact, Person, World

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


def _check_questions(questions: Sequence[TwoHop], name: str) -> None:
    """A ValueError if ``questions`` is empty, a TypeError if one is not a :class:`TwoHop`."""
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


# --- GRPO -------------------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages (B, G), equal (B,))``: each reward minus its group's mean, over the group's
    standard deviation (population, ``(r − mean) / (std + eps)``); ``equal`` marks the groups
    whose rewards are all the same: their advantages are exactly 0.

    >>> adv, equal = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    >>> adv.round(decimals=4).tolist(), equal.tolist()
    ([[1.0, -1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], [False, True])
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"rewards must be (B, G) with G >= 2 replies per group, got {tuple(rewards.shape)}"
        )
    if not rewards.is_floating_point() or not bool(torch.isfinite(rewards).all()):
        raise ValueError(
            "rewards must be finite floating-point numbers (a NaN or inf makes every advantage of "
            "its group NaN); check the reward function's return values"
        )
    if isinstance(eps, bool) or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps={eps!r} must be a small number >= 0, e.g. 1e-6")
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)  # (B, 1)
    equal = (rewards == rewards[:, :1]).all(dim=1)  # (B,)
    advantages = (rewards - mean) / (std + eps)  # (B, G)
    return advantages.masked_fill(equal[:, None], 0.0), equal


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The k3 estimate of ``KL(π ‖ π_ref)`` per token (Schulman 2020): ``exp(d) − d − 1`` with
    ``d = log π_ref(y) − log π(y)``; never negative, unbiased for ``y`` drawn from π (any shape).

    >>> [round(k, 4) for k in kl_k3(torch.tensor([0.0, -1.0]), torch.zeros(2)).tolist()]  # e − 2
    [0.0, 0.7183]
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
    clip: float = 0.2, ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(loss, clip_fraction, kl)``: the clipped surrogate with one advantage per reply,
    token-mean over every masked token of the batch, plus ``kl_coef`` times the token-mean k3
    KL (0 without ``ref_logp``). ``logp``, ``old_logp``, ``ref_logp``, ``mask`` (N, T) for N
    replies; ``advantages`` (N,).

    >>> one = torch.ones(1, 1, dtype=torch.bool)
    >>> loss, frac, _ = grpo_loss(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1),
    ...                           torch.tensor([1.0]), one)
    >>> round(loss.item(), 4), frac.item()  # ρ = 1.5 counts as 1.2
    (-1.2, 1.0)
    """
    given = [logp, old_logp, mask] + ([] if ref_logp is None else [ref_logp])
    if (
        logp.dim() != 2
        or any(t.shape != logp.shape for t in given)
        or (advantages.shape != logp.shape[:1])
    ):
        shapes = ", ".join(str(tuple(t.shape)) for t in [*given, advantages])
        raise ValueError(
            "logp, old_logp, mask (and ref_logp) must all be (N, T) and advantages (N,); got "
            f"{shapes} (logp, old_logp, mask, [ref_logp,] advantages)"
        )
    if not mask.any():
        raise ValueError("the mask selects no token: every reply is empty, so there is no loss")
    if not (0 < clip < 1 and 0 <= kl_coef < math.inf) or (kl_coef and ref_logp is None):
        raise ValueError(
            f"clip={clip!r} must be in (0, 1) and kl_coef={kl_coef!r} a finite number >= 0, "
            "with ref_logp given when kl_coef > 0 (without it there is no KL to add)"
        )
    mask = mask.bool()
    # what the mask leaves out (prompt, padding) is set to 0 first: it cannot reach the loss,
    # not even as inf * 0 = NaN when the policy and the reference disagree there
    logp, old_logp = torch.where(mask, logp, 0.0), torch.where(mask, old_logp, 0.0)
    per_token = advantages[:, None].expand_as(logp)  # (N, T): every token gets its reply's
    loss, fraction = clipped_objective(logp, old_logp, per_token, mask, clip=clip)
    kl = logp.new_zeros(())
    if ref_logp is not None:
        m = mask.float()
        kl = (kl_k3(logp, torch.where(mask, ref_logp, 0.0)) * m).sum() / m.sum()
    return loss + kl_coef * kl, fraction, kl


@dataclass
class GRPOConfig:
    """A GRPO run's recipe."""

    iterations: int = 20  # roll-out + update rounds
    questions: int = 8  # B: questions (groups) per iteration
    group_size: int = 8  # G: replies sampled per question
    updates: int = 2  # gradient steps on each roll-out (the first has ratio 1)
    learning_rate: float = 1e-4  # AdamW, constant
    clip: float = 0.2  # ε of the clipped ratio
    kl_coef: float = 0.0  # β of the k3 KL to the starting model (0: no KL term)
    temperature: float = 1.0  # sampling temperature of the roll-outs
    max_new_tokens: int = 32  # reply length limit
    seed: int = 0  # draws questions and replies

    def __post_init__(self) -> None:
        check_recipe(self, {
            "iterations": "int >= 1", "questions": "int >= 1", "group_size": "int >= 1",
            "updates": "int >= 1", "learning_rate": "> 0", "clip": "(0, 1)",
            "kl_coef": ">= 0", "temperature": "> 0", "max_new_tokens": "int >= 1", "seed": "int",
        })  # fmt: skip
        if self.group_size < 2:
            raise ValueError("GRPOConfig.group_size must be >= 2: a group of one has no mean")


@dataclass
class GRPOLog:
    """One entry per iteration (the glossary is in the notebook)."""

    reward: list[float] = field(default_factory=list)  # mean reward of the sampled replies
    equal_groups: list[float] = field(default_factory=list)  # share of all-equal groups
    length: list[float] = field(default_factory=list)  # mean reply length, tokens
    kl: list[float] = field(default_factory=list)  # token-mean k3 KL to the start, last update
    clip_fraction: list[float] = field(default_factory=list)  # share of clipped tokens
    skipped: list[int] = field(default_factory=list)  # iterations with no update (all equal)
    seconds: list[float] = field(default_factory=list)  # wall time so far


Reward = Callable[[int, Sequence[int], bool], float]  # (prompt index, reply ids, finished)


def train_grpo(
    model: nn.Module, prompts: Sequence[Sequence[int]], reward: Reward, stop_id: int,
    config: GRPOConfig | None = None,
) -> tuple[nn.Module, GRPOLog]:  # fmt: skip
    """GRPO from a copy of ``model`` (the caller's is neither changed nor moved); returns the
    tuned copy (eval mode) and its :class:`GRPOLog`. ``prompts`` are token ids (e.g.
    :func:`companion.chat.question_ids`); ``reward(i, reply_ids, finished)`` scores a reply to
    prompt ``i``; ``stop_id`` ends a reply (``<|end|>``). One iteration:

    1. **Questions**: draw B prompts; each is asked G times.
    2. **Roll out**: sample the B·G replies at ``temperature`` (:func:`generate_many`).
    3. **Reward** each reply; :func:`group_advantages`. If every group is all-equal there is
       nothing to learn: no step; the iteration goes in ``log.skipped`` and the run ends with a
       warning that counts them.
    4. **Log-probabilities** of the reply tokens (the stop token included when written) under
       the policy before the update and the frozen reference (:mod:`companion.replies`).
    5. **Update**: ``updates`` AdamW steps on :func:`grpo_loss` over the whole roll-out.
    """
    config = GRPOConfig() if config is None else config
    if not isinstance(config, GRPOConfig):
        raise TypeError(f"config must be a GRPOConfig, got a {type(config).__name__}")
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt's token ids")
    if config.questions > len(prompts):  # each iteration asks B different prompts
        raise ValueError(
            f"GRPOConfig.questions={config.questions} but there are only {len(prompts)} prompts: "
            f"each iteration asks {config.questions} different ones; pass questions <= "
            f"{len(prompts)} or more prompts"
        )
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(stop_id, bool) or not isinstance(stop_id, int) or stop_id < 0 or (
        vocab is not None and stop_id >= vocab
    ):  # fmt: skip
        raise ValueError(
            f"stop_id={stop_id!r} must be a token id (an int from 0 to {vocab or 'V'} - 1), e.g. "
            "special_ids(tokenizer)[END]"
        )
    policy = copy.deepcopy(model).eval()  # no dropout: logp and old_logp must agree
    reference = copy.deepcopy(model).eval()
    # Chapter 7's KV cache samples the roll-outs (same tokens, about 10x faster here); it holds
    # the policy's own parameters, so the updates reach it.
    sampler = CachedGPT(policy) if isinstance(policy, GPT) else policy
    device = model_device(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=0.0)
    rng, log, start = random.Random(config.seed), GRPOLog(), time.perf_counter()
    B, G = config.questions, config.group_size
    for it in range(config.iterations):
        # 1. Questions: B prompts, each G times.
        chosen = rng.sample(range(len(prompts)), B)
        asked = [prompts[i] for i in chosen for _ in range(G)]
        # 2. Roll out (torch takes seeds mod 2**64: wrapping here keeps every seed's draws and
        # spares a large one an overflow).
        out = generate_many(
            sampler, asked, [stop_id], max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, seed=(config.seed * 100_003 + it) % 2**64,
        )  # fmt: skip
        # 3. Reward and group advantages.
        rewards = torch.tensor(
            [reward(chosen[k // G], c.ids, c.finished) for k, c in enumerate(out)],
            dtype=torch.float,
        ).view(B, G)  # (B, G)
        advantages, equal = group_advantages(rewards)
        replies = [[*c.ids, stop_id] if c.finished else list(c.ids) for c in out]
        log.reward.append(rewards.mean().item())
        log.equal_groups.append(equal.float().mean().item())
        log.length.append(sum(map(len, replies)) / len(replies))
        if equal.all():  # every advantage is 0: nothing to learn from this roll-out
            log.skipped.append(it)
            log.kl.append(log.kl[-1] if log.kl else 0.0)
            log.clip_fraction.append(0.0)
            log.seconds.append(time.perf_counter() - start)
            continue
        # 4. Log-probabilities before the update, and under the reference.
        ids, mask = pad_sequences(asked, replies, stop_id)
        ids, mask, m = ids.to(device), mask.to(device), mask[:, 1:].to(device)  # m: (N, T-1)
        with torch.no_grad():
            old_logp = token_logprobs(policy(ids)[0], ids)  # (N, T-1)
            ref_logp = token_logprobs(reference(ids)[0], ids)  # (N, T-1)
        flat = advantages.reshape(-1).to(device)  # (N,) = (B·G,)
        # 5. Update.
        for _ in range(config.updates):
            logp = token_logprobs(policy(ids)[0], ids)  # (N, T-1)
            loss, fraction, kl = grpo_loss(
                logp, old_logp, flat, m, clip=config.clip, ref_logp=ref_logp,
                kl_coef=config.kl_coef,
            )  # fmt: skip
            check_loss(loss, "GRPO")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
        log.kl.append(kl.item())
        log.clip_fraction.append(fraction.item())
        log.seconds.append(time.perf_counter() - start)
    if log.skipped:
        warnings.warn(
            f"in {len(log.skipped)} of {config.iterations} GRPO iterations every group's rewards "
            "were equal, so every advantage was 0 and no update was made (log.skipped lists "
            "them). If the rewards were all 0, sample more replies per question, at a higher "
            "temperature, or start from a model that is sometimes right; if all 1, the task is "
            "learnt",
            stacklevel=2,
        )
    return policy.eval(), log


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
