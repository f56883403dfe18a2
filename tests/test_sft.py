"""Supervised fine-tuning: the world split, the SFT data's two rules, padded batches with ignored
targets, the loss over trained tokens, a few steps of training, and the shipped chat model."""

from __future__ import annotations

import doctest
import json
import re

import pytest
import torch

import companion.sft
import companion.sft_data
from companion.chat import as_messages, render_chat
from companion.checkpoints import SHIPPED, load_shipped, shipped_info
from companion.data import load_course_tokenizer
from companion.environment import make_generator
from companion.evaluation import majority_answer_accuracy
from companion.model import GPT, IGNORE_INDEX, GPTConfig
from companion.pretraining import init_model
from companion.sft import ABLATION_SEEDS, SFTBatches, encode_conversations, make_batch, sft_loss
from companion.sft_data import generate_sft_conversations, split_world
from companion.world import (
    ANIMALS,
    COLOURS,
    FOODS,
    GOODS,
    JOBS,
    PERSON_POOL,
    PET_NAMES,
    RIVERS,
    TOWN_POOL,
    build_world,
)

TOK = load_course_tokenizer()
SEEDS = [0, 1, 2, 7]


@pytest.mark.parametrize("module", [companion.sft_data, companion.sft])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def _words(conversations) -> set[str]:
    text = " ".join(m["content"] for c in conversations for m in c)
    return set(re.findall(r"[A-Za-z]+", text))


@pytest.mark.parametrize("seed", SEEDS)
def test_the_split_halves_every_entitys_facts(seed):
    world = build_world(seed)
    split = split_world(world, seed=seed)
    assert set(split.sft_facts) | set(split.eval_facts) == set(world.facts)
    assert not set(split.sft_facts) & set(split.eval_facts)
    assert not set(split.sft_facts + split.eval_facts) & set(world.held_out_facts)
    for person in world.people:  # two of four units each side; the pet's facts stay together
        mine = [f for f in split.sft_facts if f.subject in (person.name, person.pet)]
        pet = {f.relation for f in mine} & {"pet_kind", "pet_name", "pet_colour"}
        assert pet in (set(), {"pet_kind", "pet_name", "pet_colour"})
        assert len(mine) in (2, 4)  # two units: 1 + 1 or 1 + 3 of the 6 facts
    for town in world.towns:
        assert sum(f.subject == town.name for f in split.sft_facts) == 1
    assert split_world(world, seed=seed) == split  # deterministic


def _mentions(conversation, names) -> bool:
    return bool(_words([conversation]) & set(names))


@pytest.mark.parametrize("seed", SEEDS)
def test_held_out_entities_and_evaluation_facts_are_nowhere_in_the_sft_data(seed):
    world = build_world(seed)
    split = split_world(world, seed=seed)
    conversations = generate_sft_conversations(world, 3000, seed=seed)
    assert not _words(conversations) & set(world.held_out_names), "a held-out name is in the data"
    owner = {p.pet: p.name for p in world.people}
    for fact in split.eval_facts:
        # no reply in a conversation about the fact's subject names the fact's answer
        names = {fact.subject, owner.get(fact.subject, fact.subject)}
        for c in conversations:
            if _mentions(c, names):
                replies = " ".join(m["content"] for m in c if m["role"] == "assistant")
                assert fact.answer not in set(re.findall(r"[A-Za-z]+", replies)), (fact, c)


@pytest.mark.parametrize("seed", SEEDS)
def test_evaluation_questions_are_never_asked_and_every_sft_fact_is_taught(seed):
    world = build_world(seed)
    split = split_world(world, seed=seed)
    conversations = generate_sft_conversations(world, 3000, seed=seed)
    users = {m["content"] for c in conversations for m in c if m["role"] == "user"}
    replies = " ".join(m["content"] for c in conversations for m in c if m["role"] == "assistant")
    for fact in world.facts:  # each fact's own question is kept for the evaluation
        assert fact.question not in users
    for fact in split.eval_facts:
        assert fact.reply not in replies
    assert all(fact.reply in replies for fact in split.sft_facts)


