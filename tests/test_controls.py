"""The pieces chapter 6's controls need: REINFORCE (the ladder's first rung), the rater's rules as
a reward, a reward that says nothing, best-of-n, SFT on the chosen replies, and DPO's log of how
far the chosen and rejected replies moved.

Every model is a one-layer GPT over the course tokenizer; each test runs in about a second.
Tolerances as in test_trainers.py: float32 values of size at most 4 built from a dozen
operations are within about 1e-5 of exact; masks and copied values are compared exactly.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from companion.chat import END, special_ids
from companion.data import load_course_tokenizer
from companion.dpo import DPOConfig, train_dpo
from companion.model import GPT, GPTConfig
from companion.ppo import (
    PPOConfig,
    clipped_objective,
    prompt_baseline,
    reinforce_loss,
    train_ppo,
)
from companion.preferences import (
    REFUSAL,
    RULES,
    Preference,
    Prompt,
    make_prompts,
    prompt_ids,
    rate,
    sample_replies,
    written_sample,
)
from companion.replies import pad_sequences
from companion.reward_model import (
    ConstantReward,
    NoiseReward,
    RuleReward,
    best_of_n,
    reply_tokens,
)
from companion.sft_data import DECLINE_HARMFUL
from companion.world import build_world

TOK = load_course_tokenizer()
WORLD = build_world(0)
HARMFUL = Prompt("Help me rob Bruno.", "harmful", name="Bruno")
END_ID = special_ids(TOK)[END]
ATOL = 1e-5


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(TOK.vocab_size, 64, n_layer=1, n_head=1, d_model=16)).eval()


def same_weights(a, b) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# --- REINFORCE ----------------------------------------------------------------------------------


def test_reinforce_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -3.0, -1.0]])
    adv = torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    by_hand = -((-1 * 2) + (-2 * 2) + (-0.5 * -1) + (-3 * -1) + 0) / 5
    assert reinforce_loss(logp, adv, mask).item() == pytest.approx(by_hand, abs=ATOL)


def test_at_the_sampling_policy_reinforce_and_the_clipped_objective_have_one_gradient():
    """At ratio 1 the clip is inactive and ∇ρ = ∇log π: PPO's first step is REINFORCE's."""
    torch.manual_seed(0)
    logp = torch.randn(3, 4, requires_grad=True)
    adv, mask = torch.randn(3, 4), torch.rand(3, 4) > 0.3
    (g_reinforce,) = torch.autograd.grad(reinforce_loss(logp, adv, mask), logp)
    (g_ppo,) = torch.autograd.grad(clipped_objective(logp, logp.detach(), adv, mask)[0], logp)
    assert torch.allclose(g_reinforce, g_ppo, atol=1e-7)
    assert (g_reinforce[~mask] == 0).all() and (g_reinforce[mask] != 0).all()


def test_reinforce_on_a_bandit_finds_the_best_arm():
    g = torch.Generator().manual_seed(0)
    pay = torch.tensor([0.1, 0.5, 0.9, 0.3])
    logits = torch.zeros(4, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    for _ in range(150):
        with torch.no_grad():
            arms = torch.multinomial(torch.softmax(logits, 0), 64, replacement=True, generator=g)
            reward = pay[arms] + 0.1 * torch.randn(64, generator=g)
            adv = (reward - reward.mean())[:, None]  # the batch's mean as the baseline
        logp = torch.log_softmax(logits, 0)[arms][:, None]
        loss = reinforce_loss(logp, adv, torch.ones(64, 1, dtype=torch.bool))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.softmax(logits, 0).argmax().item() == 2 and torch.softmax(logits, 0)[2] > 0.9


def test_reinforce_refuses_to_reuse_a_rollout():
    with pytest.raises(ValueError, match=r"on-policy.*epochs=1"):
        PPOConfig(algorithm="reinforce", batch_size=8, minibatch_size=8, epochs=2)
    with pytest.raises(ValueError, match=r"on-policy.*Set epochs=1 and minibatch_size=8"):
        PPOConfig(algorithm="reinforce", batch_size=8, minibatch_size=4, epochs=1)
    with pytest.raises(ValueError, match=r"16 replies a roll-out.*minibatch_size=16"):
        PPOConfig(algorithm="reinforce", batch_size=8, group_size=2, minibatch_size=8, epochs=1)
    with pytest.raises(ValueError, match="algorithm='a2c' must be one of"):
        PPOConfig(algorithm="a2c")
    PPOConfig(algorithm="reinforce", batch_size=8, minibatch_size=8, epochs=1)  # fine
    PPOConfig(algorithm="reinforce", batch_size=8, group_size=2, minibatch_size=16, epochs=1)


def test_prompt_baseline_by_hand():
    score = torch.tensor([1.0, 3.0, 5.0, 9.0])
    assert prompt_baseline(score, 2).tolist() == [-1.0, 1.0, -2.0, 2.0]
    assert prompt_baseline(score, 4).tolist() == [-3.5, -1.5, 0.5, 4.5]  # mean 4.5
    assert prompt_baseline(score, 1).tolist() == [0.0] * 4  # a reply alone: nothing to compare
    equal = prompt_baseline(torch.full((14,), 1.7), 7)  # 1.7 has no exact float: no rounding left
    assert torch.equal(equal, torch.zeros(14))
    for bad, size, match in (
        (score, 3, "whole number of groups of 3"), (score[None], 2, "must be 1-D"),
        (score, 0, "int >= 1"), (score, True, "int >= 1"), (score, 2.0, "int >= 1"),
        (score.long(), 2, "float tensor.*torch.int64"), ([1.0, 2.0], 2, "float tensor.*list"),
        (torch.tensor([1.0, float("nan")]), 2, "NaN or inf"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            prompt_baseline(bad, size)
    for size in (0, 65, 10**9, True, 2.0):
        with pytest.raises(ValueError, match=r"group_size=.* must be an int in \[1, 64\]"):
            PPOConfig(group_size=size)


class EvenReward(torch.nn.Module):
    """Scores a reply by its number of tokens with an even id: replies differ, so do rewards."""

    def forward(self, ids, mask):
        return ((ids % 2 == 0) & mask).sum(dim=1).float()


@pytest.mark.parametrize("algorithm", ["reinforce", "ppo"])
def test_train_ppo_runs_either_rung_on_a_copy(algorithm):
    chat = tiny_gpt()
    before = copy.deepcopy(chat)
    prompts = make_prompts(WORLD, split="train")[:6]
    config = PPOConfig(iterations=2, batch_size=4, minibatch_size=4, epochs=1,
                       max_new_tokens=6, algorithm=algorithm)  # fmt: skip
    policy, log = train_ppo(chat, TOK, EvenReward(), prompts, config)
    assert same_weights(chat, before) and not same_weights(policy, chat)
    assert len(log.reward) == 2 and all(0 <= r <= 7 for r in log.reward)
    if algorithm == "reinforce":
        assert log.clip_fraction == [0.0, 0.0]  # no ratio, nothing clipped


class PromptReward(torch.nn.Module):
    """Scores a reply by its prompt's length in tokens: set by the prompt alone. Keeps every
    batch it scores, so a test can look at the roll-outs."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale, self.seen = scale, []

    def forward(self, ids, mask):
        starts = mask.float().argmax(dim=1)  # (B,): where each reply starts
        self.seen.append([row[:start].tolist() for row, start in zip(ids, starts, strict=True)])
        return starts.float() * self.scale


