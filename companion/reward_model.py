"""The reward model: the chat model's transformer with a scalar head, trained on preferences.

Taught in ``06_rlhf.ipynb`` (section 2). A reward model reads a prompt and a reply and gives one
number. It is trained so that the rater's chosen reply scores higher than the rejected one, with
the **Bradley–Terry** model of a comparison: ``P(chosen ≻ rejected) = σ(r_c − r_r)``, so the loss
is the mean of ``−log σ(r_c − r_r)`` (:func:`bradley_terry_loss`; InstructGPT, eq. 1). Its
**held-out accuracy** is the share of pairs of prompts it never trained on that it orders as the
rater did, noise included: a model that followed the rules exactly would score the share of
held-out labels the noise left alone (90 % on average for 10 % noise; on a small held-out set,
whatever share chance left unflipped). A reward model's scores have no fixed zero: only
differences enter the loss, so two reward models' scores cannot be compared by level.

The backbone starts as a copy of the chat model (it already reads the template and knows the
world's facts as well as the chat model does); the head reads the final hidden state of the
reply's last token. Shape vocabulary: B batch, T time, C channels.

Three stand-ins with the same call, for the controls of the chapter: :class:`RuleReward`, the
rater's own rules as a reward (what a perfect reward model would give); :class:`ConstantReward`,
a reward that says nothing; and :class:`NoiseReward`, one that is pure noise (what the updates
cost on their own).
:func:`best_of_n` uses a reward at inference time instead of in training: sample ``n`` replies,
keep the best-scored one.

Left out: several replies ranked at once (InstructGPT's K choose 2 per prompt), reward
normalisation, ensembles.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from companion.chat import END, special_ids
from companion.environment import eval_mode, make_generator, model_device
from companion.preferences import (
    RULES,
    Preference,
    Prompt,
    Rule,
    Sample,
    decoded_sample,
    prompt_ids,
    sample_replies,
)
from companion.replies import pad_sequences
from companion.train_config import check_loss, check_recipe
from companion.world import World


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> torch.Tensor:
    """Mean of ``−log σ(r_c − r_r)`` over pairs; ``chosen_rewards``, ``rejected_rewards`` (B,).

    >>> round(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0])).item(), 4)  # ln(1+e⁻¹)
    0.3133
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
            f"{tuple(rejected_rewards.shape)} must be 1-D of the same length: one reward per pair"
        )
    if chosen_rewards.numel() == 0:
        raise ValueError("no pairs: the preference set is empty; collect some preferences first")
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


class RewardModel(nn.Module):
    """``RewardModel(gpt)(ids, reply_mask)`` → one reward per row (B,).

    The reward is a linear head on the final hidden state of the last reply token.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone  # a GPT: hidden_states(ids) (B, T, C)
        self.head = nn.Linear(backbone.config.d_model, 1, device=model_device(backbone))  # (C,)->1
        nn.init.zeros_(self.head.weight)  # every reply starts at reward 0
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, reply_mask: torch.Tensor) -> torch.Tensor:
        if not isinstance(reply_mask, torch.Tensor) or reply_mask.shape != ids.shape:
            got = tuple(reply_mask.shape) if isinstance(reply_mask, torch.Tensor) else reply_mask
            raise ValueError(
                f"reply_mask must be a bool tensor shaped like ids {tuple(ids.shape)}, got {got}; "
                "pad_sequences makes both"
            )
        empty = (~reply_mask.bool().any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"rows {empty[:5]} of reply_mask are all False: those rows have no reply to "
                "score; mark the reply's tokens True (pad_sequences does)"
            )
        h = self.backbone.hidden_states(ids)  # (B, T, C)
        positions = torch.arange(ids.shape[1], device=ids.device)  # (T,)
        last = (reply_mask * positions).argmax(dim=1)  # (B,) index of the last reply token
        return self.head(h[torch.arange(len(ids)), last]).squeeze(-1)  # (B, C) @ (C, 1) -> (B,)


def score_replies(reward: nn.Module, ids: torch.Tensor, reply_mask: torch.Tensor) -> torch.Tensor:
    """``reward(ids, reply_mask)`` (a module in eval mode, its mode restored), checked: one
    finite score per row, as float (B,). A reward that broadcasts one number, or gives NaN, is
    refused here rather than trained on or ranked by."""
    with eval_mode(reward):
        scores = reward(ids, reply_mask)
    if not isinstance(scores, torch.Tensor) or scores.shape != (len(ids),):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(
            f"the reward gave {got} for {len(ids)} replies; it must return one score per row, a "
            f"tensor of shape ({len(ids)},)"
        )
    scores = scores.detach().float()
    if not torch.isfinite(scores).all():
        raise ValueError(
            f"the reward gave {scores.tolist()[:8]}: a score that is NaN or infinite cannot be "
            "trained on or ranked; check the reward model (train it, or fix its weights)"
        )
    return scores


def reply_tokens(sample: Sample, tokenizer) -> list[int]:
    """A reply's tokens as trained and scored: its ids, and ``<|end|>`` if it stopped."""
    return [*sample.ids, special_ids(tokenizer)[END]] if sample.finished else list(sample.ids)


