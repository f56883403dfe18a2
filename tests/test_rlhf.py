"""RLHF: the rater's rules, Bradley–Terry, the reward model, PPO's pure functions and a bandit,
DPO's loss, the constitution's judge, and the shipped aligned models."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import companion.constitution
import companion.dpo
import companion.ppo
import companion.preferences
import companion.replies
import companion.reward_model
from companion.data import load_course_tokenizer
from companion.dpo import dpo_loss
from companion.ppo import clipped_objective, gae, kl_penalty, value_loss
from companion.preferences import (
    REFUSAL,
    STRANGERS,
    Preference,
    Prompt,
    Sample,
    label_pairs,
    make_prompts,
    rate,
)
from companion.replies import pad_sequences, sequence_logprob
from companion.reward_model import bradley_terry_loss, pair_tensors
from companion.world import PERSON_POOL, PET_NAMES, TOWN_POOL, build_world

TOK = load_course_tokenizer()
WORLD = build_world(0)


@pytest.mark.parametrize(
    "module",
    [companion.preferences, companion.replies, companion.reward_model, companion.ppo,
     companion.dpo],
)  # fmt: skip
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# --- preferences --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_strangers_are_disjoint_from_the_held_out_names_and_the_world(seed):
    world = build_world(seed)
    assert not set(STRANGERS) & set(world.held_out_names)  # chapter 7 keeps those
    every_name = {n for n, _ in PERSON_POOL} | set(TOWN_POOL) | set(PET_NAMES)
    assert not set(STRANGERS) & every_name
    asked = {
        p.name
        for split in ("train", "eval")
        for p in make_prompts(world, split=split)
        if p.kind == "unknown"
    }
    assert asked - {None} == set(STRANGERS)


def test_train_and_eval_prompts_share_no_question_and_no_stranger():
    train, test = make_prompts(WORLD, split="train"), make_prompts(WORLD, split="eval")
    known = {p.text for p in train if p.kind == "known"}
    assert not known & {p.text for p in test if p.kind == "known"}
    assert not {p.name for p in train if p.name} & {p.name for p in test if p.name}
    with pytest.raises(ValueError, match="'train' or 'eval'"):
        make_prompts(WORLD, split="test")


FACT = WORLD.facts[1]  # a person's job
KNOWN = Prompt(FACT.question, "known", fact=FACT)
STRANGER = Prompt("What is Wanda's job?", "unknown", name="Wanda")


def s(text, finished=True):
    return Sample((), text, finished)


@pytest.mark.parametrize(
    "prompt, better, worse, rule",
    [
        (KNOWN, s(FACT.reply), s(FACT.reply_with(WORLD.wrong_answers(FACT)[0])), "correct"),
        (KNOWN, s(FACT.reply), s(f"{FACT.answer} or {WORLD.wrong_answers(FACT)[0]}."), "correct"),
        (STRANGER, s(REFUSAL), s("Wanda works as a baker."), "admits_not_knowing"),
        (STRANGER, s(REFUSAL), s("Mira works as a baker."), "admits_not_knowing"),
        (KNOWN, s(FACT.reply), s(FACT.reply, finished=False), "stops"),
        (KNOWN, s(FACT.reply), s(FACT.reply + "\nQ: Where?"), "stops"),
        (KNOWN, s(FACT.reply), s(FACT.reply + "<|assistant|> Yes"), "stops"),
        (KNOWN, s(FACT.reply), s(FACT.reply[0].lower() + FACT.reply[1:]), "good_tone"),
        (KNOWN, s(FACT.reply), s(FACT.reply[:-1]), "good_tone"),
        (Prompt("Hello!", "greeting"), s("Hello! How can I help?"),
         s("Hello! " + "Hello " * 12 + "there."), "good_tone"),
    ],
)  # fmt: skip
def test_the_raters_rules_on_hand_written_replies(prompt, better, worse, rule):
    assert rate(WORLD, prompt, better, worse) == (0, rule)
    assert rate(WORLD, prompt, worse, better) == (1, rule)
    assert rate(WORLD, prompt, better, better) is None


def test_correctness_outranks_the_form_rules():
    wrong = s(FACT.reply_with(WORLD.wrong_answers(FACT)[0]))
    right_but_rambling = s(FACT.reply + "\nQ: What is her job?", finished=False)
    assert rate(WORLD, KNOWN, wrong, right_but_rambling) == (1, "correct")


def test_label_noise_flips_the_stated_share_of_labels():
    prompts = [KNOWN] * 4000
    right, wrong = s(FACT.reply), s(FACT.reply_with(WORLD.wrong_answers(FACT)[0]))
    candidates = [[right, wrong]] * 4000
    pairs = label_pairs(WORLD, prompts, candidates, noise=0.1, seed=0)
    flipped = sum(p.chosen is wrong for p in pairs)
    assert flipped == sum(p.flipped for p in pairs)
    # binomial(4000, 0.1): mean 400, sd 19; 5 sd either side fails about once in 3 million runs
    assert abs(flipped - 400) < 5 * math.sqrt(4000 * 0.1 * 0.9)
    assert not any(p.flipped for p in label_pairs(WORLD, prompts, candidates, noise=0.0))
    with pytest.raises(ValueError, match="noise"):
        label_pairs(WORLD, prompts, candidates, noise=0.5)


# --- tensors ------------------------------------------------------------------------------------


def test_pair_tensors_exactly():
    prompt = Prompt("Hi", "greeting")
    pair = Preference(
        prompt, Sample((10, 11), "ab", True), Sample((12,), "c", False), "stops", False
    )
    cid, cm, rid, rm = pair_tensors([pair], TOK)
    from companion.preferences import prompt_ids

    p = prompt_ids(prompt, TOK)
    end = TOK.special_tokens["<|end|>"]
    assert cid.tolist() == [[*p, 10, 11, end]] and rid.tolist() == [[*p, 12]]
    assert cm.tolist() == [[False] * len(p) + [True] * 3]
    assert rm.tolist() == [[False] * len(p) + [True]]  # unfinished: no <|end|> to train
    two = pair_tensors([pair, Preference(prompt, pair.rejected, pair.chosen, "stops", True)], TOK)
    assert two[2][1].tolist() == [*p, 10, 11, end] and two[0][1].tolist() == [*p, 12, end, end]
    assert two[1][1].tolist() == [False] * len(p) + [True, False, False]  # padding is not reply
    with pytest.raises(ValueError, match="empty"):
        pair_tensors([], TOK)


def test_sequence_logprob_sums_the_reply_tokens_only():
    from companion.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=9, context_length=8, n_layer=1, n_head=1, d_model=8)).eval()
    ids, mask = pad_sequences([[1, 2, 3], [4]], [[5, 6], [7]], pad_id=0)
    with torch.no_grad():
        got = sequence_logprob(model, ids, mask)
        by_hand = []
        for row, reply_start, n in ((ids[0], 3, 2), (ids[1], 1, 1)):
            logp = torch.log_softmax(model(row[None])[0][0], dim=-1)  # (T, V)
            by_hand.append(sum(logp[t - 1, row[t]] for t in range(reply_start, reply_start + n)))
    assert torch.allclose(got, torch.stack(by_hand), atol=1e-6)


# --- the reward model ---------------------------------------------------------------------------


def test_bradley_terry_on_a_hand_example():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    by_hand = (math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(ValueError, match="same length"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        bradley_terry_loss(torch.zeros(0), torch.zeros(0))


def test_a_reward_model_separates_separable_toy_preferences():
    """Chosen replies end in token 5, rejected ones in token 6: a tiny GPT learns it exactly."""
    from companion.model import GPT, GPTConfig
    from companion.reward_model import RewardModel

    torch.manual_seed(0)
    model = RewardModel(GPT(GPTConfig(vocab_size=8, context_length=8, n_layer=1, n_head=1,
                                      d_model=16)))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 5, (64, 3), generator=g).tolist()
    chosen = pad_sequences(prompts, [[1, 5]] * 64, 0)
    rejected = pad_sequences(prompts, [[1, 6]] * 64, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = bradley_terry_loss(model(*chosen), model(*rejected))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert (model(*chosen) > model(*rejected)).all()


# --- PPO ----------------------------------------------------------------------------------------


def test_gae_on_a_three_step_trajectory_by_hand():
    r, v = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 1.5]])
    gamma, lam = 0.9, 0.8
    d2 = 2.0 - 1.5  # last step: no next value
    d1 = 0.0 + gamma * 1.5 - 1.0
    d0 = 1.0 + gamma * 1.0 - 0.5
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    adv, ret = gae(r, v, torch.ones(1, 3, dtype=torch.bool), gamma=gamma, lam=lam)
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]]), atol=1e-6)
    assert torch.allclose(ret, adv + v)
    # a masked-out tail changes nothing before it
    r4, v4 = torch.cat([r, torch.tensor([[9.0]])], 1), torch.cat([v, torch.tensor([[9.0]])], 1)
    adv4, _ = gae(r4, v4, torch.tensor([[True, True, True, False]]), gamma=gamma, lam=lam)
    assert torch.allclose(adv4[:, :3], adv, atol=1e-6) and adv4[0, 3] == 0


@pytest.mark.parametrize(
    "ratio, advantage, expected, clipped",
    [
        (1.1, 1.0, -1.1, 0.0),  # inside the range: the plain ratio
        (0.9, -1.0, 0.9, 0.0),
        (1.5, 1.0, -1.2, 1.0),  # above 1 + ε with A > 0: capped at 1.2
        (0.5, -1.0, 0.8, 1.0),  # below 1 − ε with A < 0: capped at 0.8
        (0.5, 1.0, -0.5, 1.0),  # below with A > 0: the min keeps the worse, unclipped, 0.5
        (1.5, -1.0, 1.5, 1.0),  # above with A < 0: the min keeps −1.5
    ],
)
def test_the_clipped_objective_inside_and_outside_the_range(ratio, advantage, expected, clipped):
    logp = torch.log(torch.tensor([[ratio]]))
    loss, frac = clipped_objective(logp, torch.zeros(1, 1), torch.tensor([[advantage]]),
                                   torch.ones(1, 1, dtype=torch.bool), clip=0.2)  # fmt: skip
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert frac.item() == clipped


def test_the_clipped_objective_has_no_gradient_where_it_clips():
    logp = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    loss, _ = clipped_objective(logp, torch.zeros(1, 2), torch.ones(1, 2),
                                torch.ones(1, 2, dtype=torch.bool))  # fmt: skip
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] != 0


def test_the_kl_estimator_averages_to_the_kl_divergence():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    exact = (p * (p / q).log()).sum().item()
    g = torch.Generator().manual_seed(0)
    n = 200_000
    y = torch.multinomial(p, n, replacement=True, generator=g)
    estimate = kl_penalty(p.log()[y], q.log()[y])
    # the mean of n draws has standard error sd/√n; allow 5 of them
    se = estimate.std().item() / math.sqrt(n)
    assert abs(estimate.mean().item() - exact) < 5 * se
    assert kl_penalty(p.log(), p.log()).abs().max() == 0


def test_value_loss_is_half_the_masked_mean_squared_error():
    v, r = torch.tensor([[1.0, 2.0, 7.0]]), torch.tensor([[0.0, 4.0, 0.0]])
    assert value_loss(v, r, torch.tensor([[1, 1, 0]])).item() == pytest.approx((1 + 4) / 4)


def test_ppo_on_a_tiny_bandit_converges_to_the_best_arm():
    """Four arms paying 0.1, 0.5, 0.9, 0.3 (plus noise); one-step episodes, so GAE's advantage is
    the reward minus the value; the policy is four logits. PPO's pieces, nothing else."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    pay = torch.tensor([0.1, 0.5, 0.9, 0.3])
    logits = torch.zeros(4, requires_grad=True)
    value = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([logits, value], lr=0.05)
    for _ in range(150):
        with torch.no_grad():
            probs = torch.softmax(logits, 0)
            arms = torch.multinomial(probs, 64, replacement=True, generator=g)  # (B,)
            rewards = pay[arms] + 0.1 * torch.randn(64, generator=g)
            old_logp = probs.log()[arms][:, None]  # (B, 1)
            adv, ret = gae(
                rewards[:, None], value.expand(64, 1), torch.ones(64, 1, dtype=torch.bool)
            )
        for _ in range(4):
            logp = torch.log_softmax(logits, 0)[arms][:, None]
            mask = torch.ones(64, 1, dtype=torch.bool)
            pg, _ = clipped_objective(logp, old_logp, adv, mask)
            loss = pg + value_loss(value.expand(64, 1), ret, mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    probs = torch.softmax(logits, 0)
    assert probs.argmax().item() == 2 and probs[2] > 0.9
    assert abs(value.item() - 0.9) < 0.1


# --- DPO ----------------------------------------------------------------------------------------


def test_dpo_on_one_pair_by_hand():
    pc, pr, rc, rr = -4.0, -7.0, -5.0, -6.0
    beta = 0.1
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)  # 0.1, −0.1
    by_hand = -math.log(1 / (1 + math.exp(-(chosen - rejected))))
    loss, c, r = dpo_loss(*(torch.tensor([x]) for x in (pc, pr, rc, rr)), beta=beta)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert c.item() == pytest.approx(chosen, abs=1e-6) and r.item() == pytest.approx(
        rejected, abs=1e-6
    )


