"""The trainers of chapters 5 and 6 run on toys, with what they compute checked.

The pure pieces (GAE, the clipped objective, the Bradley–Terry and DPO losses, the SFT mask) have
hand tests of their own in test_rlhf.py and test_sft.py. These tests check the code that wires
them together: what PPO's roll-out hands to GAE and to the update, which reply each trainer is
told is preferred, which tokens SFT trains on, and which pairs Constitutional AI labels. Every
model is a tiny GPT (one layer, d_model 8 or 16) or a stub whose numbers are known by hand; each
test runs in a second or two on one CPU thread.

Tolerances: a float32 operation rounds to within 2⁻²⁴ of its result, so a value of size at most
4 built from a dozen operations is within about 10⁻⁵ of its exact (float64) value; tensors that
involve no rounding (masks, copied values, products with 0 and 1) are compared exactly.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import companion.ppo
import companion.sft
from companion.chat import END, special_ids
from companion.constitution import CONSTITUTION, Judge, ai_pairs, critique, make_judge
from companion.data import load_course_tokenizer
from companion.dpo import DPOConfig, train_dpo
from companion.model import GPT, IGNORE_INDEX, GPTConfig
from companion.ppo import PPOConfig, gae, train_ppo, value_loss
from companion.preferences import REFUSAL, Preference, Prompt, prompt_ids, written_sample
from companion.pretraining import init_model
from companion.replies import pad_sequences, sequence_logprob
from companion.reward_model import RewardConfig, pair_accuracy, train_reward_model
from companion.sft import SFTBatches, SFTConfig, fine_tune
from companion.train_config import TrainConfig
from companion.world import build_world

TOK = load_course_tokenizer()
WORLD = build_world(0)
END_ID = special_ids(TOK)[END]
LN2 = math.log(2)
ATOL = 1e-5  # see the module docstring


def tiny_gpt(d_model: int = 16, seed: int = 0) -> GPT:
    """A one-layer GPT over the course tokenizer (the chat template needs its special tokens)."""
    torch.manual_seed(seed)
    config = GPTConfig(TOK.vocab_size, 64, n_layer=1, n_head=1, d_model=d_model)
    return GPT(config).eval()


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


GREETINGS = [Prompt(t, "greeting") for t in ("Hello!", "Goodbye!", "Hello! How are you?")]


def toy_pairs() -> list[Preference]:
    """Three greetings; the chosen reply is always "ab", the rejected one "xy"."""
    chosen, rejected = written_sample("ab", TOK), written_sample("xy", TOK)
    return [Preference(p, chosen, rejected, "good_tone", False) for p in GREETINGS]


def reversed_pairs(pairs: list[Preference]) -> list[Preference]:
    return [Preference(p.prompt, p.rejected, p.chosen, p.rule, p.flipped) for p in pairs]


def by_hand(pairs: list[Preference]) -> tuple[torch.Tensor, ...]:
    """``(chosen_ids, chosen_mask, rejected_ids, rejected_mask)`` built without ``pair_tensors``:
    the prompt in the template, then the reply's ids and ``<|end|>``."""
    prompts = [prompt_ids(p.prompt, TOK) for p in pairs]
    chosen = pad_sequences(prompts, [[*p.chosen.ids, END_ID] for p in pairs], END_ID)
    rejected = pad_sequences(prompts, [[*p.rejected.ids, END_ID] for p in pairs], END_ID)
    return (*chosen, *rejected)


# --- PPO: the roll-out with stub models ---------------------------------------------------------

P = torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 8])  # the stub policy's next-token distribution
VALUES = torch.tensor([[0.5, 1.0, 1.5, 2.0, 2.5], [-1.0, -0.5, 0.25, 0.75, 3.0]])  # (B, T)


class StubPolicy(nn.Module):
    """Every position predicts ``P`` (so log π(token k) = log P[k]); the values are ``VALUES``."""

    def forward(self, ids):
        B, T = ids.shape
        return P.log().expand(B, T, 4), VALUES[:B, :T]  # (B, T, V), (B, T)


