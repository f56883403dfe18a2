"""PPO with a KL leash: the chat model tuned to maximise the reward model's score.

Taught in ``06_rlhf.ipynb`` (section 3). One iteration of :func:`train_ppo`, in numbered steps:

1. **Roll out**: sample a reply at temperature 1 for a batch of training prompts.
2. **Score**: the reward model scores each prompt + reply (one number per reply).
3. **KL penalty**: every reply token costs ``β (log π(y_t) − log π_ref(y_t))`` (:func:`kl_penalty`),
   the per-token estimate of how far the policy has moved from the frozen chat model; the score
   is added at the reply's last token (Ziegler et al. 2019, eq. 2).
4. **Advantages**: generalised advantage estimation over the reply's tokens (:func:`gae`),
   with the value head's estimates as the baseline; whitened over the batch.
5. **Update**: several epochs of minibatch steps on the clipped surrogate objective
   (:func:`clipped_objective`, Schulman et al. 2017, eq. 7) plus the value loss
   (:func:`value_loss`).

The ladder's first rung, ``PPOConfig(algorithm="reinforce")``: REINFORCE with a baseline
(:func:`reinforce_loss`). Every token of a reply gets that reply's return (score minus the summed
KL penalty) less the batch's mean return, whitened; one gradient step per roll-out (on-policy:
the replies must come from the policy being updated), no value head, no ratio, no clip. PPO
adds a learned baseline (the value head, GAE) and the clipped ratio, which let it take several
steps on one roll-out.

**A baseline per prompt**, ``PPOConfig(group_size=G)``: every prompt of the batch is rolled out
``G`` times and each reply's score enters less the mean score of its prompt's ``G`` replies
(:func:`prompt_baseline`). Without it the only baseline is the batch's mean, so a prompt whose
replies all score low (a fact question, beside a stranger's refusal) pushes every one of its
replies down, the right answers with the wrong. A trained critic would learn that per-prompt
level; sampling it needs no critic. The mean includes the reply itself, so this is Kool et al.
2019's leave-one-out baseline scaled by ``(G − 1)/G``; chapter 8's GRPO also divides by the
group's spread.

**PPO-ptx** (Ouyang et al. 2022, eq. 2): ``PPOConfig(ptx_coef=γ)`` with ``ptx_tokens`` (a token
stream such as the pretraining corpus, :func:`companion.data.encode_corpus`) adds ``γ`` times the
language-model loss on a batch of the stream's windows to every update, so that the policy keeps
predicting the text it was pretrained on while the reward pulls it elsewhere: InstructGPT's
remedy for the alignment tax. With ``ptx_examples`` instead (rendered conversations, such as the
chat model's own SFT set, :func:`companion.sft.training_examples`) the added loss is SFT's, on
the replies of a batch of them: the same remedy with data in the chat format.

Logged per iteration (:class:`PPOLog`): ``reward`` (the reward model's mean score), ``kl`` (the
mean summed per-token KL estimate of a reply), ``clip_fraction``, ``entropy`` and ``value_loss``.

The policy's value head is a linear layer on its own hidden states (one network, two heads).
Shape vocabulary: B the replies of a roll-out (``batch_size × group_size``), T time (a reply's
tokens), V vocabulary. Left out: reward whitening, adaptive β, value clipping.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from companion.chat import END, special_ids
from companion.data import get_batch
from companion.environment import make_generator, model_device
from companion.model import IGNORE_INDEX
from companion.preferences import Prompt, prompt_ids, sample_replies
from companion.replies import token_logprobs
from companion.reward_model import reply_batch, score_replies
from companion.sft import Example, SFTBatches
from companion.train_config import check_loss, check_recipe


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The per-token KL estimate ``log π(y) − log π_ref(y)`` (any shape, same out).

    For ``y`` drawn from π its mean is ``KL(π ‖ π_ref)``; one token's value can be negative.

    >>> kl_penalty(torch.tensor([-1.0]), torch.tensor([-3.0]))
    tensor([2.])
    """
    return logp - ref_logp


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16): ``(advantages, returns)``.

    ``rewards``, ``values``, ``mask`` (B, T); ``mask`` is True on real steps (a prefix of each
    row's reply positions; the value after the last one is 0).
    ``δ_t = r_t + γ V_{t+1} − V_t``, ``A_t = δ_t + γλ A_{t+1}``, ``returns = A + V``.

    λ < 1 trusts the critic: with V ≈ 0 (a value head that has learnt little) and one score at
    a reply's end, token t gets ``(γλ)^(L−1−t)`` of it, so after whitening the advantages rank
    tokens by their distance from the end more than replies by their score. λ = 1 gives every
    token its reply's return minus V.

    >>> adv, ret = gae(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), lam=0.5)
    >>> adv.tolist()
    [[0.5, 1.0]]
    """
    B, T = rewards.shape
    m = mask.float()
    advantages = torch.zeros_like(rewards)  # (B, T)
    next_value = rewards.new_zeros(B)  # (B,)
    next_adv = rewards.new_zeros(B)  # (B,)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantages[:, t] = (delta + gamma * lam * next_adv) * m[:, t]
        next_value = values[:, t] * m[:, t]
        next_adv = advantages[:, t]
    return advantages, advantages + values * m


def prompt_baseline(score: torch.Tensor, group_size: int) -> torch.Tensor:
    """``score`` (B,), the replies to one prompt side by side in groups of ``group_size``:
    each less the mean of its group, (B,). Scores ``[1, 3, 5, 9]`` in groups of 2 give
    ``[-1, 1, -2, 2]``: what is left says only how a reply compares with its siblings. A group
    of equal scores gives exactly 0 (each is first taken less the group's first score, so no
    rounding of the mean is left over for the whitening to blow up)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r} must be an int >= 1")
    if not isinstance(score, torch.Tensor) or not score.is_floating_point():
        got = f"a {score.dtype} tensor" if isinstance(score, torch.Tensor) else type(score).__name__
        raise ValueError(f"score must be a float tensor of rewards, got {got}")
    if score.dim() != 1 or len(score) % group_size:
        raise ValueError(
            f"score of shape {tuple(score.shape)} must be 1-D, a whole number of groups of "
            f"{group_size} (one score per reply, a prompt's replies side by side)"
        )
    if not score.is_meta and not torch.isfinite(score).all():
        raise ValueError("score holds NaN or inf; check the reward model's outputs")
    groups = score.view(-1, group_size)  # (B/G, G)
    shifted = groups - groups[:, :1]
    return (shifted - shifted.mean(dim=1, keepdim=True)).flatten()