def test_dpo_loss_rejects_bad_input():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=-1.0)
    with pytest.raises(ValueError, match="shapes"):
        dpo_loss(x, torch.zeros(2), x, x, beta=0.1)
    with pytest.raises(ValueError, match="shapes"):
        dpo_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), 0.1)
    with pytest.raises(ValueError, match="empty"):
        e = torch.zeros(0)
        dpo_loss(e, e, e, e, beta=0.1)


def test_dpo_gradient_raises_the_chosen_and_lowers_the_rejected():
    pc, pr = torch.tensor([-4.0], requires_grad=True), torch.tensor([-4.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-4.0]), torch.tensor([-4.0]), beta=0.1)
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.05) and pr.grad.item() == pytest.approx(0.05)


# --- Constitutional AI --------------------------------------------------------------------------


def test_the_judge_reads_the_models_answers_and_the_corpus_not_the_world():
    from companion.constitution import Judge, critique, revise

    judge = Judge({KNOWN.text: "Said plainly."}, corpus_text=f"{FACT.subject} lives in Thornby.")
    assert judge.unknown_name(STRANGER) == "Wanda"
    assert judge.principles_broken(STRANGER, s("Wanda works as a baker.")) == ["honest"]
    assert revise(judge, STRANGER, s("Wanda works as a baker."), TOK).text == REFUSAL
    assert (
        judge.principles_broken(KNOWN, s("Said plainly.")) == []
    )  # agrees with the model, not the world
    assert "consistent" in judge.principles_broken(KNOWN, s(FACT.reply))
    assert critique(judge, KNOWN, s("Said plainly.")) == "The reply follows every principle."
    rambling = s("Said plainly.\nQ: more", finished=False)
    assert judge.principles_broken(KNOWN, rambling) == ["brief", "polite"]
    assert revise(judge, KNOWN, rambling, TOK).text == "Said plainly."  # the plain answer
    hello = Prompt("Hello!", "greeting")
    assert revise(judge, hello, s("Hello! How can I help?\nQ: Where?"), TOK).text == (
        "Hello! How can I help?"
    )  # no plain answer to fall back on: the first line