def reply_batch(
    prompts: Sequence[Sequence[int]], samples: Sequence[Sample], tokenizer
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, reply_mask)``, both (B, T): each prompt's ids then its sample's
    :func:`reply_tokens`, padded with ``<|end|>`` (:func:`companion.replies.pad_sequences`)."""
    replies = [reply_tokens(s, tokenizer) for s in samples]
    return pad_sequences(prompts, replies, special_ids(tokenizer)[END])


def pair_tensors(pairs: Sequence[Preference], tokenizer) -> tuple[torch.Tensor, ...]:
    """``(chosen_ids, chosen_mask, rejected_ids, rejected_mask)``, each (B, T) from
    :func:`companion.replies.pad_sequences` (padded with ``<|end|>``)."""
    if not pairs:
        raise ValueError(
            "the preference set is empty; label_pairs(...) makes one from collect_candidates(...)"
        )
    pad = special_ids(tokenizer)[END]
    prompts = [prompt_ids(p.prompt, tokenizer) for p in pairs]
    replies = {"chosen": [], "rejected": []}
    for i, pair in enumerate(pairs):
        for side, sample in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            tokens = reply_tokens(sample, tokenizer)
            if not tokens:  # nothing to score, and a division by zero tokens in DPO's NLL
                raise ValueError(
                    f"pair {i}'s {side} reply has no tokens (empty and unfinished); drop the "
                    "pair, or write the reply with written_sample"
                )
            replies[side].append(tokens)
    chosen = pad_sequences(prompts, replies["chosen"], pad)
    rejected = pad_sequences(prompts, replies["rejected"], pad)
    return (*chosen, *rejected)


def split_pairs(pairs: Sequence[Preference], *, held_out: float = 0.2, seed: int = 0):
    """``(train, held_out)`` with whole prompts on one side: no held-out prompt is trained on."""
    texts = sorted({p.prompt.text for p in pairs})
    random.Random(seed).shuffle(texts)
    test = set(texts[: round(held_out * len(texts))])
    return [p for p in pairs if p.prompt.text not in test], [
        p for p in pairs if p.prompt.text in test
    ]


@dataclass
class RewardConfig:
    """How to train the reward model."""

    steps: int = 150  # AdamW steps
    batch_size: int = 32  # pairs per step
    learning_rate: float = 1e-4  # constant; the backbone is already trained
    seed: int = 0  # draws the batches

    def __post_init__(self) -> None:
        check_recipe(self, {
            "steps": "int >= 1", "batch_size": "int >= 1", "learning_rate": "> 0", "seed": "int",
        })  # fmt: skip


@dataclass
class RewardHistory:
    """The training record: one entry per step."""

    loss: list[float] = field(default_factory=list)  # Bradley-Terry loss of the step's batch
    accuracy: list[float] = field(default_factory=list)  # share of the batch ordered right


@torch.no_grad()
def pair_accuracy(reward_model: nn.Module, pairs: Sequence[Preference], tokenizer) -> float:
    """Share of ``pairs`` whose chosen reply the model scores strictly higher."""
    device = model_device(reward_model)
    cid, cm, rid, rm = (t.to(device) for t in pair_tensors(pairs, tokenizer))
    reward_model.eval()
    return (reward_model(cid, cm) > reward_model(rid, rm)).float().mean().item()


def train_reward_model(
    chat_model: nn.Module,
    tokenizer,
    pairs: Sequence[Preference],
    config: RewardConfig | None = None,
) -> tuple[RewardModel, RewardHistory]:
    """A reward model on a copy of ``chat_model``, trained with :func:`bradley_terry_loss` on
    ``pairs`` (batches drawn with replacement by a generator seeded with ``config.seed``)."""
    config = config or RewardConfig()
    model = RewardModel(copy.deepcopy(chat_model))  # on chat_model's device
    device = model_device(chat_model)
    cid, cm, rid, rm = (t.to(device) for t in pair_tensors(pairs, tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    generator, history = make_generator(config.seed), RewardHistory()
    model.train()
    for _ in range(config.steps):
        b = torch.randint(len(pairs), (config.batch_size,), generator=generator).to(device)  # (B,)
        r_c, r_r = model(cid[b], cm[b]), model(rid[b], rm[b])  # (B,), (B,)
        loss = bradley_terry_loss(r_c, r_r)
        check_loss(loss, "reward model")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.loss.append(loss.item())
        history.accuracy.append((r_c > r_r).float().mean().item())
    return model.eval(), history


def _check_reply_batch(ids: torch.Tensor, reply_mask: torch.Tensor) -> None:
    """What a stand-in reward is called with: ids and reply_mask, both (B, T)."""
    if ids.dim() != 2 or reply_mask.shape != ids.shape:
        raise ValueError(
            f"ids {tuple(ids.shape)} and reply_mask {tuple(reply_mask.shape)} must both be "
            "(B, T); pad_sequences makes both"
        )


class RuleReward(nn.Module):
    """The rater's rules as a reward: ``RuleReward(world, tokenizer, prompts)(ids, reply_mask)``
    → (B,), called like :class:`RewardModel` on prompts from ``prompts``.

    A reply earns ``2^(k−1)`` for passing the first of ``k`` rules, ``2^(k−2)`` for the second,
    and so on, divided by ``2^k − 1`` so that the reward lies in [0, 1] like a reward model's
    scores (PPO's value head shares the policy's network and would be swamped by returns in the
    tens): the higher score is the reply :func:`rate` prefers, ties included (an earlier rule
    outweighs all the later ones together). The label noise is left out: this is the rater a
    reward model can at best become.

    >>> from companion.data import load_course_tokenizer
    >>> from companion.preferences import REFUSAL, written_sample
    >>> from companion.replies import pad_sequences
    >>> from companion.world import build_world
    >>> tok, world = load_course_tokenizer(), build_world(0)
    >>> p = Prompt("Who is Wanda?", "unknown", name="Wanda")
    >>> replies = [written_sample(t, tok) for t in (REFUSAL, "Wanda is a baker.")]
    >>> ids, mask = pad_sequences([prompt_ids(p, tok)] * 2, [reply_tokens(r, tok) for r in replies],
    ...                           special_ids(tok)[END])
    >>> [round(r, 3) for r in RuleReward(world, tok, [p])(ids, mask).tolist()]  # 31/31, 23/31
    [1.0, 0.742]
    """

    def __init__(
        self, world: World, tokenizer, prompts: Sequence[Prompt], rules: dict[str, Rule] = RULES
    ) -> None:
        super().__init__()
        if not prompts:
            raise ValueError("prompts is empty; pass the prompts the policy will be asked")
        if not rules:
            raise ValueError("rules is empty: nothing to score by; pass RULES or some of them")
        self.world, self.tokenizer, self.rules = world, tokenizer, dict(rules)
        self.end = special_ids(tokenizer)[END]
        self.prompts: dict[tuple[int, ...], Prompt] = {}
        for p in prompts:  # a prompt is found by its ids: one Prompt per rendering
            known = self.prompts.setdefault(tuple(prompt_ids(p, tokenizer)), p)
            if known != p:
                raise ValueError(
                    f"two prompts read the same to the model, {known} and {p}: a reply to it "
                    "could not be judged; pass each prompt text once"
                )

    def score(self, prompt: Prompt, reply: Sample) -> float:
        """The reward of one reply: ``Σ 2^(k−1−i)`` over the rules ``i`` it passes, ``/ (2^k − 1)``."""
        k = len(self.rules)
        passed = [
            rule(self.world, prompt, reply.text, reply.finished) for rule in self.rules.values()
        ]
        return sum(2 ** (k - 1 - i) for i, ok in enumerate(passed) if ok) / (2**k - 1)

    def forward(self, ids: torch.Tensor, reply_mask: torch.Tensor) -> torch.Tensor:
        _check_reply_batch(ids, reply_mask)
        scores = []
        for row, mask in zip(ids.tolist(), reply_mask.bool().tolist(), strict=True):
            if True not in mask:
                raise ValueError("a row of reply_mask is all False: no reply to score")
            start = mask.index(True)
            prompt = self.prompts.get(tuple(row[:start]))
            if prompt is None:
                raise ValueError(
                    f"row starting {row[:8]} is not one of the {len(self.prompts)} prompts this "
                    "reward knows; build RuleReward with the prompts the policy is asked"
                )
            reply = [t for t, m in zip(row, mask, strict=True) if m]
            finished = bool(reply) and reply[-1] == self.end
            scores.append(self.score(prompt, decoded_sample(reply[:-1] if finished else reply,
                                                        finished, self.tokenizer)))  # fmt: skip
        return torch.tensor(scores, device=ids.device)


class ConstantReward(nn.Module):
    """A reward that tells nothing: ``value`` for every reply (B,). PPO against it moves the
    policy by its updates and the KL leash alone: the cost of the updates, with no signal.

    >>> ConstantReward()(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool))
    tensor([0., 0.])
    """

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"value={value!r} must be a finite number, e.g. 0.0")
        self.value = float(value)

    def forward(self, ids: torch.Tensor, reply_mask: torch.Tensor) -> torch.Tensor:
        return torch.full((len(ids),), self.value, device=ids.device)


class NoiseReward(nn.Module):
    """A reward that is pure noise: an independent uniform draw in [0, 1) for every reply (B,),
    from its own generator seeded with ``seed`` (the same calls give the same draws). PPO against
    it moves the policy by its updates alone, with no signal in them: unlike
    :class:`ConstantReward`, whose whitened advantages are all zero, so the policy never moves.

    >>> NoiseReward(0)(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool))
    tensor([0.4963, 0.7682])
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r} must be an int")
        self.generator = make_generator(seed)

    def forward(self, ids: torch.Tensor, reply_mask: torch.Tensor) -> torch.Tensor:
        _check_reply_batch(ids, reply_mask)
        return torch.rand(len(ids), generator=self.generator).to(ids.device)