def stub_reference(ids):
    """Uniform over the 4 tokens: log π_ref = −ln 4 for every token."""
    return torch.zeros(*ids.shape, 4), None  # (B, T, V)


class StubRewardModel(nn.Module):
    """The score is half the sum of the reply's token ids."""

    def forward(self, ids, reply_mask):
        return (ids * reply_mask).sum(dim=1).float() / 2  # (B,)


def rollout_batch():
    """Two rows: prompt (1, 2) + reply (3, 0), padded with 0; prompt (3,) + reply (1, 2, 3, 1)."""
    return pad_sequences([[1, 2], [3]], [[3, 0], [1, 2, 3, 1]], pad_id=0)


class Spy:
    """Wraps a function, records each call's arguments and result, and returns the result."""

    def __init__(self, function):
        self.function, self.calls = function, []

    def __call__(self, *args, **kwargs):
        result = self.function(*args, **kwargs)
        self.calls.append((args, kwargs, result))
        return result


def test_the_rollout_rewards_values_and_advantages_by_hand(monkeypatch):
    """The rewards: −β·KL on every reply token, the score added on the last one; the values: the
    state before each reply token; the advantages: ``gae`` with the recipe's γ and λ, whitened."""
    config = PPOConfig(kl_coef=0.1, gamma=0.9, lam=0.5)
    spy = Spy(gae)
    monkeypatch.setattr(companion.ppo, "gae", spy)
    ids, mask = rollout_batch()
    old_logp, adv, returns, m, score, kl = companion.ppo._rollout_tensors(
        StubPolicy(), stub_reference, StubRewardModel(), ids, mask, config
    )
    # Position t predicts token t + 1; row 0 predicts 2, 3, 0, 0 (the last one padding), row 1
    # predicts 1, 2, 3, 1. The reply tokens are 3, 0 and 1, 2, 3, 1.
    assert m.tolist() == [[False, True, True, False], [True, True, True, True]]
    log_p = P.double().log()
    expected_logp = log_p[torch.tensor([[2, 3, 0, 0], [1, 2, 3, 1]])]
    assert torch.allclose(old_logp.double(), expected_logp, atol=ATOL, rtol=0)
    # KL per token: log P[k] − log ¼, so +ln 2 for token 0, 0 for token 1, −ln 2 for tokens 2, 3.
    assert torch.equal(score, torch.tensor([1.5, 3.5]))  # (3 + 0) / 2 and (1 + 2 + 3 + 1) / 2
    # Summed over each reply: row 0 −ln 2 + ln 2, row 1 0 − ln 2 − ln 2 + 0.
    want_kl = torch.tensor([0.0, -2 * LN2], dtype=torch.float64)
    assert torch.allclose(kl.double(), want_kl, atol=ATOL, rtol=0)
    beta = config.kl_coef
    rewards = torch.tensor(
        [[0.0, beta * LN2, -beta * LN2 + 1.5, 0.0], [0.0, beta * LN2, beta * LN2, 0.0 + 3.5]],
        dtype=torch.float64,
    )  # −β·KL on reply tokens only, the score on each row's last reply token
    values = torch.tensor([[0.0, 1.0, 1.5, 0.0], [-1.0, -0.5, 0.25, 0.75]])  # VALUES[:, :-1] · m
    ((args, kwargs, _),) = spy.calls
    assert torch.allclose(args[0].double(), rewards, atol=ATOL, rtol=0)
    assert torch.equal(args[1], values) and torch.equal(args[2], m)
    assert kwargs == {"gamma": 0.9, "lam": 0.5}
    want_adv, want_returns = gae(rewards, values.double(), m, gamma=0.9, lam=0.5)
    assert torch.allclose(returns.double(), want_returns, atol=ATOL, rtol=0)
    flat = want_adv[m]  # the 6 reply tokens' advantages, whitened over the batch
    whitened = (want_adv - flat.mean()) / flat.std() * m
    assert torch.allclose(adv.double(), whitened, atol=ATOL, rtol=0)
    assert adv[m].mean().abs() < ATOL and (adv[~m] == 0).all()


# --- PPO: the whole loop on a tiny GPT ----------------------------------------------------------


