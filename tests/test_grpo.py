"""GRPO: group advantages, the clipped token-mean loss with its KL term, and the trainer."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import companion.grpo
from companion.grpo import GRPOConfig, group_advantages, grpo_loss, kl_k3, train_grpo
from companion.model import GPT, GPTConfig


def test_docstring_examples():
    result = doctest.testmod(companion.grpo)
    assert result.attempted > 0 and result.failed == 0


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv, equal = group_advantages(rewards, eps=0.0)
    # group 0: mean 1/4, population std sqrt(3)/4: (1 − 1/4)/(√3/4) = √3, (0 − 1/4)/(√3/4) = −1/√3
    r3 = math.sqrt(3)
    assert adv[0].tolist() == pytest.approx([r3, -1 / r3, -1 / r3, -1 / r3], abs=1e-6)
    assert adv[1:].eq(0).all()  # all-equal groups: exactly zero, whatever eps is
    assert equal.tolist() == [False, True, True]
    assert adv[0].sum().item() == pytest.approx(0.0, abs=1e-6)  # advantages centre each group


@pytest.mark.parametrize("shape", [(4,), (3, 1), (2, 2, 2)])
def test_group_advantages_refuse_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"\(B, G\)"):
        group_advantages(torch.zeros(shape))


def test_grpo_loss_inside_and_outside_the_clip():
    # Four one-token replies, ε = 0.2. Per token min(ρA, clip(ρ)A):
    #   ρ = 1.1, A = +1 → 1.1 (inside the clip)      ρ = 1.5, A = +1 → 1.2 (clipped)
    #   ρ = 0.5, A = +1 → 0.5 (min keeps ρA)         ρ = 0.5, A = −1 → −0.8 (clipped)
    # loss = −(1.1 + 1.2 + 0.5 − 0.8) / 4 = −0.5. The clip fraction counts |ρ − 1| > ε: 3 of 4.
    ratio = torch.tensor([[1.1], [1.5], [0.5], [0.5]])
    logp = torch.log(ratio).requires_grad_()
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0])
    mask = torch.ones(4, 1, dtype=torch.bool)
    loss, fraction, kl = grpo_loss(logp, torch.zeros(4, 1), adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-0.5, abs=1e-6)
    assert fraction.item() == pytest.approx(0.75) and kl.item() == 0.0
    loss.backward()
    # d loss / d logp = −ρA/4 where not clipped, 0 where clipped.
    assert logp.grad[:, 0].tolist() == pytest.approx([-1.1 / 4, 0.0, -0.5 / 4, 0.0], abs=1e-6)


def test_grpo_loss_is_a_token_mean_and_adds_the_kl():
    # Reply 0 has one token with A = +1, reply 1 three with A = −1, ratio 1 everywhere:
    # the token-mean is −(1 − 3)/4 = 0.5 (a mean of the replies' means would be 0).
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    adv = torch.tensor([1.0, -1.0])
    loss, _, _ = grpo_loss(logp, logp, adv, mask)
    assert loss.item() == pytest.approx(0.5)
    # the reference gives each token log-prob −1 more than the policy: k3 = e − 2 per token
    ref = logp - 1.0
    loss_kl, _, kl = grpo_loss(logp, logp, adv, mask, ref_logp=ref, kl_coef=0.1)
    assert kl.item() == pytest.approx(math.e**-1 + 1 - 1, abs=1e-6)  # exp(−1) − (−1) − 1
    assert loss_kl.item() == pytest.approx(0.5 + 0.1 * kl.item(), abs=1e-6)
    assert kl_k3(torch.zeros(3), torch.zeros(3)).eq(0).all()


def test_grpo_config_refuses_bad_recipes():
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="kl_coef"):
        GRPOConfig(kl_coef=-0.1)


def _toy_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=4, context_length=16, n_layer=1, n_head=1, d_model=16))


def _first_token_is_one(i, reply, finished):
    """Toy reward: 1 if the reply starts with token 1 (a quarter of the vocabulary)."""
    return float(len(reply) > 0 and reply[0] == 1)


@pytest.mark.filterwarnings("ignore:in .* GRPO iterations every group")  # all right at the end
def test_grpo_raises_the_reward_on_a_toy_task():
    torch.set_num_threads(1)
    model = _toy_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = [[0], [2], [0, 2], [2, 0]]
    config = GRPOConfig(
        iterations=25, questions=4, group_size=8, learning_rate=3e-2, max_new_tokens=3, seed=0
    )
    tuned, log = train_grpo(model, prompts, _first_token_is_one, 3, config)
    # Start: a random tiny model is nearly uniform over 4 tokens, so about 1/4 of the first
    # tokens are 1; of 32 replies, more than 16 would be 4 standard deviations above 8.
    assert log.reward[0] < 0.5
    # End: the last five iterations (160 replies) above 0.9: a policy still at the start's
    # 1/4 would be more than 20 standard deviations below it.
    assert sum(log.reward[-5:]) / 5 > 0.9
    assert len(log.equal_groups) == len(log.length) == len(log.kl) == config.iterations
    assert log.kl[-1] > 0  # it moved away from the start
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not the copy
    assert tuned is not model and not tuned.training


def test_grpo_says_when_every_group_is_equal():
    model = _toy_model()
    config = GRPOConfig(iterations=2, questions=1, group_size=4, max_new_tokens=2)
    with pytest.warns(UserWarning, match="in 2 of 2 GRPO iterations every group's rewards"):
        tuned, log = train_grpo(model, [[0]], lambda i, r, f: 0.0, 3, config)
    assert log.skipped == [0, 1] and log.equal_groups == [1.0, 1.0]
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), tuned.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="non-empty list"):
        train_grpo(model, [], lambda i, r, f: 0.0, 3, config)


def test_group_advantages_refuse_rewards_that_are_not_finite_numbers():
    for bad in ([[1.0, float("nan"), 0.0]], [[1.0, float("inf"), 0.0]]):
        with pytest.raises(ValueError, match="finite"):
            group_advantages(torch.tensor(bad))
    with pytest.raises(ValueError, match="floating-point"):
        group_advantages(torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match="eps"):
        group_advantages(torch.tensor([[1.0, 0.0]]), eps=-1.0)


def test_grpo_loss_checks_shapes_and_ignores_what_the_mask_leaves_out():
    logp, old = torch.zeros(2, 3), torch.zeros(2, 3)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    adv = torch.tensor([1.0, -1.0])
    reference, _, _ = grpo_loss(logp, old, adv, mask, ref_logp=torch.zeros(2, 3))
    wild = logp.clone()
    wild[:, -1] = 100.0  # outside the mask: exp(100 - 0) overflows float32
    ref = torch.zeros(2, 3)
    ref[:, -1] = float("nan")
    loss, fraction, kl = grpo_loss(wild, old, adv, mask, ref_logp=ref, kl_coef=0.1)
    assert torch.equal(loss, reference) and fraction == 0 and kl == 0
    for bad in (
        (logp, old, adv, mask[:1]),  # a mask that would broadcast
        (logp, old[:, :1], adv, mask),
        (logp, old, adv[:1], mask),
        (logp, old, adv[:, None], mask),
    ):
        with pytest.raises(ValueError, match=r"\(N, T\)"):
            grpo_loss(*bad)
    with pytest.raises(ValueError, match="selects no token"):
        grpo_loss(logp, old, adv, torch.zeros(2, 3, dtype=torch.bool))


def test_grpo_refuses_more_questions_than_prompts():
    model = _toy_model()
    config = GRPOConfig(iterations=1, questions=4, group_size=2, max_new_tokens=1)
    with pytest.raises(ValueError, match=r"questions=4 but there are only 2 prompts"):
        train_grpo(model, [[0], [2]], _first_token_is_one, 3, config)
    for stop_id in (True, -1, 4):  # the toy vocabulary is 0..3
        with pytest.raises(ValueError, match="stop_id"):
            train_grpo(model, [[0], [2]], _first_token_is_one, stop_id,
                       GRPOConfig(questions=2, max_new_tokens=1))  # fmt: skip
    with pytest.raises(TypeError, match="config must be a GRPOConfig"):
        train_grpo(model, [[0], [2]], _first_token_is_one, 3, {"questions": 2})
    # any int seed runs: seed * 100_003 once overflowed torch's 64-bit seed on the first roll-out
    config = GRPOConfig(iterations=1, questions=1, group_size=2, max_new_tokens=1, seed=2**60)
    with pytest.warns(UserWarning, match="every group's rewards"):
        train_grpo(model, [[0]], lambda i, r, f: 0.0, 3, config)


def test_grpo_loss_and_advantages_refuse_bad_knobs():
    logp, adv, mask = torch.zeros(2, 1), torch.tensor([1.0, -1.0]), torch.ones(2, 1, dtype=bool)
    for knobs in ({"kl_coef": 0.1}, {"clip": -0.2}, {"clip": float("nan")}):
        # kl_coef without ref_logp used to add no KL; a negative clip clamped every ratio to 0.8
        with pytest.raises(ValueError, match=r"clip=.* kl_coef="):
            grpo_loss(logp, logp, adv, mask, **knobs)
    with pytest.raises(ValueError, match="eps"):
        group_advantages(torch.tensor([[1.0, 0.0]]), eps=True)


def test_grpo_checks_the_window_the_rewards_and_keeps_the_replies_it_samples():
    model = _toy_model()  # context 16
    config = GRPOConfig(iterations=1, questions=2, group_size=2, max_new_tokens=15)
    with pytest.raises(ValueError, match=r"longest prompt \(2 tokens\) plus max_new_tokens=15"):
        train_grpo(model, [[0, 1], [2]], _first_token_is_one, 3, config)  # found before sampling
    small = GRPOConfig(iterations=1, questions=2, group_size=2, max_new_tokens=2)
    for bad, error in ((None, TypeError), ("1", TypeError), (1e300, ValueError)):
        with pytest.raises(error, match="the reward function returned"):
            train_grpo(model, [[0], [2]], lambda i, r, f, bad=bad: bad, 3, small)
    with pytest.raises(AttributeError, match="tuple"):
        # the reply reaches the reward as a tuple: it cannot be changed in place
        train_grpo(model, [[0], [2]], lambda i, r, f: r.clear(), 3, small)
    with torch.no_grad():  # a caller's no_grad does not stop the update
        _, log = train_grpo(model, [[0], [2]], lambda i, r, f: float(r[:1] == (1,)), 3,
                            GRPOConfig(iterations=2, questions=2, group_size=4,
                                       max_new_tokens=2, seed=1))  # fmt: skip
    assert len(log.reward) == 2
    frozen = _toy_model().requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        train_grpo(frozen, [[0], [2]], _first_token_is_one, 3, small)
    with pytest.raises(TypeError, match="torch tensor"):
        group_advantages([[1.0, 0.0]])