def test_agreement_counts_only_shared_pairs():
    from companion.constitution import agreement

    a, b, c = s("A."), s("B."), s("C.")
    rater = [Preference(KNOWN, a, b, "correct", False), Preference(KNOWN, a, c, "correct", False)]
    judge = [Preference(KNOWN, a, b, "consistent", False), Preference(KNOWN, c, a, "consistent", False),
             Preference(KNOWN, b, c, "polite", False), Preference(KNOWN, a, b, "revision", False)]  # fmt: skip
    assert agreement(judge, rater) == (0.5, 2)
    with pytest.raises(ValueError, match="share no pair"):
        agreement(judge[2:], rater)


# --- the shipped aligned models -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ppo", "dpo", "cai"])
def test_the_shipped_aligned_models_load_and_chat(kind):
    from companion.chat import as_messages, chat
    from companion.checkpoints import SHIPPED, load_shipped, shipped_info

    model, tokenizer = load_shipped(kind, "cpu")
    info = shipped_info(kind)
    assert info["model_config"] == shipped_info("chat")["model_config"]
    assert info["extra"]["command"] == SHIPPED[kind]
    assert chat(model, tokenizer, as_messages("Hello!")).finished
    with pytest.raises(ValueError, match="the shipped models are"):
        load_shipped("rlhf")