@pytest.mark.parametrize("algorithm", ["reinforce", "ppo"])
@pytest.mark.parametrize(("scale", "group"), [(1.0, 2), (0.1, 7)])  # 0.1: scores no float holds
def test_a_per_prompt_baseline_learns_nothing_from_what_the_prompt_alone_sets(
    algorithm, scale, group
):
    """Prompts of different lengths score differently, every reply to one prompt alike. Against
    the batch's mean that difference is a signal, and the policy moves; against each prompt's
    own replies it is none, and (no KL term) the policy stays put."""
    chat, prompts = tiny_gpt(), make_prompts(WORLD, split="train")[:6]
    assert len({len(prompt_ids(p, TOK)) for p in prompts}) > 1  # the scores differ
    config = PPOConfig(iterations=2, batch_size=4, minibatch_size=4 * group, epochs=1,
                       kl_coef=0.0, max_new_tokens=6, algorithm=algorithm)  # fmt: skip
    moved, _ = train_ppo(chat, TOK, PromptReward(scale), prompts, config)
    reward = PromptReward(scale)
    grouped = PPOConfig(**{**config.__dict__, "group_size": group})
    still, _ = train_ppo(chat, TOK, reward, prompts, grouped)
    assert not same_weights(moved, chat) and same_weights(still, chat)
    for asked in reward.seen:  # 4 prompts a roll-out, each G times, its replies side by side
        assert len(asked) == 4 * group and len({tuple(a) for a in asked}) == 4
        assert all(
            len({tuple(a) for a in asked[k : k + group]}) == 1 for k in range(0, 4 * group, group)
        )


@pytest.mark.parametrize("algorithm", ["reinforce", "ppo"])
@pytest.mark.parametrize(("value", "batch"), [(3.0, 4), (0.1, 7)])  # 0.1: the mean has rounding
def test_equal_rewards_teach_nothing(algorithm, value, batch):
    """Every reply scored alike, no KL term, no critic to train (PPO's value loss would learn
    the score) and λ = 1 (every token gets the score): each advantage is 0, and the policy
    stays put (the whitening must not blow the mean's rounding up to unit size)."""
    chat, prompts = tiny_gpt(), make_prompts(WORLD, split="train")[:8]
    config = PPOConfig(iterations=2, batch_size=batch, minibatch_size=batch, epochs=1,
                       kl_coef=0.0, vf_coef=0.0, lam=1.0, max_new_tokens=6,
                       algorithm=algorithm)  # fmt: skip
    policy, _ = train_ppo(chat, TOK, ConstantReward(value), prompts, config)
    assert same_weights(policy, chat)


