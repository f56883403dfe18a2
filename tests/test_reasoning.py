"""Two-hop questions, the answer checker, group advantages, the GRPO loss and trainer."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import companion.reasoning
from companion.model import GPT, GPTConfig
from companion.reasoning import (
    GRPOConfig,
    TwoHop,
    check_answer,
    conversations,
    final_answer,
    group_advantages,
    grpo_loss,
    kl_k3,
    majority_baseline,
    split_people,
    train_grpo,
    two_hop_questions,
    where_wrong,
)
from companion.world import build_world

KOFI = TwoHop("Kofi", "river", "Pebbleton", "Dove", "Which river flows through ...?")


def test_docstring_examples():
    result = doctest.testmod(companion.reasoning)
    assert result.attempted > 0 and result.failed == 0


def test_questions_follow_the_world():
    world = build_world(0)
    questions = two_hop_questions(world.people)
    assert len(questions) == 2 * len(world.people)
    for q in questions:
        person = next(p for p in world.people if p.name == q.person)
        assert q.town == person.town.name
        assert q.answer == {"river": person.town.river, "goods": person.town.goods}[q.relation]
        assert q.person in q.question and q.town not in q.question  # the middle is never asked
        assert check_answer(q.trace, q.answer) == "right"
        assert check_answer(q.direct, q.answer) == "right"


def test_trace_and_conversations_by_hand():
    assert KOFI.trace == "Kofi lives in Pebbleton. Pebbleton lies on the river Dove. So: Dove."
    shop = TwoHop("Mira", "goods", "Thornby", "hats", "")
    assert shop.trace == "Mira lives in Thornby. The shop in Thornby sells hats. So: hats."
    direct, traced = conversations([KOFI], trace=False)[0], conversations([KOFI], trace=True)[0]
    assert direct[1] == {"role": "assistant", "content": "So: Dove."}
    assert traced[1]["content"] == KOFI.trace and traced[0]["content"] == KOFI.question


def test_split_is_by_person_disjoint_and_deterministic():
    world = build_world(0)
    train, held = split_people(world, n_held_out=8, seed=3)
    assert len(held) == 8 and len(train) == len(world.people) - 8
    assert not {p.name for p in train} & {p.name for p in held}
    assert set(train) | set(held) == set(world.people)
    assert split_people(world, n_held_out=8, seed=3) == (train, held)
    assert split_people(world, n_held_out=8, seed=4) != (train, held)
    train_q, held_q = two_hop_questions(train), two_hop_questions(held)
    assert not {q.person for q in train_q} & {q.person for q in held_q}


@pytest.mark.parametrize("n", [0, 24, 2.5, -1, True])  # True is an int, but not a count
def test_split_refuses_impossible_sizes(n):
    with pytest.raises(ValueError, match="n_held_out"):
        split_people(build_world(0), n_held_out=n)


def test_majority_baseline_by_hand():
    a, b = KOFI, TwoHop("B", "river", "X", "Elm", "")
    shop = TwoHop("C", "goods", "X", "hats", "")
    assert majority_baseline([a, a, b, shop], [a, b, shop, shop]) == {"river": 0.5, "goods": 1.0}
    with pytest.raises(ValueError, match="non-empty"):
        majority_baseline([], [a])


@pytest.mark.parametrize(
    ("reply", "finished", "outcome"),
    [
        ("Kofi lives in Pebbleton. Pebbleton lies on the river Dove. So: Dove.", True, "right"),
        ("So: Dove.", True, "right"),
        ("  So: Dove. ", True, "right"),
        ("Kofi lives in Pebbleton. So: Elm.", True, "wrong"),
        ("So: Doves.", True, "wrong"),
        ("So: Dove.", False, "malformed"),  # cut at the length limit
        ("Dove.", True, "malformed"),
        ("So: Dove. So", True, "malformed"),
        ("So: Dove", True, "malformed"),
        ("", True, "malformed"),
        ("ALSo: Dove.", True, "malformed"),  # "So" must be a word, not a word's end
        ("xSo: Dove.", True, "malformed"),
        ("Kofi lives in Pebbleton.So: Dove.", True, "right"),  # a full stop ends a word
    ],
)
def test_checker(reply, finished, outcome):
    assert check_answer(reply, "Dove", finished=finished) == outcome


def test_where_the_trace_went_wrong():
    assert final_answer("So: Dove.") == "Dove"
    first = "Kofi lives in Thornby. Thornby lies on the river Elm. So: Elm."
    second = "Kofi lives in Pebbleton. Pebbleton lies on the river Elm. So: Elm."
    assert where_wrong(first, KOFI) == "first hop"
    assert where_wrong(second, KOFI) == "second hop"
    assert where_wrong(KOFI.trace, KOFI) == "right"
    assert where_wrong("Pebbleton.", KOFI) == "format"


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
    with pytest.raises(ValueError, match="prompts is empty"):
        train_grpo(model, [], lambda i, r, f: 0.0, 3, config)


def test_sft_and_outcomes_run_through_the_chat_template():
    from companion.data import load_course_tokenizer
    from companion.reasoning import answer_outcomes, fine_tune_two_hop
    from companion.train_config import TrainConfig

    torch.set_num_threads(1)
    tok = load_course_tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(tok.vocab_size, context_length=64, n_layer=1, n_head=1, d_model=16))
    questions = two_hop_questions(build_world(0).people[:2])
    before = model.lm_head.weight.clone()
    config = TrainConfig(steps=2, batch_size=2, warmup_steps=1, eval_interval=2, eval_batches=1,
                         device="cpu")  # fmt: skip
    history = fine_tune_two_hop(model, tok, questions, config, trace=True)
    assert history.step == [2] and not torch.equal(before, model.lm_head.weight)
    outcomes = answer_outcomes(model.eval(), tok, questions, max_new_tokens=4)
    assert outcomes == ["format"] * len(questions)  # 4 tokens cannot hold "So: X." after a trace


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


def test_checker_refuses_what_it_cannot_score():
    with pytest.raises(TypeError, match="reply must be a str, got NoneType"):
        check_answer(None, "Dove")
    with pytest.raises(TypeError, match="answer must be a str, got int"):
        check_answer("So: Dove.", 5)
    with pytest.raises(TypeError, match="finished must be True or False"):
        check_answer("So: Dove.", "Dove", finished="False")  # a non-empty string is truthy
    for unreadable in ("New York", "Dove.", "", " Dove"):  # no answer line can carry these
        with pytest.raises(ValueError, match="cannot be read from an answer line"):
            check_answer(f"So: {unreadable}.", unreadable)
    with pytest.raises(TypeError, match="question must be a TwoHop"):
        where_wrong("So: Dove.", "Dove")


def test_two_hop_refuses_what_it_cannot_ask():
    with pytest.raises(ValueError, match="known ones are 'river', 'goods'"):
        TwoHop("Kofi", "job", "Pebbleton", "baker", "")
    with pytest.raises(TypeError, match=r"TwoHop\.person must be a str, got NoneType"):
        TwoHop(None, "river", "Pebbleton", "Dove", "")
    with pytest.raises(ValueError, match="cannot be read from an answer line"):
        TwoHop("Kofi", "river", "Pebbleton", "River Dove", "")
    world = build_world(0)
    with pytest.raises(TypeError, match="people must be Person objects, got a tuple"):
        two_hop_questions(split_people(world))  # both sides at once, not one of them
    with pytest.raises(TypeError, match="questions must hold TwoHop questions, got a Person"):
        conversations(world.people[:1], trace=True)


def test_split_refuses_a_seed_that_is_not_an_int():
    # str(1.0) != str(1): seed=1.0 would silently draw a split other than seed=1's
    for seed in (1.0, True, "1"):
        with pytest.raises(ValueError, match="seed must be an int"):
            split_people(build_world(0), seed=seed)


def test_majority_baseline_refuses_a_relation_train_never_asks():
    shop = TwoHop("C", "goods", "X", "hats", "")
    with pytest.raises(ValueError, match="test asks about 'goods' but train has no such question"):
        majority_baseline([KOFI], [KOFI, shop])
    with pytest.raises(TypeError, match="train must hold TwoHop questions, got a Person"):
        majority_baseline(build_world(0).people, [KOFI])


def test_grpo_refuses_more_questions_than_prompts():
    model = _toy_model()
    config = GRPOConfig(iterations=1, questions=4, group_size=2, max_new_tokens=1)
    with pytest.raises(ValueError, match=r"questions=4 but there are only 2 prompts"):
        train_grpo(model, [[0], [2]], _first_token_is_one, 3, config)
    for stop_id in (True, -1, 4):  # the toy vocabulary is 0..3
        with pytest.raises(ValueError, match="stop_id"):
            train_grpo(model, [[0], [2]], _first_token_is_one, stop_id, GRPOConfig(questions=2))
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
