"""DPO: the preference pairs trained on directly, with no reward model and no sampling.

Taught in ``06_rlhf.ipynb`` (section 6). Direct Preference Optimisation (Rafailov et al. 2023,
eq. 7) shows that the policy that PPO's KL-regularised objective aims for satisfies
``r(x, y) = β log π(y|x)/π_ref(y|x) + const``, so the reward model can be replaced by that
*implicit reward*, and Bradley–Terry applied to it directly (:func:`dpo_loss`)::

    loss = −log σ(β [(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))])

with each ``log π(y|x)`` **summed over the reply's tokens only** (:func:`companion.replies.
sequence_logprob`). Because it reads any pair, DPO also learns from replies the policy seldom
or never samples itself (the rater's written refusals), which PPO, learning only from its own
roll-outs, reinforces only as often as it samples them; but plain DPO can satisfy a pair by pushing the rejected reply down rather
than the chosen one up, so a reply the model finds very unlikely may stay unlikely.
``DPOConfig.nll_weight`` adds the chosen replies' mean token negative log-likelihood to the loss
(RPO, Pang et al. 2024), which pulls them up; with ``preference_weight=0`` only that term is left,
plain SFT on the chosen replies: the control that tells what DPO adds to imitation. The log
keeps, per step, how far the chosen and the rejected replies have moved from the reference
(``chosen_logratio``, ``rejected_logratio``: the mechanism, seen). The trainer runs where the chat
model is, like PPO's.
Shape vocabulary: B batch.

Left out: IPO, KTO and other variants, label smoothing (conservative DPO), and reference-free DPO.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from companion.environment import make_generator, model_device
from companion.preferences import Preference
from companion.replies import sequence_logprob
from companion.reward_model import pair_tensors
from companion.train_config import check_loss, check_recipe


def dpo_loss(
    policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(loss, chosen_rewards, rejected_rewards)`` for sequence log-probabilities, each (B,).

    The implicit rewards are ``β (log π − log π_ref)`` of each reply (detached); the loss is
    the mean of ``−log σ(chosen_reward − rejected_reward)``.

    >>> loss, c, r = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
    ...                       torch.tensor([-2.0]), beta=0.1)
    >>> round(loss.item(), 4), round(c.item(), 2), round(r.item(), 2)  # −log σ(0.2)
    (0.5981, 0.1, -0.1)
    """
    if not beta > 0:
        raise ValueError(f"beta={beta} must be > 0 (the strength of the KL leash, e.g. 0.1)")
    shapes = {tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)}  # fmt: skip
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(
            f"the four log-probabilities have shapes {sorted(shapes)}; each must be (B,): one "
            "summed log-probability per pair"
        )
    if policy_chosen_logps.numel() == 0:
        raise ValueError("no pairs: the preference set is empty; collect some preferences first")
    chosen = beta * (policy_chosen_logps - ref_chosen_logps)  # (B,)
    rejected = beta * (policy_rejected_logps - ref_rejected_logps)  # (B,)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach()


@dataclass
class DPOConfig:
    """A DPO run's recipe."""

    steps: int = 60  # AdamW steps
    batch_size: int = 32  # pairs per step
    learning_rate: float = 5e-5  # constant
    beta: float = 0.1  # β: the KL leash
    seed: int = 0  # draws the batches
    nll_weight: float = 0.0  # α: add α × the chosen replies' mean token NLL (RPO); 0 = plain DPO
    preference_weight: float = 1.0  # weight of dpo_loss; 0 with nll_weight > 0 = SFT on the chosen

    def __post_init__(self) -> None:
        check_recipe(self, {
            "steps": "int >= 1", "batch_size": "int >= 1", "learning_rate": "> 0",
            "beta": "> 0", "seed": "int", "nll_weight": ">= 0", "preference_weight": ">= 0",
        })  # fmt: skip
        if self.nll_weight == 0 and self.preference_weight == 0:
            raise ValueError(
                "nll_weight and preference_weight are both 0: the loss would be 0 and nothing "
                "would train; set preference_weight=1.0 (DPO) or nll_weight=1.0 (SFT on the chosen)"
            )


@dataclass
class DPOLog:
    """One entry per step."""

    loss: list[float] = field(default_factory=list)  # dpo_loss of the batch
    margin: list[float] = field(default_factory=list)  # mean chosen − rejected implicit reward
    accuracy: list[float] = field(default_factory=list)  # share of pairs with a positive margin
    chosen_logratio: list[float] = field(default_factory=list)  # mean log π(y_c) − log π_ref(y_c)
    rejected_logratio: list[float] = field(default_factory=list)  # the same for the rejected
    seconds: list[float] = field(default_factory=list)  # wall time so far


def train_dpo(
    chat_model: nn.Module, tokenizer, pairs: Sequence[Preference], config: DPOConfig | None = None
) -> tuple[nn.Module, DPOLog]:
    """DPO from a copy of ``chat_model`` (the frozen reference is ``chat_model`` itself, put in
    eval mode); returns the tuned GPT (eval mode) and its :class:`DPOLog`. Everything runs on
    ``chat_model``'s device; the model is not moved."""
    config = config or DPOConfig()
    device = model_device(chat_model)
    cid, cm, rid, rm = (t.to(device) for t in pair_tensors(pairs, tokenizer))
    reference = chat_model.eval()
    with torch.no_grad():  # the reference never changes: its log-probabilities once
        ref_c, ref_r = sequence_logprob(reference, cid, cm), sequence_logprob(reference, rid, rm)
    policy = copy.deepcopy(chat_model).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=0.0)
    generator, log, start = make_generator(config.seed), DPOLog(), time.perf_counter()
    for _ in range(config.steps):
        b = torch.randint(len(pairs), (config.batch_size,), generator=generator).to(device)  # (B,)
        pol_c = sequence_logprob(policy, cid[b], cm[b])  # (B,)
        pol_r = sequence_logprob(policy, rid[b], rm[b])  # (B,)
        loss, c, r = dpo_loss(pol_c, pol_r, ref_c[b], ref_r[b], config.beta)
        nll = -pol_c.sum() / cm[b].sum()  # mean NLL per chosen reply token (none is empty)
        total = config.preference_weight * loss + config.nll_weight * nll
        check_loss(total, "DPO")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        log.loss.append(loss.item())
        log.margin.append((c - r).mean().item())
        log.accuracy.append((c > r).float().mean().item())
        log.chosen_logratio.append((pol_c - ref_c[b]).mean().item())
        log.rejected_logratio.append((pol_r - ref_r[b]).mean().item())
        log.seconds.append(time.perf_counter() - start)
    return policy.eval(), log