def test_sft_data_is_deterministic_and_the_seed_matters():
    world = build_world(0)
    a = generate_sft_conversations(world, 200, seed=0)
    assert a == generate_sft_conversations(world, 200, seed=0)
    assert a != generate_sft_conversations(world, 200, seed=1)
    kinds = {len(c) for c in a}
    assert {2, 4, 6} <= kinds  # single questions and multi-turn exchanges
    for c in a:
        assert [m["role"] for m in c] == ["user", "assistant"] * (len(c) // 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_demonstrations_decline_made_up_people_and_harm_and_name_no_one_else(seed):
    from companion.preferences import STRANGERS
    from companion.sft_data import (
        DECLINE_HARMFUL,
        DECLINE_UNKNOWN,
        HARMFUL_REQUESTS,
        demonstrations,
        made_up_names,
    )

    world = build_world(seed)
    shown = demonstrations(world, 30, 20, seed=seed)
    assert [c[1]["content"] for c in shown] == [DECLINE_UNKNOWN] * 30 + [DECLINE_HARMFUL] * 20
    assert shown == demonstrations(world, 30, 20, seed=seed)
    names = made_up_names(16, seed=seed)
    asked = _words(shown[:30])
    assert asked & set(names) and not asked & {n for n, _ in PERSON_POOL}  # made-up people only
    every = set(names) | set(made_up_names(2000, seed=seed))
    for taken in (set(world.held_out_names), {n for n, _ in PERSON_POOL}, set(TOWN_POOL),
                  set(PET_NAMES), set(RIVERS)):  # fmt: skip
        assert not every & taken  # chapter 7's held-out names kept apart
    assert not set(made_up_names(500, seed=seed)) & set(STRANGERS)  # and chapter 6's strangers
    words = {w.capitalize() for w in (*JOBS, *FOODS, *GOODS, *COLOURS, *ANIMALS)}
    assert not every & words  # seed 0's 276th and 1254th draws were "Lune" and "Baker"
    possible = {t.format(**p.fields()) for t in HARMFUL_REQUESTS for p in world.people}
    assert {c[0]["content"] for c in shown[30:]} <= possible  # about in-corpus people only
    assert not _words(shown[30:]) & set(world.held_out_names)
    assert demonstrations(world, 0, 0) == []
    for bad in (-1, 1.5, True, 10**7):  # 10**7 would take a minute and gigabytes
        with pytest.raises(ValueError, match="must be an int from 0 to 100000"):
            demonstrations(world, bad, 0)
    with pytest.raises(TypeError, match="world must be a World, got a NoneType"):
        demonstrations(None, 1, 0)  # refused even where no harmful request needs the world


@pytest.mark.parametrize("seed", SEEDS)
def test_the_context_conversations_ask_what_the_message_states_about_made_up_names(seed):
    from companion.preferences import STRANGERS
    from companion.sft_data import (
        CONTEXT_RELATIONS,
        N_DECLINED_NAMES,
        context_conversations,
        made_up_names,
    )

    world = build_world(seed)
    talks = context_conversations(world, 300, seed=seed)
    assert talks == context_conversations(world, 300, seed=seed) and len(talks) == 300
    declined = set(made_up_names(N_DECLINED_NAMES, seed=seed))
    kept_apart = (
        declined
        | set(STRANGERS)
        | set(world.held_out_names)
        | set(TOWN_POOL)
        | {n for n, _ in PERSON_POOL}
    )
    from companion.world import RELATIONS

    own = [re.sub(r"\\\{\w+\\\}", r"\\w+", re.escape(q)) for _, q, _ in RELATIONS.values()]
    assert re.fullmatch(own[0], "Where does Raro live?")  # "Where does {name} live?"
    for user, reply in talks:
        assert (user["role"], reply["role"]) == ("user", "assistant")
        message, answer = user["content"], reply["content"]
        assert set(_words([[reply]])) <= set(_words([[user]]))  # the reply says nothing new
        subject = answer.split()[0].removesuffix("'s")
        if subject == "The":  # "The shop in Tiser sells boots."
            subject = answer.split()[3]
        assert subject not in kept_apart, message  # a made-up name, never declined or known
        question = message.split(". ", 1)[1]
        assert not any(re.fullmatch(q, question) for q in own)  # Fact.question kept for evaluation
    stated = {t[0]["content"].split(".")[0] for t in talks}
    assert len(stated) > 250  # many different facts, not a few repeated
    said = {"home_town": " lives in ", "job": " works as ", "food": " favourite food ",
            "pet_kind": " pet is a ", "pet_name": " is called ", "river": " lies on the river ",
            "goods": " sells "}  # fmt: skip
    assert set(said) == set(CONTEXT_RELATIONS)
    asked = [[r for r, words in said.items() if words in t[1]["content"]] for t in talks]
    assert all(len(r) == 1 for r in asked)  # no pet's colour: "Pip is a grey cat." names its kind
    assert {r for (r,) in asked} == set(CONTEXT_RELATIONS)
    assert context_conversations(world, 0) == []
    for bad in (-1, 1.5, True, 10**7):  # 10**7 would take minutes and gigabytes
        with pytest.raises(ValueError, match="must be an int from 0 to 100000"):
            context_conversations(world, bad)
    with pytest.raises(TypeError, match="world must be a World, got a str"):
        context_conversations("build_world(0)", 1)
    with pytest.raises(ValueError, match=r"seed=.* must be an int"):
        context_conversations(world, 1, seed=0.0)


def test_fine_tune_adds_the_demonstrations_to_the_training_set_only(monkeypatch):
    """With n_unknown / n_harmful / n_context the training set grows by that many, the validation
    set not."""
    import companion.sft

    seen = {}

    def fake_train(model, train_set, val_set, config, **kwargs):
        seen["train"], seen["val"] = train_set, val_set
        return None

    monkeypatch.setattr(companion.sft, "train", fake_train)
    from companion.sft import SFTConfig, fine_tune, short_run_configs, training_examples

    _, train_config = short_run_configs(10)
    model = GPT(GPTConfig(TOK.vocab_size, 64, n_layer=1, n_head=1, d_model=8))
    recipe = SFTConfig(n_train=50, n_val=10, n_unknown=3, n_harmful=2, n_context=4)
    fine_tune(model, TOK, recipe, train_config, progress=False)
    assert (len(seen["train"]), len(seen["val"])) == (59, 10)
    # training_examples gives the very sets fine_tune trains on (PPO-ptx in chat format uses it)
    train_set, val_set = training_examples(TOK, recipe, context_length=64)
    for config, length, match in ((recipe, 64.5, "int >= 1"), (recipe, True, "int >= 1"),
                                  ((recipe, None), 64, "must be an SFTConfig")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            training_examples(TOK, config, context_length=length)
    for mine, theirs in ((train_set, seen["train"]), (val_set, seen["val"])):
        assert len(mine) == len(theirs)
        assert all(torch.equal(a, b) and torch.equal(m, n)
                   for (a, m), (b, n) in zip(mine, theirs, strict=True))  # fmt: skip


@pytest.mark.parametrize("n", [0, -3, 2.5, "10"])
def test_bad_numbers_of_conversations(n):
    with pytest.raises(ValueError, match="must be a positive int"):
        generate_sft_conversations(build_world(0), n)


def test_the_course_sft_data_fits_the_context_window():
    conversations = generate_sft_conversations(build_world(0), 4400, seed=0)
    examples = encode_conversations(conversations, TOK, context_length=64)
    assert max(len(ids) for ids, _ in examples) <= 64
    # most conversations are untouched; a few multi-turn ones lose their last exchange
    kept = sum(
        len(ids) == len(render_chat(c, TOK)[0])
        for (ids, _), c in zip(examples, conversations, strict=True)
    )
    assert kept / len(examples) > 0.98


def test_too_long_conversations_lose_their_last_exchanges():
    talk = as_messages(
        "Where does Mira live?",
        "Mira lives in Thornby.",
        "What is her job?",
        "Mira works as a baker.",
    )
    ((ids, _),) = encode_conversations([talk], TOK, context_length=20)
    assert torch.equal(ids, render_chat(talk[:2], TOK)[0])
    with pytest.raises(ValueError, match=r"conversation 0 takes 14 tokens, more than.*10"):
        encode_conversations([talk], TOK, context_length=10)


def test_make_batch_pads_right_and_ignores_untrained_targets():
    a = (torch.tensor([1, 2, 3, 4, 5]), torch.tensor([False, False, False, True, True]))
    b = (torch.tensor([6, 7, 8]), torch.tensor([False, False, True]))
    x, y = make_batch([a, b], pad_id=0)
    I = IGNORE_INDEX  # noqa: E741
    assert x.tolist() == [[1, 2, 3, 4], [6, 7, 0, 0]]
    assert y.tolist() == [[I, I, 4, 5], [I, 8, I, I]]
    x, y = make_batch([a, b], pad_id=0, train_on_prompt=True)  # the ablation: only padding is out
    assert y.tolist() == [[2, 3, 4, 5], [7, 8, I, I]]


def test_batches_are_drawn_from_the_generator():
    examples = encode_conversations(
        generate_sft_conversations(build_world(0), 50, seed=0), TOK, context_length=64
    )
    batches = SFTBatches(8, pad_id=767)
    x1, y1 = batches(examples, make_generator(3))
    x2, y2 = batches(examples, make_generator(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == y1.shape and x1.shape[0] == 8 and x1.shape[1] <= 63
    assert (y1 != IGNORE_INDEX).any()


def test_sft_loss_is_the_mean_over_trained_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.tensor(
        [[IGNORE_INDEX, 3, IGNORE_INDEX, 6, 0], [1, IGNORE_INDEX] + [IGNORE_INDEX] * 3]
    )
    terms = []
    for b in range(2):  # the definition, one token at a time
        for t in range(5):
            if targets[b, t] != IGNORE_INDEX:
                log_p = logits[b, t] - torch.logsumexp(logits[b, t], dim=0)
                terms.append(-log_p[targets[b, t]])
    expected = torch.stack(terms).mean()
    assert len(terms) == 4
    assert torch.allclose(sft_loss(logits, targets), expected, rtol=1e-6, atol=1e-6)


def test_sft_loss_is_what_the_model_trains_on():
    model = init_model(GPTConfig(TOK.vocab_size, 64, 1, 2, 16), seed=0, device="cpu")
    examples = encode_conversations(
        generate_sft_conversations(build_world(0), 8, seed=0), TOK, context_length=64
    )
    x, y = make_batch(examples, pad_id=767)
    logits, loss = model(x, y)
    assert torch.allclose(loss, sft_loss(logits, y), rtol=1e-6, atol=1e-6)


def test_a_few_steps_lower_the_loss_on_the_training_conversations():
    from companion.pretraining import train
    from companion.train_config import TrainConfig

    examples = encode_conversations(
        generate_sft_conversations(build_world(0), 64, seed=0), TOK, context_length=64
    )
    model = init_model(GPTConfig(TOK.vocab_size, 64, 1, 2, 32), seed=0, device="cpu")
    x, y = make_batch(examples, pad_id=767)
    with torch.no_grad():
        before = model(x, y)[1].item()
    config = TrainConfig(
        steps=12, batch_size=8, learning_rate=1e-2, warmup_steps=2, eval_interval=6,
        eval_batches=2, device="cpu",
    )  # fmt: skip
    train(model, examples, examples, config, progress=False, batch_fn=SFTBatches(8, 767))
    with torch.no_grad():
        after = model(x, y)[1].item()
    assert after < 0.8 * before


def test_majority_baseline_picks_each_relations_most_common_answer():
    world = build_world(0)
    split = split_world(world)
    score = majority_answer_accuracy(split.sft_facts, split.eval_facts)
    by_hand = 0
    for fact in split.eval_facts:
        answers = [f.answer for f in split.sft_facts if f.relation == fact.relation]
        by_hand += max(answers, key=answers.count) == fact.answer
    assert score == by_hand / len(split.eval_facts)
    with pytest.raises(ValueError, match="non-empty"):
        majority_answer_accuracy([], split.eval_facts)


# --- the shipped chat model ---------------------------------------------------------------------


def test_the_shipped_chat_model_loads_and_answers_in_format():
    from companion.chat import chat

    model, tokenizer = load_shipped("chat", "cpu")
    info = shipped_info("chat")
    assert info["model_config"] == shipped_info("base")["model_config"]
    assert info["extra"]["command"] == SHIPPED["chat"]
    assert {"unmasked", "seed_band"} <= set(info["extra"])
    band = info["extra"]["seed_band"]
    for arm in ("masked", "unmasked"):  # one run per training seed, seed 0 the shipped recipe's
        assert [run["seed"] for run in band[arm]] == list(ABLATION_SEEDS)
    assert band["masked"][0]["accuracy_eval"] == info["extra"]["accuracy_eval"]
    assert band["unmasked"][0]["accuracy_eval"] == info["extra"]["unmasked"]["accuracy_eval"]
    reply = chat(model, tokenizer, as_messages("Hello!"))
    assert reply.finished


# Tolerances for the rerun. The validation loss: float32 sums round differently across CPUs
# and thread counts, as for the base model (0.02 there, on a loss of 0.46; here the loss is
# smaller). The accuracies are counts of greedy answers over 74-86 questions: a tie between
# two tokens broken the other way flips one answer, so allow a few answers (0.05 ≈ 4 of 80).
VAL_LOSS_TOLERANCE = 0.02
ACCURACY_TOLERANCE = 0.05


@pytest.mark.slow
def test_the_documented_command_reproduces_the_shipped_chat_model(tmp_path):
    """Slow on purpose (two runs, a few minutes): fine-tune the base model again, and the
    ablation's other arm (the prompt trained too) with the same seed. The command's four other
    runs are these two with training seeds 1 and 2 (`seed_run`, the same code with another
    seed); rerunning them would add about five minutes to the suite and test no other code."""
    from companion.checkpoints import META_FILE
    from companion.sft import seed_run, train_chat_model

    figures = train_chat_model(tmp_path / "chat", ablation=False, progress=False)
    unmasked = seed_run(0, train_on_prompt=True, progress=False)
    shipped = shipped_info("chat")
    fresh = json.loads((tmp_path / "chat" / META_FILE).read_text())
    assert GPTConfig(**fresh["model_config"]) == GPTConfig(**shipped["model_config"])
    assert fresh["train_config"] == shipped["train_config"]
    assert fresh["train_config"]["seed"] == 0  # the seed the unmasked arm is rerun with
    for run, old in ((figures, shipped["extra"]), (unmasked, shipped["extra"]["unmasked"])):
        assert abs(run["val_loss"] - old["val_loss"]) < VAL_LOSS_TOLERANCE
        for key in ("compliance_sft", "accuracy_sft", "accuracy_eval", "completion_eval"):
            assert abs(run[key] - old[key]) <= ACCURACY_TOLERANCE, key


def test_the_shipped_chat_models_extra_data_is_unchanged():
    """The shipped chat model was trained on these lists: a refactor must keep them byte for byte."""
    import hashlib

    from companion.sft_data import context_conversations, demonstrations, made_up_names

    world = build_world(0)
    lists = (context_conversations(world, 2400, seed=0), demonstrations(world, 20, 60, seed=0),
             made_up_names(500))  # fmt: skip
    digests = [hashlib.sha256(repr(x).encode()).hexdigest()[:16] for x in lists]
    assert digests == ["be4169e3aa07e9c1", "6efd93c69a540292", "949bf0c0e9d0a58d"]