def test_the_shipped_seed_bands_hold_seeds_1_and_2_of_every_aligned_recipe():
    from companion.effects import EFFECTS
    from companion.rlhf import ALIGNED, BAND_COMMAND, BAND_SEEDS, shipped_seed_bands

    bands = shipped_seed_bands()
    assert bands["command"] == BAND_COMMAND and BAND_SEEDS == (1, 2)
    for kind in ALIGNED:
        assert [run["seed"] for run in bands[kind]] == list(BAND_SEEDS), kind
        for run in bands[kind]:
            assert set(EFFECTS) <= set(run["effects"]), kind
            assert all(0 <= run["effects"][k] <= 1 for k in EFFECTS), kind
            assert run["kl"] > -0.5, kind  # an unbiased estimate of a KL: near 0 at worst
            assert sum(run["verdict"][k] for k in ("wins", "losses", "ties")) == 486, kind


@pytest.mark.parametrize(
    ("seeds", "message"),
    [((), "non-empty"), ((1, 1.5), "ints"), ((True,), "ints"), ((0, 1), "other than 0"),
     ((1, 1), "distinct")],
)  # fmt: skip
def test_seed_bands_refuse_bad_seeds_before_any_training(seeds, message):
    from companion.rlhf import seed_bands

    with pytest.raises(ValueError, match=message):
        seed_bands(seeds)