def _all_equal(x: torch.Tensor) -> bool:
    return bool((x == x[0]).all()) if len(x) else True


def clipped_objective(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    *, clip: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """PPO's clipped surrogate, as a loss to minimise, and the share of clipped tokens.

    ``loss = −mean(min(ρ A, clip(ρ, 1 − ε, 1 + ε) A))`` over ``mask``, ``ρ = exp(logp −
    old_logp)``; all (B, T). A ratio outside ``[1 − ε, 1 + ε]`` in the direction the advantage
    pushes gets no gradient.

    >>> loss, frac = clipped_objective(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1),
    ...                                torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool))
    >>> loss.item(), frac.item()  # ρ = 1.5 is clipped to 1.2
    (-1.2000000476837158, 1.0)
    """
    ratio = torch.exp(logp - old_logp)  # (B, T)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    m = mask.float()
    loss = -(torch.minimum(unclipped, clipped) * m).sum() / m.sum()
    fraction = (((ratio - 1).abs() > clip).float() * m).sum() / m.sum()
    return loss, fraction


def reinforce_loss(
    logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """REINFORCE with a baseline (Williams 1992), as a loss: ``−mean(log π(y_t) A)`` over ``mask``;
    all (B, T), ``advantages`` without gradient.

    Its gradient raises the log-probability of every token of a reply that did better than the
    baseline and lowers it for one that did worse. At the policy that sampled the replies
    (ratio 1) it has the same gradient as :func:`clipped_objective`: PPO's ratio and clip only
    matter once the policy has moved, on the second and later minibatches of one roll-out.

    >>> reinforce_loss(torch.tensor([[-1.0, -2.0]]), torch.tensor([[1.0, 1.0]]),
    ...                torch.tensor([[True, False]]))
    tensor(1.)
    """
    if advantages.shape != logp.shape or mask.shape != logp.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"logp {tuple(logp.shape)}, advantages {tuple(advantages.shape)} and mask "
            f"{tuple(mask.shape)} ({mask.dtype}) must share one (B, T) shape, the mask bool: "
            "one advantage per token (a reply's return goes on each of its tokens, [:, None])"
        )
    if not mask.any():
        raise ValueError("mask is all False: no token to average over; mark the reply tokens")
    m = mask.float()
    return -(logp * advantages * m).sum() / m.sum()


def value_loss(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``½ mean((V − R)²)`` over ``mask``; all (B, T).

    >>> value_loss(torch.tensor([[1.0, 5.0]]), torch.tensor([[3.0, 0.0]]), torch.tensor([[1, 0]]))
    tensor(2.)
    """
    m = mask.float()
    return 0.5 * (((values - returns) ** 2) * m).sum() / m.sum()


class PolicyWithValue(nn.Module):
    """The policy (a GPT) and a value head on its hidden states, on the GPT's device:
    ids (B, T) → logits (B, T, V), values (B, T)."""

    def __init__(self, gpt: nn.Module) -> None:
        super().__init__()
        self.gpt = gpt
        self.value_head = nn.Linear(gpt.config.d_model, 1, device=model_device(gpt))  # (C,) -> 1
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.gpt.hidden_states(ids)  # (B, T, C)
        return self.gpt.lm_head(h), self.value_head(h).squeeze(-1)  # (B, T, V), (B, T)


ALGORITHMS: tuple[str, ...] = ("ppo", "reinforce")
MAX_GROUP = 64  # the most replies per prompt PPOConfig takes


@dataclass
class PPOConfig:
    """A PPO run's recipe."""

    iterations: int = 30  # roll-out + update rounds
    batch_size: int = 32  # prompts rolled out per iteration
    group_size: int = 1  # G: replies per prompt; G > 1 scores each against its prompt's mean
    epochs: int = 2  # passes over each roll-out
    minibatch_size: int = 16  # replies per gradient step
    learning_rate: float = 2e-5  # AdamW, constant
    kl_coef: float = 0.05  # β: the KL leash (0 = no leash)
    clip: float = 0.2  # ε of the clipped objective
    gamma: float = 1.0  # no discount within a reply
    lam: float = 0.95  # GAE's λ
    vf_coef: float = 0.5  # weight of the value loss
    max_new_tokens: int = 24  # reply length limit
    seed: int = 0  # draws prompts, replies and minibatches
    algorithm: str = "ppo"  # "ppo", or "reinforce": the ladder's first rung (see train_ppo)
    ptx_coef: float = 0.0  # γ of PPO-ptx: weight of the pretraining loss (0 = plain PPO)
    ptx_batch_size: int = 16  # windows of the pretraining stream (or conversations) per step

    def __post_init__(self) -> None:
        check_recipe(self, {
            "iterations": "int >= 1", "batch_size": "int >= 1", "epochs": "int >= 1",
            "minibatch_size": "int >= 1", "learning_rate": "> 0", "kl_coef": ">= 0",
            "clip": "(0, 1)", "gamma": "[0, 1]", "lam": "[0, 1]", "vf_coef": ">= 0",
            "max_new_tokens": "int >= 1", "seed": "int", "ptx_coef": ">= 0",
            "ptx_batch_size": "int >= 1",
        })  # fmt: skip
        g = self.group_size
        if isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= MAX_GROUP:
            raise ValueError(
                f"group_size={g!r} must be an int in [1, {MAX_GROUP}]: replies per "
                f"prompt (GRPO's recipes use up to {MAX_GROUP}; each costs a full reply)"
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={self.algorithm!r} must be one of {ALGORITHMS}")
        replies = self.batch_size * self.group_size  # in one roll-out
        if self.algorithm == "reinforce" and (self.epochs != 1 or self.minibatch_size < replies):
            raise ValueError(
                f"REINFORCE is on-policy: one gradient step per roll-out, on replies the current "
                f"policy sampled; got epochs={self.epochs}, minibatch_size={self.minibatch_size} "
                f"for {replies} replies a roll-out (batch_size={self.batch_size} × group_size="
                f"{self.group_size}). Set epochs=1 and minibatch_size={replies}, or use "
                "algorithm='ppo', whose ratio and clip make reusing a roll-out safe"
            )


@dataclass
class PPOLog:
    """One entry per iteration (the glossary is in the notebook)."""

    reward: list[float] = field(default_factory=list)  # mean reward-model score of the replies
    kl: list[float] = field(default_factory=list)  # mean over replies of Σ_t kl_penalty
    clip_fraction: list[float] = field(default_factory=list)  # share of clipped tokens
    entropy: list[float] = field(default_factory=list)  # mean per-token entropy, nats
    value_loss: list[float] = field(default_factory=list)  # mean value_loss of the updates
    seconds: list[float] = field(default_factory=list)  # wall time so far


def _rollout_tensors(policy, reference, reward_model, ids, mask, config):
    """Steps 2–4 for a padded batch (ids, mask (B, T)): everything the update needs, without
    gradients. ``policy(ids)`` gives (logits, values), ``reference(ids)`` (logits, _)."""
    with torch.no_grad():
        logits, values = policy(ids)  # (B, T, V), (B, T)
        old_logp = token_logprobs(logits, ids)  # (B, T-1)
        ref_logp = token_logprobs(reference(ids)[0], ids)  # (B, T-1)
        m = mask[:, 1:]  # (B, T-1): positions whose next token is a reply token
        score = score_replies(reward_model, ids, mask)  # (B,), in eval mode
        kl = kl_penalty(old_logp, ref_logp) * m  # (B, T-1)
        rewards = -config.kl_coef * kl
        last = (m * torch.arange(m.shape[1], device=m.device)).argmax(dim=1)  # (B,)
        g = config.group_size  # G > 1: each score against its prompt's own replies
        rewards[torch.arange(len(ids), device=m.device), last] += (
            prompt_baseline(score, g) if g > 1 else score
        )
        values = values[:, :-1] * m  # V of the state before each reply token
        adv, returns = gae(rewards, values, m, gamma=config.gamma, lam=config.lam)
        if config.algorithm == "reinforce":  # one return per reply, the batch's mean as baseline
            ret = rewards.sum(dim=1)  # (B,): score − β Σ_t KL
            std = ret.std() if len(ret) > 1 else ret.new_zeros(())
            adv = ((ret - ret.mean()) / (std + 1e-8))[:, None] * m  # (B, T-1)
            if _all_equal(ret):  # nothing to learn: the mean's rounding must not whiten to ±1
                adv = torch.zeros_like(adv)
        else:
            mean = adv[m].mean()
            std = adv[m].std() if m.sum() > 1 else adv.new_zeros(())  # one token: A = 0
            adv = torch.zeros_like(adv) if _all_equal(adv[m]) else (adv - mean) / (std + 1e-8) * m
    return old_logp, adv, returns, m, score, kl.sum(dim=1)


def _check_examples(examples, context_length: int, vocab_size: int) -> list[Example]:
    """The conversations of PPO-ptx in chat format, as a list, each checked: ``(ids, mask)``,
    1-D, of one length, at most ``context_length`` tokens, ids in ``[0, vocab_size)``, with a
    reply token to learn."""
    examples = list(examples) if isinstance(examples, Sequence) else None
    if not examples:
        raise ValueError(
            "ptx_examples must be a non-empty list of (ids, loss_mask) pairs; pass "
            "companion.sft.training_examples(tokenizer, chat_model_configs()[0], "
            "context_length=...)[0]"
        )
    for i, example in enumerate(examples):
        ok = (
            isinstance(example, tuple | list)
            and len(example) == 2
            and all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in example)
        )
        if ok:
            ids, mask = example
            ok = ids.dtype == torch.long and mask.dtype == torch.bool and len(ids) == len(mask)
        if not ok:
            raise ValueError(
                f"ptx_examples[{i}] is not an (ids, loss_mask) pair of 1-D torch.long ids and a "
                "bool mask of the same length; render it with companion.chat.render_chat"
            )
        if len(ids) > context_length or not mask[1:].any():
            raise ValueError(
                f"ptx_examples[{i}] has {len(ids)} tokens and {int(mask[1:].sum())} reply tokens "
                f"to learn; each needs at most {context_length} (the model's context) and at "
                "least one reply token after its first (encode_conversations fits them)"
            )
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(
                f"ptx_examples[{i}] has token ids from {ids.min().item()} to {ids.max().item()}, "
                f"outside the model's vocabulary [0, {vocab_size}); render it with the model's "
                "tokenizer"
            )
    return examples


def train_ppo(
    chat_model: nn.Module, tokenizer, reward_model: nn.Module, prompts: Sequence[Prompt],
    config: PPOConfig | None = None, *,
    callback: Callable[[int, nn.Module, PPOLog], None] | None = None,
    ptx_tokens: torch.Tensor | None = None,
    ptx_examples: Sequence[Example] | None = None,
) -> tuple[nn.Module, PPOLog]:  # fmt: skip
    """PPO from a copy of ``chat_model`` against the frozen ``reward_model``; returns the tuned
    GPT (eval mode) and its :class:`PPOLog`. The reference is a frozen copy of ``chat_model``.
    Everything runs on ``chat_model``'s device (the reward model must be there too); neither
    model is moved. The shipped figures were made on the CPU.

    ``callback(iteration, policy, log)``, if given, runs after every iteration with the policy
    as it is then (a GPT in eval mode: measure it, do not train it), e.g. to draw the rater's
    verdict against the reward model's score as the run goes (over-optimisation).

    ``ptx_tokens``: a 1-D stream of token ids, or ``ptx_examples``: rendered conversations
    ``(ids, loss_mask)``; one of the two is needed exactly when ``config.ptx_coef > 0``
    (PPO-ptx). Every update step adds ``ptx_coef`` times the mean next-token cross-entropy of
    ``ptx_batch_size`` windows of the stream (every token), or of as many conversations (their
    replies, as in SFT), drawn with a generator seeded by ``config.seed``."""
    config = config or PPOConfig()
    given = [name for name, data in (("ptx_tokens", ptx_tokens), ("ptx_examples", ptx_examples))
             if data is not None]  # fmt: skip
    if len(given) != (config.ptx_coef > 0):
        raise ValueError(
            f"ptx_coef={config.ptx_coef} with {given or 'no PPO-ptx data'}: PPO-ptx needs "
            "ptx_coef > 0 and one of ptx_tokens=encode_corpus() or ptx_examples (rendered "
            "conversations), plain PPO neither"
        )
    if ptx_tokens is not None and (
        not isinstance(ptx_tokens, torch.Tensor) or ptx_tokens.dim() != 1
        or ptx_tokens.dtype != torch.long
        or len(ptx_tokens) <= chat_model.config.context_length
    ):  # fmt: skip
        raise ValueError(
            "ptx_tokens must be a 1-D torch.long stream of token ids longer than the model's "
            "context; pass companion.data.encode_corpus()"
        )
    if ptx_examples is not None:
        ptx_examples = _check_examples(
            ptx_examples, chat_model.config.context_length, chat_model.config.vocab_size
        )
    if not prompts:
        raise ValueError("prompts is empty; pass make_prompts(world, split='train')")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback={callback!r} must be a function (iteration, policy, log)")
    if not 1 <= config.batch_size <= len(prompts):
        raise ValueError(
            f"batch_size={config.batch_size} must be between 1 and the {len(prompts)} prompts; "
            "ask for a smaller batch or pass more prompts"
        )
    policy = PolicyWithValue(copy.deepcopy(chat_model))
    reference = copy.deepcopy(chat_model).eval()
    device = model_device(chat_model)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=0.0)
    rng, generator = random.Random(config.seed), make_generator(config.seed)
    ptx_generator = make_generator(config.seed)  # its own stream: plain PPO's draws unchanged
    if ptx_examples is not None:  # PPO-ptx in chat format: SFT's batches of the conversations
        ptx_batches = SFTBatches(config.ptx_batch_size, special_ids(tokenizer)[END], device=device)
    log, start = PPOLog(), time.perf_counter()
    for it in range(config.iterations):
        # 1. Roll out.
        batch = [p for p in rng.sample(list(prompts), config.batch_size)
                 for _ in range(config.group_size)]  # a prompt's G replies side by side  # fmt: skip
        samples = sample_replies(
            policy.gpt, tokenizer, batch, seed=config.seed * 100_003 + it,
            max_new_tokens=config.max_new_tokens,
        )  # fmt: skip
        ids, mask = reply_batch([prompt_ids(p, tokenizer) for p in batch], samples, tokenizer)
        ids, mask = ids.to(device), mask.to(device)
        # 2.-4. Score, KL penalty, advantages.
        policy.eval()
        old_logp, adv, returns, m, score, kl = _rollout_tensors(
            policy, reference, reward_model, ids, mask, config
        )
        # 5. Update: epochs of minibatches on the clipped objective and the value loss.
        policy.train()
        clips, entropies, v_losses = [], [], []
        for _ in range(config.epochs):
            order = torch.randperm(len(ids), generator=generator)
            for mb in order.split(config.minibatch_size):
                logits, values = policy(ids[mb])  # (b, T, V), (b, T)
                logp = token_logprobs(logits, ids[mb])  # (b, T-1)
                if config.algorithm == "reinforce":  # no ratio, no clip, no value head
                    pg, frac = reinforce_loss(logp, adv[mb], m[mb]), logp.new_zeros(())
                    vl = value_loss(values[:, :-1], returns[mb], m[mb]).detach()  # logged only
                    loss = pg
                else:
                    pg, frac = clipped_objective(
                        logp, old_logp[mb], adv[mb], m[mb], clip=config.clip
                    )
                    vl = value_loss(values[:, :-1], returns[mb], m[mb])
                    loss = pg + config.vf_coef * vl
                if ptx_tokens is not None:  # PPO-ptx: keep predicting the pretraining text
                    x, y = get_batch(ptx_tokens, config.ptx_batch_size,
                                     chat_model.config.context_length,
                                     generator=ptx_generator, device=device)  # fmt: skip
                elif ptx_examples is not None:  # in chat format: keep writing the SFT replies
                    x, y = ptx_batches(ptx_examples, ptx_generator)
                if config.ptx_coef > 0:
                    lm_logits, _ = policy(x)  # (b, T, V)
                    loss = loss + config.ptx_coef * F.cross_entropy(
                        lm_logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX
                    )
                check_loss(loss, "PPO")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                optimizer.step()
                with torch.no_grad():
                    p = F.softmax(logits[:, :-1].float(), dim=-1)  # (b, T-1, V)
                    ent = -(p * torch.log(p + 1e-12)).sum(-1)  # (b, T-1)
                    entropies.append((ent * m[mb]).sum().item() / m[mb].sum().item())
                clips.append(frac.item())
                v_losses.append(vl.item())
        log.reward.append(score.mean().item())
        log.kl.append(kl.mean().item())
        log.clip_fraction.append(sum(clips) / len(clips))
        log.entropy.append(sum(entropies) / len(entropies))
        log.value_loss.append(sum(v_losses) / len(v_losses))
        log.seconds.append(time.perf_counter() - start)
        if callback is not None:
            callback(it, policy.gpt.eval(), log)
    return policy.gpt.eval(), log