@torch.no_grad()
def best_of_n(
    model: nn.Module, tokenizer, reward: nn.Module, prompts: Sequence[Prompt], n: int, *,
    seed: int = 0, max_new_tokens: int = 24,
) -> tuple[list[Sample], torch.Tensor]:  # fmt: skip
    """For each prompt, ``n`` replies sampled at temperature 1 and the one ``reward`` scores
    highest (the first of equal ones): ``(samples, scores (len(prompts), n))``.

    Best-of-n spends compute at inference instead of training, and moves the policy's output
    distribution without touching a weight: what PPO against the same reward should at least
    match (Gao et al. 2023 compare the two at equal KL). ``model`` and ``reward`` run where they
    are; sample ``j`` uses the seed ``seed * 1000 + j``. ``reward`` scores in eval mode (its
    mode is restored) and must give one finite score per reply.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n={n!r} must be an int >= 1: the replies to sample per prompt")
    if not prompts:
        raise ValueError("prompts is empty; pass make_prompts(world, split='eval')")
    device, asked = model_device(model), [prompt_ids(p, tokenizer) for p in prompts]
    drawn = [
        sample_replies(
            model, tokenizer, prompts, seed=seed * 1000 + j, max_new_tokens=max_new_tokens
        )
        for j in range(n)
    ]  # n lists of len(prompts) samples
    scores = torch.empty(len(prompts), n)
    for j, samples in enumerate(drawn):
        ids, mask = reply_batch(asked, samples, tokenizer)
        scores[:, j] = score_replies(reward, ids.to(device), mask.to(device)).cpu()
    best = scores.argmax(dim=1).tolist()  # the first maximum
    return [drawn[j][i] for i, j in enumerate(best)], scores