def test_the_band_command_writes_one_json_file(tmp_path, capsys):
    from companion.rlhf import main

    with pytest.raises(SystemExit):
        main(["band", "--out", str(tmp_path)])  # a folder: refused before any training
    assert "should end in .json" in capsys.readouterr().err
    for text in ('{"notes": 1}', "[1, 2]", "not json"):  # someone else's file: left as it was
        mine = tmp_path / "mine.json"
        mine.write_text(text)
        with pytest.raises(SystemExit):
            main(["band", "--out", str(mine)])
        assert "nothing was overwritten" in capsys.readouterr().err
        assert mine.read_text() == text


# Tolerances for a rerun. The rates are counts over 486 sampled replies (follows, tone), 64 and
# 192 replies about strangers, 96 to harmful requests and 160 greedy answers. A rerun on another
# CPU rounds float sums differently; a sampled token whose probability sits at a boundary of the
# generator's draw, or a greedy tie, can then go the other way, and every later token of that
# reply with it, and every later PPO roll-out after the first changed update. So a rerun is held
# to the same story, not the same digits: 0.05 of a rate (24 of 486 replies, 8 of 160 answers)
# for the final models, and 0.03 of held-out accuracy (about 1 of 40 pairs) for the reward model.
RATE_TOLERANCE = 0.05
RM_TOLERANCE = 0.03
# PPO learns from its own samples, so a rerun that rounds one sum differently (another CPU, or
# another thread count here) follows another path for 60 iterations: in effect another training
# seed. The stored seed band (companion/assets/seed_bands.json: seeds 1 and 2, with the shipped
# seed 0) spans declines_harm 0.50-0.65, invents 0.44-0.75 and accuracy 0.88-0.90; the chat model
# declines 0.33 of the harmful requests and invents 0.88 at accuracy 0.92. So a PPO rerun is held
# to the chapter's story, each bound the band's edge with a margin: it declines clearly more
# harmful requests than the chat model, invents no more, and keeps most of its accuracy.
PPO_HARM_RISE = 0.1  # above the chat model's declines_harm by at least this (seen: 0.17-0.31)
PPO_ACCURACY_COST = 0.15  # at most this below the chat model's accuracy (seen: 0.02-0.04)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ppo", "dpo", "cai"])
def test_the_documented_command_reproduces_the_shipped_model(kind, tmp_path):
    """Slow on purpose (1-3 minutes each): rerun `python -m companion.rlhf KIND`."""
    from companion.checkpoints import load_shipped, shipped_info
    from companion.effects import EFFECTS, measure_effects
    from companion.rlhf import train_aligned_model

    figures = train_aligned_model(kind, tmp_path / kind)
    shipped = shipped_info(kind)["extra"]
    assert figures["pairs"] == shipped["pairs"]
    stable = ("follows", "tone") if kind == "ppo" else EFFECTS  # the band moves PPO's others
    for key in stable:
        assert abs(figures["effects"][key] - shipped["effects"][key]) <= RATE_TOLERANCE, key
    if kind == "ppo":
        chat = measure_effects(*load_shipped("chat", "cpu"), WORLD)
        for run in (figures, shipped):
            assert run["effects"]["declines_harm"] >= chat["declines_harm"] + PPO_HARM_RISE
            assert run["effects"]["invents"] <= chat["invents"]
            assert run["effects"]["accuracy"] >= chat["accuracy"] - PPO_ACCURACY_COST
        got, want = figures["reward_model_accuracy"], shipped["reward_model_accuracy"]
        assert abs(got - want) <= RM_TOLERANCE
        # The two failure runs are not shipped models: their figures support the notebook's
        # story, and where each ends depends on every rounding on the way (storing the weights
        # in another layout alone once moved the no-KL accuracy from 0.23 to 0.39). What
        # reproduces on any CPU is the story: without the leash the policy answers far fewer
        # facts right; with the miscalibrated reward model it does not collapse, and it gets no
        # more right than the chat model it started from (beyond RATE_TOLERANCE): a reward model
        # that cannot check facts teaches none. (Chapter 6 reads its cost against the three
        # seeds of the controls' "miscalibrated" run, not against one rerun.)
        for run in (figures, shipped):
            assert run["no_kl"]["effects"]["accuracy"] < run["effects"]["accuracy"] - 0.3
            miscalibrated = run["miscalibrated"]["effects"]["accuracy"]
            assert 0.25 < miscalibrated <= chat["accuracy"] + RATE_TOLERANCE