class LengthReward(nn.Module):
    """A stub reward model: a tenth of the reply's length; records what it was asked."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, ids, reply_mask):
        score = reply_mask.sum(dim=1).float() / 10  # (B,)
        self.calls.append((ids, reply_mask, score))
        return score


def test_train_ppo_hands_gae_and_the_update_what_the_rollout_computed(monkeypatch):
    """Two iterations of one minibatch: the update's advantages are the roll-out's, the logged
    value loss is the roll-out's values against GAE's returns, the leash reads the chat model."""
    gae_spy, rollout_spy = Spy(gae), Spy(companion.ppo._rollout_tensors)
    objective_spy = Spy(companion.ppo.clipped_objective)
    monkeypatch.setattr(companion.ppo, "gae", gae_spy)
    monkeypatch.setattr(companion.ppo, "_rollout_tensors", rollout_spy)
    monkeypatch.setattr(companion.ppo, "clipped_objective", objective_spy)
    chat, reward_model = tiny_gpt(d_model=8), LengthReward()
    before = copy.deepcopy(chat)
    config = PPOConfig(
        iterations=2, batch_size=3, epochs=1, minibatch_size=3, learning_rate=0.05,
        kl_coef=0.2, gamma=0.9, lam=0.6, max_new_tokens=4,
    )  # fmt: skip
    tuned, log = train_ppo(chat, TOK, reward_model, GREETINGS, config)
    assert same_weights(chat, before) and not same_weights(tuned, before)
    assert len(gae_spy.calls) == len(rollout_spy.calls) == len(objective_spy.calls) == 2
    for it in range(2):
        g_args, g_kwargs, (_, g_returns) = gae_spy.calls[it]
        assert g_kwargs == {"gamma": 0.9, "lam": 0.6}
        old_logp, adv, returns, m, score, _ = rollout_spy.calls[it][2]
        ids, reply_mask, scored = reward_model.calls[it]
        assert torch.equal(m, reply_mask[:, 1:]) and torch.equal(score, scored)
        assert log.reward[it] == pytest.approx(score.mean().item(), abs=1e-7)
        for row, mask_row in zip(ids.tolist(), reply_mask.tolist(), strict=True):
            start = mask_row.index(True)  # the reply follows one of the prompts in the template
            assert row[:start] in [prompt_ids(p, TOK) for p in GREETINGS]
        # The update sees the roll-out's rows in the order its generator drew: find each row.
        (_, mb_old_logp, mb_adv, mb_mask), _, _ = objective_spy.calls[it]
        order = [next(r for r in range(3) if torch.equal(old_logp[r], row)) for row in mb_old_logp]
        assert sorted(order) == [0, 1, 2]
        assert torch.equal(mb_adv, adv[order]) and torch.equal(mb_mask, m[order])
        # One minibatch per iteration: the value head is still the roll-out's when its loss is
        # logged, so the log is ½ mean (V − R)² of the roll-out's values against GAE's returns.
        values = g_args[1]
        assert torch.equal(returns, g_returns)
        want = value_loss(values, g_returns, m).item()
        assert log.value_loss[it] == pytest.approx(want, rel=1e-5)
    assert gae_spy.calls[0][0][1].abs().max() == 0  # the value head starts at zero ...
    assert gae_spy.calls[1][0][1].abs().max() > 0.05  # ... and one update moves it
    # The policy starts as the chat model, so the first roll-out's KL is exactly 0; after one
    # update it is not (the reference stayed behind).
    assert log.kl[0] == 0.0 and abs(log.kl[1]) > 1e-4


# --- the reward model's trainer -----------------------------------------------------------------


def test_the_reward_trainer_learns_which_reply_is_chosen():
    pairs, chat = toy_pairs(), tiny_gpt()
    before = copy.deepcopy(chat)
    config = RewardConfig(steps=25, batch_size=4, learning_rate=1e-2)
    model, history = train_reward_model(chat, TOK, pairs, config)
    assert same_weights(chat, before)
    assert history.loss[0] == pytest.approx(LN2, abs=1e-6)  # the head starts at 0: σ(0) = ½
    assert history.loss[-1] < 0.1 * history.loss[0] and history.accuracy[-1] == 1.0
    assert pair_accuracy(model, pairs, TOK) == 1.0
    cid, cm, rid, rm = by_hand(pairs)
    with torch.no_grad():
        assert (model(cid, cm) > model(rid, rm)).all()  # the chosen reply, read by hand
    # The same pairs read the other way round teach the opposite order.
    flipped, _ = train_reward_model(chat, TOK, reversed_pairs(pairs), config)
    assert pair_accuracy(flipped, pairs, TOK) == 0.0
    with torch.no_grad():
        assert (flipped(cid, cm) < flipped(rid, rm)).all()


# --- DPO's trainer ------------------------------------------------------------------------------


def log_ratio_margin(policy, reference, pairs) -> torch.Tensor:
    """``(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))`` per pair (B,)."""
    cid, cm, rid, rm = by_hand(pairs)
    with torch.no_grad():
        chosen = sequence_logprob(policy, cid, cm) - sequence_logprob(reference, cid, cm)
        rejected = sequence_logprob(policy, rid, rm) - sequence_logprob(reference, rid, rm)
    return chosen - rejected


def test_the_dpo_trainer_raises_the_chosen_reply_over_the_rejected():
    pairs, reference = toy_pairs(), tiny_gpt()
    before = copy.deepcopy(reference)
    config = DPOConfig(steps=20, batch_size=4, learning_rate=1e-2)
    policy, log = train_dpo(reference, TOK, pairs, config)
    assert same_weights(reference, before)  # the reference is never trained
    assert log.margin[0] == 0.0 and log.loss[0] == pytest.approx(LN2, abs=1e-6)
    assert log.loss[-1] < 0.5 * log.loss[0] and log.accuracy[-1] == 1.0
    margin = log_ratio_margin(policy, reference, pairs)
    assert (margin > 1.0).all()
    flipped, _ = train_dpo(reference, TOK, reversed_pairs(pairs), config)
    assert (log_ratio_margin(flipped, reference, pairs) < -1.0).all()


def test_dpo_with_an_nll_term_pulls_the_chosen_reply_up():
    """RPO's term (``nll_weight``) raises the chosen replies' own log-probability."""
    pairs, reference = toy_pairs(), tiny_gpt()
    cid, cm, _, _ = by_hand(pairs)
    chosen_logp = {}
    for weight in (0.0, 1.0):
        config = DPOConfig(steps=20, batch_size=4, learning_rate=1e-2, nll_weight=weight)
        policy, _ = train_dpo(reference, TOK, pairs, config)
        with torch.no_grad():
            chosen_logp[weight] = sequence_logprob(policy, cid, cm)
    with torch.no_grad():
        start = sequence_logprob(reference, cid, cm)
    assert (chosen_logp[1.0] > chosen_logp[0.0] + 0.5).all() and (chosen_logp[1.0] > start).all()


# --- the SFT trainer ----------------------------------------------------------------------------


def masked_loss(model, examples) -> float:
    """Mean −log p over the reply tokens (``loss_mask``) of ``examples``, one row at a time."""
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, loss_mask in examples:
            logp = torch.log_softmax(model(ids[None, :-1])[0][0].double(), dim=-1)  # (T-1, V)
            for t in range(1, len(ids)):
                if loss_mask[t]:
                    total, n = total - logp[t - 1, ids[t]].item(), n + 1
    return total / n


def example_of(x_row, examples):
    """The example whose input ``ids[:-1]`` starts ``x_row`` (the longest, if several do)."""
    fits = [e for e in examples if torch.equal(x_row[: len(e[0]) - 1], e[0][:-1])]
    return max(fits, key=lambda e: len(e[0]))


def test_the_sft_trainer_trains_on_reply_tokens_only(monkeypatch):
    """Every batch ``fine_tune`` draws has targets exactly at the reply tokens, the loss it logs
    is their mean −log p, and that loss falls."""
    batches = []

    class RecordingBatches(SFTBatches):
        def __call__(self, examples, generator):
            x, y = super().__call__(examples, generator)
            batches.append((examples, x, y))
            return x, y

    monkeypatch.setattr(companion.sft, "SFTBatches", RecordingBatches)
    model = init_model(GPTConfig(TOK.vocab_size, 64, 1, 1, 16), seed=0, device="cpu")
    start = copy.deepcopy(model)
    sft_config = SFTConfig(n_train=24, n_val=8)
    train_config = TrainConfig(
        steps=12, batch_size=6, context_length=64, learning_rate=1e-2, warmup_steps=2,
        eval_interval=1, eval_batches=1, device="cpu",
    )  # fmt: skip
    history = fine_tune(model, TOK, sft_config, train_config, progress=False)
    train_batches = [(e, x, y) for e, x, y in batches if len(e) == sft_config.n_train]
    assert len(train_batches) == train_config.steps
    for examples, x, y in batches:  # training and validation batches alike
        for xb, yb in zip(x, y, strict=True):
            ids, loss_mask = example_of(xb, examples)
            n = len(ids) - 1
            want = torch.where(loss_mask[1:], ids[1:], IGNORE_INDEX)  # (n,)
            assert torch.equal(yb[:n], want) and (yb[n:] == IGNORE_INDEX).all()
    # The first step's logged loss is the start model's mean −log p over that batch's replies.
    examples, x, _ = train_batches[0]
    first = [example_of(xb, examples) for xb in x]
    assert history.train_loss[0] == pytest.approx(masked_loss(start, first), rel=1e-5)
    assert history.val_loss[-1] < 0.9 * history.val_loss[0]
    assert masked_loss(model, examples) < 0.9 * masked_loss(start, examples)


# --- Constitutional AI's stages -----------------------------------------------------------------

FACT = WORLD.facts[1]  # a person's job
KNOWN = Prompt(FACT.question, "known", fact=FACT)
STRANGER = Prompt("What is Wanda's job?", "unknown", name="Wanda")


def test_the_ai_labelled_pairs_prefer_the_reply_that_follows_the_constitution():
    """A hand example: the judge's pairs over two candidates per prompt, then a (revision ≻
    original) pair for each candidate it revised."""
    plain = FACT.reply_with(WORLD.wrong_answers(FACT)[0])  # what the model says: wrong, but its own
    judge = Judge({KNOWN.text: plain}, corpus_text=f"{FACT.subject} lives in Thornby.")
    answer, rambling = written_sample(plain, TOK), written_sample(plain + "\nQ: more", TOK)
    invented = written_sample("Wanda works as a baker.", TOK)
    refused = written_sample(REFUSAL, TOK)
    pairs = ai_pairs(judge, WORLD, [KNOWN, STRANGER], [[rambling, answer], [invented, refused]],
                     TOK)  # fmt: skip
    got = [(p.prompt, p.chosen.text, p.rejected.text, p.rule, p.flipped) for p in pairs]
    assert got == [
        (KNOWN, answer.text, rambling.text, "brief", False),  # one line, then it stops
        (STRANGER, refused.text, invented.text, "honest", False),  # Wanda is not in the corpus
        (KNOWN, plain, rambling.text, "revision", False),  # the rambling reply, revised
        (STRANGER, REFUSAL, invented.text, "revision", False),
    ]
    assert pairs[2].chosen.ids == answer.ids  # the revision is encoded as the template would
    assert critique(judge, STRANGER, invented) == f"It breaks '{CONSTITUTION['honest']}'"
    assert critique(judge, KNOWN, answer) == "The reply follows every principle."


def test_the_judge_reads_the_chat_models_greedy_answers():
    from companion.chat import chat_many

    chat = tiny_gpt(d_model=8)
    known = [Prompt(f.question, "known", fact=f) for f in WORLD.facts[:2]]
    judge = make_judge(chat, TOK, [*known, STRANGER])
    replies = chat_many(chat, TOK, [[{"role": "user", "content": p.text}] for p in known])
    assert judge.greedy_answers == {p.text: str(r) for p, r in zip(known, replies, strict=True)}
    assert judge.unknown_name(STRANGER) == "Wanda" and judge.unknown_name(known[0]) is None