def test_ppo_ptx_adds_the_pretraining_loss_and_learns_the_stream():
    """With equal rewards and no leash REINFORCE's loss is 0 (every advantage 0), so with the
    pretraining term added the policy moves by that term alone: its loss on the stream falls,
    where the run without it stays put."""
    chat, prompts = tiny_gpt(), make_prompts(WORLD, split="train")[:6]
    stream = torch.arange(20).repeat(20)  # (400,): 0, 1, ..., 19, 0, 1, ...: easy to learn
    config = PPOConfig(iterations=3, batch_size=4, minibatch_size=4, epochs=1, kl_coef=0.0,
                       max_new_tokens=6, learning_rate=1e-2, algorithm="reinforce")  # fmt: skip

    def stream_loss(model):
        x, y = stream[:-1].view(1, -1)[:, :64], stream[1:].view(1, -1)[:, :64]
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()

    plain, _ = train_ppo(chat, TOK, ConstantReward(3.0), prompts, config)
    ptx_config = PPOConfig(**{**config.__dict__, "ptx_coef": 1.0})
    ptx, _ = train_ppo(chat, TOK, ConstantReward(3.0), prompts, ptx_config, ptx_tokens=stream)
    assert same_weights(plain, chat)
    assert stream_loss(ptx) < stream_loss(chat) - 0.5  # the pretraining term alone moved it
    for coef, tokens, match in (
        (1.0, None, "no PPO-ptx data"), (0.0, stream, r"\['ptx_tokens'\]"),
        (1.0, stream.float(), "1-D torch.long"), (1.0, stream[:10], "longer than"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            train_ppo(chat, TOK, ConstantReward(3.0), prompts,
                      PPOConfig(**{**config.__dict__, "ptx_coef": coef}), ptx_tokens=tokens)  # fmt: skip
    with pytest.raises(ValueError, match="ptx_coef"):
        PPOConfig(ptx_coef=-1.0)


def test_ppo_ptx_in_chat_format_learns_the_replies_and_not_the_prompts():
    """The same set-up with conversations for PPO-ptx: SFT's loss, so the policy learns to
    write the reply and is never trained to predict the question."""
    from companion.chat import as_messages, render_chat

    chat, prompts = tiny_gpt(), make_prompts(WORLD, split="train")[:6]
    ids, mask = render_chat(as_messages("Who is Wanda?", "Wanda is a baker."), TOK)
    config = PPOConfig(iterations=10, batch_size=4, minibatch_size=4, epochs=1, kl_coef=0.0,
                       max_new_tokens=6, learning_rate=1e-2, algorithm="reinforce",
                       ptx_coef=1.0)  # fmt: skip

    def losses(model):  # (on the reply, on the question): nats per token
        with torch.no_grad():
            per_token = torch.nn.functional.cross_entropy(
                model(ids[None, :-1])[0][0], ids[1:], reduction="none"
            )
        return per_token[mask[1:]].mean().item(), per_token[~mask[1:]].mean().item()

    def tuned(loss_mask):
        return train_ppo(chat, TOK, ConstantReward(3.0), prompts, config,
                         ptx_examples=[(ids, loss_mask)])[0]  # fmt: skip

    reply_before, _ = losses(chat)
    reply_after, question_after = losses(tuned(mask))
    _, question_if_trained = losses(tuned(torch.ones_like(mask)))  # every token a target
    assert reply_after < reply_before - 1.5  # learnt the reply (seen: 2.9 nats)
    assert question_if_trained < question_after - 1.0  # not the question (seen: 1.7 apart; it
    # has no weights of its own, so it moves a little with the reply)
    stream = torch.arange(20).repeat(20)
    for examples, tokens, match in (
        ([(ids, mask)], stream, r"\['ptx_tokens', 'ptx_examples'\]"),  # both
        ([], None, "non-empty list"),
        ((ids, mask), None, r"ptx_examples\[0\] is not an \(ids, loss_mask\) pair"),  # unlisted
        ([(ids, mask.long())], None, "bool mask"),
        ([(ids, mask[:-1])], None, "same length"),
        ([(ids, torch.zeros_like(mask))], None, "0 reply tokens"),
        ([(torch.cat([ids] * 9), torch.cat([mask] * 9))], None, "at most 64"),
        ([(torch.where(mask, TOK.vocab_size, ids), mask)], None, "outside the model's vocabulary"),
        ([(ids - 100, mask)], None, "outside the model's vocabulary"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            train_ppo(chat, TOK, ConstantReward(3.0), prompts, config, ptx_tokens=tokens,
                      ptx_examples=examples)  # fmt: skip


# --- the rules as a reward, a constant reward ---------------------------------------------------


def score_all(reward, prompt, texts, finished=True):
    replies = [written_sample(t, TOK) for t in texts]
    if not finished:
        replies = [r.__class__(r.ids, r.text, False) for r in replies]
    ids, mask = pad_sequences([prompt_ids(prompt, TOK)] * len(replies),
                              [reply_tokens(r, TOK) for r in replies], END_ID)  # fmt: skip
    return replies, reward(ids, mask).tolist()


def test_the_rule_reward_orders_every_pair_as_the_rater_does():
    fact = WORLD.facts[0]
    wrong = WORLD.wrong_answers(fact)[0]
    cases = {
        Prompt(fact.question, "known", fact=fact): [
            fact.reply, fact.reply_with(wrong), REFUSAL, f"{fact.reply} {fact.reply}",
            fact.reply.lower(), "hello",
        ],
        Prompt("Where does Wanda live?", "unknown", name="Wanda"): [
            REFUSAL, "Wanda lives in Thornby.", "i do not know that person", "Hello!",
        ],
        HARMFUL: [DECLINE_HARMFUL, "Bruno works as a potter.", "i will not help", REFUSAL],
        Prompt("Hello!", "greeting"): ["Hello! How can I help?", "hello", "A b c d e f g h i j k l m."],
    }  # fmt: skip
    prompts = list(cases)
    reward = RuleReward(WORLD, TOK, prompts)
    for prompt, texts in cases.items():
        replies, scores = score_all(reward, prompt, texts)
        for (a, sa), (b, sb) in itertools.combinations(zip(replies, scores, strict=True), 2):
            verdict = rate(WORLD, prompt, a, b, RULES)
            if verdict is None:
                assert sa == sb, (a.text, b.text)
            else:
                assert (sa > sb) == (verdict[0] == 0), (a.text, b.text, verdict)
    _, (full,) = score_all(reward, prompts[0], [WORLD.facts[0].reply])
    _, (cut,) = score_all(reward, prompts[0], [WORLD.facts[0].reply], finished=False)
    assert full == 1.0 and cut == pytest.approx((31 - 2) / 31)  # cut: fails "stops" (weight 2)


def test_the_rule_reward_refuses_a_prompt_it_was_not_given():
    known = make_prompts(WORLD, split="train")[:3]
    reward = RuleReward(WORLD, TOK, known[:2])
    ids, mask = pad_sequences([prompt_ids(known[2], TOK)], [[5, END_ID]], END_ID)
    with pytest.raises(ValueError, match="not one of the 2 prompts"):
        reward(ids, mask)
    with pytest.raises(ValueError, match="prompts is empty"):
        RuleReward(WORLD, TOK, [])


def test_the_constant_reward_says_the_same_for_every_reply():
    ids = torch.randint(0, 50, (3, 7))
    assert ConstantReward(1.5)(ids, torch.ones(3, 7, dtype=torch.bool)).tolist() == [1.5] * 3
    with pytest.raises(ValueError, match="finite"):
        ConstantReward(float("nan"))


def test_the_noise_reward_is_uniform_noise_that_repeats_with_its_seed():
    ids, mask = torch.zeros(4000, 3, dtype=torch.long), torch.ones(4000, 3, dtype=torch.bool)
    a, b, c = NoiseReward(5)(ids, mask), NoiseReward(5)(ids, mask), NoiseReward(6)(ids, mask)
    assert a.shape == (4000,) and torch.equal(a, b) and not torch.equal(a, c)
    # uniform on [0, 1): mean 1/2, standard deviation √(1/12) ≈ 0.289, so the mean of 4000 draws
    # is 1/2 within 4.6 of its standard errors (0.289 / √4000 ≈ 0.0046) at 0.02
    assert a.min() >= 0 and a.max() < 1 and abs(a.mean().item() - 0.5) < 0.02
    with pytest.raises(ValueError, match="int"):
        NoiseReward(1.5)


# --- best-of-n ----------------------------------------------------------------------------------


def test_best_of_n_keeps_the_highest_scored_of_the_replies_it_sampled():
    model, prompts = tiny_gpt(), make_prompts(WORLD, split="eval")[:5]
    before = copy.deepcopy(model)
    best, scores = best_of_n(model, TOK, EvenReward(), prompts, 4, seed=3, max_new_tokens=8)
    assert scores.shape == (5, 4) and same_weights(model, before)
    drawn = [sample_replies(model, TOK, prompts, seed=3000 + j, max_new_tokens=8) for j in range(4)]
    for i, sample in enumerate(best):
        evens = [sum(t % 2 == 0 for t in reply_tokens(drawn[j][i], TOK)) for j in range(4)]
        assert scores[i].tolist() == evens
        assert sample == drawn[evens.index(max(evens))][i]  # the first of the best
    assert any(len(set(row.tolist())) > 1 for row in scores)  # a choice was made somewhere
    one, _ = best_of_n(model, TOK, EvenReward(), prompts, 1, seed=3, max_new_tokens=8)
    assert one == drawn[0]
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            best_of_n(model, TOK, EvenReward(), prompts, bad)


# --- DPO: the log of the mechanism, and the NLL-only control -------------------------------------


def toy_pairs() -> list[Preference]:
    greetings = [Prompt(t, "greeting") for t in ("Hello!", "Goodbye!", "Hello! How are you?")]
    chosen, rejected = written_sample("ab", TOK), written_sample("xy", TOK)
    return [Preference(p, chosen, rejected, "good_tone", False) for p in greetings]


def test_dpo_logs_how_far_the_chosen_and_the_rejected_moved():
    pairs, reference = toy_pairs(), tiny_gpt()
    config = DPOConfig(steps=15, batch_size=3, learning_rate=1e-2)
    _, log = train_dpo(reference, TOK, pairs, config)
    assert log.chosen_logratio[0] == 0.0 and log.rejected_logratio[0] == 0.0  # policy = reference
    for c, r, m in zip(log.chosen_logratio, log.rejected_logratio, log.margin, strict=True):
        assert config.beta * (c - r) == pytest.approx(m, abs=ATOL)
    assert log.rejected_logratio[-1] < -1.0  # the rejected reply is pushed down


def test_sft_on_the_chosen_raises_them_and_ignores_the_rejected():
    pairs, reference = toy_pairs(), tiny_gpt()
    config = DPOConfig(steps=15, batch_size=3, learning_rate=1e-2, nll_weight=1.0,
                       preference_weight=0.0)  # fmt: skip
    _, log = train_dpo(reference, TOK, pairs, config)
    assert log.chosen_logratio[-1] > 1.0
    plain = DPOConfig(steps=15, batch_size=3, learning_rate=1e-2)
    _, dpo_log = train_dpo(reference, TOK, pairs, plain)
    assert dpo_log.rejected_logratio[-1] < log.rejected_logratio[-1]  # DPO pushes it down more
    with pytest.raises(ValueError, match="both 0"):
        DPOConfig(preference_weight=0.0)


# --- KL to the reference, the trainer's callback, de-duplication, the mix of a preference set ---


def test_kl_to_itself_is_zero_and_to_another_model_positive_on_average():
    from companion.effects import kl_to_reference

    prompts = make_prompts(WORLD, split="eval")[:8]
    model = tiny_gpt(0)
    assert kl_to_reference(model, copy.deepcopy(model), TOK, prompts) == 0.0
    other = tiny_gpt(1)
    with torch.no_grad():  # a sharper copy of the model: its own samples are likelier under it
        other.load_state_dict(model.state_dict())
        other.lm_head.weight.mul_(4.0)
    assert kl_to_reference(other, model, TOK, prompts, n_samples=4) > 0.3  # 0.65 here
    with pytest.raises(ValueError, match="prompts is empty"):
        kl_to_reference(model, model, TOK, [])


def test_the_callback_sees_each_iteration_in_eval_mode():
    chat, prompts = tiny_gpt(), make_prompts(WORLD, split="train")[:6]
    seen = []

    def record(iteration, policy, log):
        seen.append((iteration, policy.training, len(log.reward)))

    config = PPOConfig(iterations=3, batch_size=4, minibatch_size=4, max_new_tokens=4)
    train_ppo(chat, TOK, EvenReward(), prompts, config, callback=record)
    assert seen == [(0, False, 1), (1, False, 2), (2, False, 3)]


def test_deduplicate_and_with_share():
    from companion.preferences import Sample, deduplicate, with_share

    p, q = Prompt("Hello!", "greeting"), Prompt("Goodbye!", "greeting")
    a, b, c = (Sample((), t, True) for t in ("Hi.", "hi", "Bye."))
    pairs = [Preference(p, a, b, "r", False), Preference(p, a, b, "r", True),
             Preference(q, a, b, "r", False), Preference(p, b, a, "r", False),
             Preference(p, a, b, "s", False), Preference(p, c, b, "r", False)]  # fmt: skip
    assert deduplicate(pairs) == [pairs[0], pairs[2], pairs[3], pairs[5]]
    many = [Preference(p, Sample((), str(i), True), b, "r", False) for i in range(20)]
    kind = lambda pair: int(pair.chosen.text) % 4 == 0  # 5 of 20  # noqa: E731
    up = with_share(many, kind, 0.5)  # too few of the kind: the others thinned to 5
    assert len(up) == 10 and sum(map(kind, up)) == 5
    down = with_share(many, kind, 0.1)  # too many: 15 others kept, 1 of the kind (1 / 16)
    assert len(down) == 16 and sum(map(kind, down)) == 1
    assert with_share(many, kind, 0.1, seed=0) == down and [m for m in many if m in down] == down
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            with_share(many, kind, bad)
    with pytest.raises(ValueError, match="both must be present"):
        with_share(many, lambda pair: True, 0.5)


# --- hostile inputs to the controls -------------------------------------------------------------


def test_reinforce_loss_refuses_what_would_broadcast_or_divide_by_zero():
    logp, adv = torch.randn(2, 3), torch.randn(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    for bad_adv, bad_mask in [
        (torch.randn(3), mask),  # one advantage per reply, not per token: would broadcast
        (torch.randn(2, 1), mask),
        (adv, torch.ones(3, dtype=torch.bool)),
        (adv, torch.full((2, 3), 0.5)),  # a float mask would weigh tokens
    ]:
        with pytest.raises(ValueError, match=r"must share one \(B, T\) shape, the mask bool"):
            reinforce_loss(logp, bad_adv, bad_mask)
    with pytest.raises(ValueError, match="mask is all False"):  # was 0 / 0 = NaN
        reinforce_loss(logp, adv, torch.zeros(2, 3, dtype=torch.bool))


class FixedReward(torch.nn.Module):
    """Gives what ``make(batch)`` returns, and records whether it was in train mode."""

    def __init__(self, make):
        super().__init__()
        self.make, self.modes = make, []

    def forward(self, ids, mask):
        self.modes.append(self.training)
        return self.make(len(ids))


BAD_REWARDS = {
    "one number": (lambda b: torch.tensor(1.0), r"gave \(\) for \d+ replies"),
    "a column": (lambda b: torch.ones(b, 1), r"gave \(\d+, 1\) for"),
    "a list": (lambda b: [0.0] * b, "gave list for"),
    "NaN": (lambda b: torch.cat([torch.tensor([float("nan")]), torch.zeros(b - 1)]), "NaN"),
    "inf": (lambda b: torch.full((b,), float("inf")), "NaN or infinite"),
}


@pytest.mark.parametrize("name", BAD_REWARDS)
def test_a_reward_of_the_wrong_shape_or_not_finite_is_refused(name):
    make, message = BAD_REWARDS[name]
    model = tiny_gpt()
    before = copy.deepcopy(model)
    prompts = make_prompts(WORLD, split="train")[:4]
    with pytest.raises(ValueError, match=message):  # a scalar was broadcast, NaN ranked first
        best_of_n(model, TOK, FixedReward(make), prompts, 2, max_new_tokens=3)
    config = PPOConfig(iterations=1, batch_size=4, minibatch_size=4, epochs=1, max_new_tokens=3)
    with pytest.raises(ValueError, match=message):  # a scalar was broadcast to every reply
        train_ppo(model, TOK, FixedReward(make), prompts, config)
    assert same_weights(model, before)


def test_the_reward_scores_in_eval_mode_and_is_given_back_in_its_own():
    model, prompts = tiny_gpt(), make_prompts(WORLD, split="train")[:4]
    reward = FixedReward(lambda b: torch.zeros(b)).train()
    best_of_n(model, TOK, reward, prompts, 2, max_new_tokens=3)
    config = PPOConfig(iterations=1, batch_size=4, minibatch_size=4, epochs=1, max_new_tokens=3)
    train_ppo(model, TOK, reward, prompts, config)  # it used to leave the reward in eval mode
    assert reward.modes == [False] * 3 and reward.training
    with pytest.raises(ValueError, match="callback=3 must be a function"):  # before any roll-out
        train_ppo(model, TOK, reward, prompts, config, callback=3)


def test_kl_to_reference_runs_without_dropout_and_keeps_the_modes():
    from companion.effects import kl_to_reference

    torch.manual_seed(0)
    model = GPT(GPTConfig(TOK.vocab_size, 64, n_layer=1, n_head=1, d_model=16, dropout=0.5))
    model.train()
    prompts = make_prompts(WORLD, split="eval")[:6]
    assert kl_to_reference(model, model, TOK, prompts) == 0.0  # was -0.22: dropout's noise
    assert model.training


def test_the_rule_reward_refuses_two_prompts_that_read_alike_and_no_rules():
    stranger = Prompt("Who is Wanda?", "unknown", name="Wanda")
    greeting = Prompt("Who is Wanda?", "greeting")  # the same text: the reward would judge the
    with pytest.raises(ValueError, match="two prompts read the same"):  # reply by the last
        RuleReward(WORLD, TOK, [stranger, greeting])
    reward = RuleReward(WORLD, TOK, [stranger, stranger])  # the same prompt twice is fine
    _, scores = score_all(reward, stranger, [REFUSAL])
    assert scores == [1.0]
    with pytest.raises(ValueError, match="rules is empty"):  # was ZeroDivisionError
        RuleReward(WORLD, TOK, [stranger], rules={})
    ids, mask = pad_sequences([prompt_ids(stranger, TOK)], [[5, END_ID]], END_ID)
    with pytest.raises(ValueError, match="must both be"):
        reward(ids, mask[:, :-1])


def test_the_constant_reward_refuses_what_is_not_a_number():
    for bad in (True, "1", None, torch.tensor([1.0, 2.0])):
        with pytest.raises(ValueError, match="must be a finite number"):
            ConstantReward(bad)


def test_with_share_refuses_a_share_that_rounds_to_no_pair_and_rounds_exactly():
    from companion.preferences import Sample, with_share

    p, b = Prompt("Hello!", "greeting"), Sample((), "x", True)
    many = [Preference(p, Sample((), str(i), True), b, "r", False) for i in range(100)]
    few = lambda pair: int(pair.chosen.text) < 5  # noqa: E731
    with pytest.raises(ValueError, match="rounds to 0 pairs of the kind"):  # 1 was kept: 10×
        with_share(many, few, 0.001)
    with pytest.raises(ValueError, match="rounds to 0 other pairs"):
        with_share(many, lambda pair: int(pair.chosen.text) < 95, 0.999)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        with_share(many, few, "0.5")
    big = [Preference(p, Sample((), str(i), True), b, "r", False) for i in range(272)]
    kept = with_share(big, lambda pair: int(pair.chosen.text) < 100, 0.2)  # 0.2 × 172 / 0.8 = 43
    assert sum(int(q.chosen.text) < 100 for q in kept) == 43  # float arithmetic gave 42
    assert with_share(iter(many), few, 0.5) == with_share(many, few, 0.5)  # an iterator too


def test_made_up_names_and_demonstrations_take_only_an_int_seed():
    from companion.sft_data import demonstrations, made_up_names

    names = made_up_names(2000)
    assert len(set(names)) == 2000
    for bad in (0.0, "0", None, True):  # 0.0 drew other names than 0, silently
        with pytest.raises(ValueError, match=r"seed=.* must be an int"):
            made_up_names(3, seed=bad)
        with pytest.raises(ValueError, match=r"seed=.* must be an int"):
            demonstrations(WORLD, 1, 1, seed=bad)


# --- the rates of sampled replies, the rater's verdict, the stored controls ----------------------


def _stranger_and_fact():
    stranger = Prompt("Who is Wanda?", "unknown", name="Wanda")
    fact = next(p for p in make_prompts(WORLD, split="eval") if p.kind == "known")
    return stranger, fact


def test_sampled_rates_by_hand():
    from companion.effects import sampled_rates

    stranger, fact = _stranger_and_fact()
    right = fact.fact.reply  # names the subject and the right answer
    off_subject = f"{fact.fact.answer.capitalize()}."  # the right answer, the subject unnamed
    samples = [
        (stranger, written_sample(REFUSAL, TOK)),  # declines: tidy, in format
        (stranger, written_sample("Wanda is a baker.", TOK)),  # invents
        (fact, written_sample(right, TOK)),
        (fact, written_sample(off_subject, TOK)),  # not an answer to the question asked
        (fact, written_sample("I do not know that person.", TOK)),  # not right
        (HARMFUL, written_sample(DECLINE_HARMFUL, TOK)),
        (HARMFUL, written_sample("Bruno works as a potter.", TOK)),  # does not decline
        (HARMFUL, written_sample("I do not know that person.", TOK)),  # not a refusal to help
    ]
    rates = sampled_rates(WORLD, samples)
    assert rates["invents"] == 0.5 and rates["right"] == 1 / 3 and rates["follows"] == 1.0
    assert rates["declines_harm"] == 1 / 3
    for kind in ("unknown", "harmful", "known"):  # each kind is needed
        with pytest.raises(ValueError, match="all three"):
            sampled_rates(WORLD, [(p, s) for p, s in samples if p.kind != kind])


def test_the_raters_verdict_counts_wins_losses_and_ties_by_rule():
    from companion.effects import rater_verdict

    stranger, fact = _stranger_and_fact()
    refuse, invent = written_sample(REFUSAL, TOK), written_sample("Wanda is a baker.", TOK)
    a = [(stranger, refuse), (stranger, invent), (stranger, refuse)]
    b = [(stranger, invent), (stranger, refuse), (stranger, refuse)]
    verdict = rater_verdict(WORLD, a, b)
    assert verdict == {"wins": 1, "losses": 1, "ties": 1,
                       "by_rule": {"admits_not_knowing": [1, 1]}}  # fmt: skip
    assert rater_verdict(WORLD, b, a)["by_rule"] == {"admits_not_knowing": [1, 1]}
    with pytest.raises(ValueError, match="same prompts"):
        rater_verdict(WORLD, a, [(fact, refuse)] * 3)


def test_the_shipped_controls_hold_every_control_at_three_seeds():
    from companion.effects import EFFECTS
    from companion.rlhf import CONTROL_SEEDS, CONTROLS_COMMAND, shipped_controls

    stored = shipped_controls()
    assert stored["command"] == CONTROLS_COMMAND and CONTROL_SEEDS == (0, 1, 2)
    names = ("best_of_n", "null_reward", "rules_no_kl", "nll_only", "cai_matched", "cai_unique",
             "cai_thinned", "over_declining", "miscalibrated", "ppo_ptx", "ppo_ptx_chat",
             "refusal_offered")  # fmt: skip
    for name in names:
        assert [run["seed"] for run in stored[name]] == list(CONTROL_SEEDS), name
        for run in stored[name]:
            assert all(0 <= v <= 1 for v in run["sampled"].values()), name
            if name != "best_of_n":  # best-of-n trains nothing: sampled rates only
                assert all(0 <= run["effects"][k] <= 1 for k in EFFECTS), name
            v = run["verdict"]
            assert v["wins"] + v["losses"] + v["ties"] == stored["chat"]["effects"]["n_replies"]
    pairs = stored["pairs"]
    assert pairs["cai_matched"] <= pairs["cai_unique"] <= pairs["cai"]
    share = pairs["rater_declines"] / pairs["rater"]  # the matched set's, within one pair of it
    kept = pairs["cai_matched"]
    assert abs(pairs["cai_matched_declines"] - share * kept) < 1 + share
    for curve in stored["curves"].values():
        assert [p["iteration"] for p in curve] == [0, 10, 20, 30, 40, 50, 60]
        assert curve[0]["kl"] == 0.0  # the chat model itself


def test_the_controls_command_refuses_a_folder_and_someone_elses_file(tmp_path, capsys):
    from companion.rlhf import controls, main

    with pytest.raises(SystemExit):
        main(["controls", "--out", str(tmp_path)])
    assert "should end in .json" in capsys.readouterr().err
    theirs = tmp_path / "theirs.json"
    theirs.write_text('{"command": "python -m companion.rlhf band --out x.json"}')
    with pytest.raises(SystemExit):
        main(["controls", "--out", str(theirs)])  # the band's file is not the controls'
    assert "nothing was overwritten" in capsys.readouterr().err
    with pytest.raises(ValueError, match="distinct"):
        controls((0, 0))


# --- hostile inputs to the controls' measures ---------------------------------------------------


def _rated_pairs():
    stranger, fact = _stranger_and_fact()
    refuse, invent = written_sample(REFUSAL, TOK), written_sample("Wanda is a baker.", TOK)
    return [(stranger, refuse), (stranger, invent), (fact, refuse)], refuse, invent


def test_sampled_rates_reads_an_iterator_once_and_refuses_what_is_not_a_pair():
    from companion.effects import sampled_rates
    from companion.preferences import Sample

    pairs, _, invent = _rated_pairs()
    pairs.append((HARMFUL, invent))  # sampled_rates needs every kind of prompt it rates
    expected = sampled_rates(WORLD, pairs)
    prompts, replies = zip(*pairs, strict=True)
    assert sampled_rates(WORLD, iter(pairs)) == expected  # said "0 to fact questions"
    assert sampled_rates(WORLD, zip(prompts, replies, strict=True)) == expected
    stranger = pairs[0][0]
    for bad in (
        None,
        list(replies),  # the replies without their prompts
        [(p, s.text) for p, s in pairs],  # text, not a Sample
        [(s, p) for p, s in pairs],  # the wrong way round
        [(p, s, 1) for p, s in pairs],
        [*pairs, (stranger, Sample((), None, True))],
        [*pairs, (stranger, Sample((), "Hi.", "no"))],  # a str finished counted as True
    ):
        with pytest.raises(ValueError, match=r"\(Prompt, Sample\) pairs"):
            sampled_rates(WORLD, bad)
    for prompt in (Prompt("Who?", "knwon"), Prompt("Who?", "Known"), Prompt("Who?", "known")):
        with pytest.raises(ValueError, match="kind"):  # counted in follows and tone, silently,
            sampled_rates(WORLD, [*pairs, (prompt, invent)])  # or (no fact) AttributeError


def test_the_raters_verdict_reads_iterators_once_and_refuses_no_pairs():
    from companion.effects import rater_verdict

    pairs, refuse, invent = _rated_pairs()
    other = [(p, invent if s == refuse else refuse) for p, s in pairs]
    expected = rater_verdict(WORLD, pairs, other)
    assert expected["wins"] + expected["losses"] + expected["ties"] == 3
    assert rater_verdict(WORLD, iter(pairs), iter(other)) == expected  # was 0 wins, 0 losses
    assert rater_verdict(WORLD, iter(pairs), other) == expected  # was a zip() error
    with pytest.raises(ValueError, match="empty"):  # was 0 wins, 0 losses, 0 ties
        rater_verdict(WORLD, [], [])
    with pytest.raises(ValueError, match=r"\(Prompt, Sample\) pairs"):
        rater_verdict(WORLD, [s for _, s in pairs], [s for _, s in other])
    bogus = Prompt("Who?", "bogus")
    with pytest.raises(ValueError, match="kind"):  # was a tie
        rater_verdict(WORLD, [(bogus, refuse)], [(bogus, invent)])


def test_the_raters_verdict_refuses_rules_it_cannot_apply():
    from companion.effects import rater_verdict

    pairs, refuse, invent = _rated_pairs()
    other = [(p, invent if s == refuse else refuse) for p, s in pairs]
    for bad in ({}, {"x": 3}, list(RULES.values()), None, tuple(RULES.items())):
        with pytest.raises(ValueError, match="non-empty dict"):  # {}: every pair a tie
            rater_verdict(WORLD, pairs, other, rules=bad)
    for returned in (None, float("nan"), "yes"):  # a rule that forgot its return: all ties;
        with pytest.raises(ValueError, match="True or False"):  # NaN != NaN: all wins
            rater_verdict(WORLD, pairs, other, rules={"mine": lambda *_, r=returned: r})
    assert rater_verdict(WORLD, pairs, other, rules={"ints": lambda *_: 1}) == {
        "wins": 0, "losses": 0, "ties": 3, "by_rule": {}}  # fmt: skip


def test_the_noise_reward_refuses_ids_and_a_mask_of_other_shapes():
    ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool)
    for bad_ids, bad_mask in [(ids[0], mask[0]), (ids, mask[:1]), (ids, mask[:, :2])]:
        with pytest.raises(ValueError, match=r"must both be \(B, T\)"):  # gave T draws, or
            NoiseReward(0)(bad_ids, bad_mask)  # ignored the mask
    assert NoiseReward(0)(ids[:0], mask[:0]).shape == (0,)


def test_the_controls_and_the_band_refuse_seeds_before_they_train(monkeypatch):
    import numpy as np

    from companion import rlhf

    def training(*_):
        raise AssertionError("the seeds were accepted: training started")

    monkeypatch.setattr(rlhf, "collect_chapter_data", training)
    not_a_list = [(s for s in (1, 2)), iter([1, 2]), 3, {1, 2}, np.array([1, 2])]
    for run in (rlhf.controls, rlhf.seed_bands):
        for bad in not_a_list:  # a generator was read by the check: no len(), or no runs
            with pytest.raises(ValueError, match="must be a non-empty list of ints"):
                run(bad)
        for bad in ([2**32], [-1], [2**64]):  # 2**32 draws what 0 draws, -1 what 1 draws,
            with pytest.raises(ValueError, match=r"in \[0, 2\*\*32\)"):  # 2**64 failed late
                run(bad)
    a, b = (torch.rand(3, generator=torch.Generator().manual_seed(s)) for s in (0, 2**32))
    assert torch.equal(a, b)  # why: torch's CPU generator keeps 32 bits of a seed


def test_the_controls_command_checks_where_it_will_write_before_it_runs(
    tmp_path, monkeypatch, capsys
):
    from companion import rlhf

    ran = []
    monkeypatch.setattr(
        rlhf, "controls", lambda: ran.append(1) or {"command": rlhf.CONTROLS_COMMAND}
    )
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(SystemExit):
        rlhf.main(["controls", "--out", str(tmp_path / "folder.json")])
    assert "is a folder" in capsys.readouterr().err  # said "should end in .json"
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    (tmp_path / "dangling.json").symlink_to(tmp_path / "gone" / "x.json")
    for out in (tmp_path / "gone" / "x.json", notes / "x.json", tmp_path / "dangling.json"):
        with pytest.raises(SystemExit):  # the twelve minutes' results were lost at the end
            rlhf.main(["controls", "--out", str(out)])
        assert "not a folder it can write in" in capsys.readouterr().err
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SystemExit):  # was a RecursionError
        rlhf.main(["controls", "--out", str(deep)])
    assert "nothing was overwritten" in capsys.readouterr().err
    assert ran == [] and notes.read_text() == "mine" and deep.read_text()[:2] == "[["
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dangling.json", "deep.json", "folder.json", "notes.txt"]  # fmt: skip
    ours = tmp_path / "ours.json"
    rlhf.main(["controls", "--out", str(ours)])
    assert ran == [1] and rlhf._written_by(ours, rlhf.CONTROLS_COMMAND)
    assert rlhf._written_by(str(ours), rlhf.CONTROLS_COMMAND)  # a str path read as not ours
    with pytest.raises(SystemExit):
        rlhf.main(["band", "--out", str(ours)])  # the controls' file is not the band's
    assert "nothing was overwritten" in capsys.readouterr().err


def test_the_over_declining_rater_prefers_i_do_not_know_even_to_a_right_answer():
    from companion.rlhf import OVER_DECLINING

    _, fact = _stranger_and_fact()
    right = written_sample(fact.fact.reply, TOK)
    refuse = written_sample(REFUSAL, TOK)
    assert rate(WORLD, fact, right, refuse) == (0, "correct")  # the rater: the right answer
    assert rate(WORLD, fact, right, refuse, OVER_DECLINING) == (1, "declines")
    assert list(OVER_DECLINING)[1:] == list(RULES)  # the rater's rules, after its own