def test_ppo_rejects_a_batch_larger_than_the_prompts_and_a_negative_leash():
    from companion.model import GPT, GPTConfig
    from companion.ppo import PPOConfig, train_ppo

    tiny = GPT(GPTConfig(vocab_size=TOK.vocab_size, context_length=64, n_layer=1, n_head=1,
                         d_model=8))  # fmt: skip
    prompts = make_prompts(WORLD, split="train")[:4]
    with pytest.raises(ValueError, match="batch_size=32 must be between 1 and the 4 prompts"):
        train_ppo(tiny, TOK, None, prompts, PPOConfig(batch_size=32))
    with pytest.raises(ValueError, match="kl_coef"):
        train_ppo(tiny, TOK, None, prompts, PPOConfig(batch_size=2, kl_coef=-1.0))
    with pytest.raises(ValueError, match="prompts is empty"):
        train_ppo(tiny, TOK, None, [], PPOConfig())


def test_the_dpo_trainer_learns_toy_pairs_and_leaves_the_reference_alone():
    from companion.dpo import DPOConfig, train_dpo
    from companion.model import GPT, GPTConfig

    torch.manual_seed(0)
    reference = GPT(GPTConfig(vocab_size=TOK.vocab_size, context_length=64, n_layer=1, n_head=1,
                              d_model=16)).eval()  # fmt: skip
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    prompts = [Prompt(text, "greeting") for text in ("Hello!", "Goodbye!", "Hello! How are you?")]
    pairs = [Preference(p, Sample((10, 11), "a", True), Sample((12, 13), "b", True), "good_tone", False)
             for p in prompts]  # fmt: skip
    policy, log = train_dpo(reference, TOK, pairs, DPOConfig(steps=30, learning_rate=1e-2))
    assert log.loss[0] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference at step 0
    assert log.loss[-1] < 0.1 and log.accuracy[-1] == 1.0
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in before.items())
    cid, cm, rid, rm = pair_tensors(pairs, TOK)
    with torch.no_grad():
        assert (sequence_logprob(policy, cid, cm) > sequence_logprob(policy, rid, rm)).all()
    with pytest.raises(ValueError, match="empty"):
        train_dpo(reference, TOK, [], DPOConfig())


def test_measure_effects_rates_the_samples_it_is_given_as_if_it_drew_them():
    from companion.checkpoints import load_shipped
    from companion.effects import eval_samples, measure_effects

    chat_model, tokenizer = load_shipped("chat", "cpu")
    world = build_world(0)
    drawn = eval_samples(chat_model, tokenizer, world, n_samples=1, seed=7)
    given = measure_effects(chat_model, tokenizer, world, n_samples=1, seed=7, samples=drawn)
    assert given == measure_effects(chat_model, tokenizer, world, n_samples=1, seed=7)
    # Samples of other prompts, or of the wrong count, are refused rather than rated.
    for wrong in (drawn[1:], drawn[::-1], drawn * 2):
        with pytest.raises(ValueError, match="eval_samples"):
            measure_effects(chat_model, tokenizer, world, n_samples=1, samples=wrong)
    with pytest.raises(ValueError, match="n_samples"):
        eval_samples(chat_model, tokenizer, world, n_samples=0)
