"""Two-hop questions, the answer checker, SFT on them, and the inference-time scaling measures."""

from __future__ import annotations

import doctest

import pytest
import torch

import companion.reasoning
from companion.model import GPT, GPTConfig
from companion.reasoning import (
    Sample,
    TwoHop,
    check_answer,
    co_statements,
    conversations,
    final_answer,
    majority_baseline,
    majority_vote,
    pass_at_k,
    sample_answers,
    scaling_table,
    split_people,
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


def test_co_statements_count_sentences_naming_both_as_words():
    corpus = "Kofi is by the Dove. Kofi, Dove! Dovetail and Kofi. Mira is by the Dove. Kofi? Dove"
    # sentences 1 and 2 name both; "Dovetail" is not "Dove"; the last two are separate sentences
    assert co_statements(corpus, [KOFI]) == [2]


def test_co_statements_on_the_course_corpus_find_the_composed_fact():
    from companion.corpus import generate_corpus

    world = build_world(0)
    questions = two_hop_questions(world.people[:3])
    counts = co_statements(generate_corpus(0), questions)
    assert len(counts) == len(questions) and all(c > 0 for c in counts)


def test_majority_vote_leaves_out_malformed_and_breaks_ties_by_first_seen():
    assert majority_vote(["Elm", "Dove", "Dove", "Elm"]) == "Elm"
    assert majority_vote([None, None, "Dove"]) == "Dove"
    assert majority_vote([None]) is None and majority_vote([]) is None


def test_pass_at_k_by_hand_and_against_counting_every_subset():
    from itertools import combinations

    # n = 5 replies, c = 2 right: pass@2 = 1 − C(3, 2)/C(5, 2) = 1 − 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    for n, c, k in [(5, 2, 3), (6, 1, 1), (6, 3, 4), (7, 0, 2), (4, 4, 2)]:
        right = [True] * c + [False] * (n - c)
        subsets = list(combinations(right, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(map(any, subsets)) / len(subsets))
    assert 0.0 <= pass_at_k(10_000, 3, 5_000) <= 1.0  # a product: no overflow


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(n, c, k)
    with pytest.raises(TypeError):
        pass_at_k(4.0, 1, 1)


def test_scaling_table_by_hand():
    other = TwoHop("Mira", "river", "Thornby", "Elm", "?")
    samples = [
        [Sample("Dove", 5), Sample("Elm", 7), Sample("Elm", 6), Sample(None, 32)],  # Kofi: Dove
        [Sample(None, 32), Sample("Elm", 6), Sample("Elm", 6), Sample("Elm", 6)],  # Mira: Elm
    ]
    one, two, four = scaling_table(samples, [KOFI, other], [1, 2, 4])
    assert one == {"k": 1, "majority_vote": 0.5, "best_of_k": 0.5,
                   "pass_at_k": pytest.approx((1 / 4 + 3 / 4) / 2), "tokens": (5 + 32) / 2}  # fmt: skip
    # k = 2: Kofi's vote is a tie Dove/Elm, first seen wins (Dove); Mira's first two give Elm
    assert two["majority_vote"] == 1.0 and two["best_of_k"] == 1.0
    # k = 4: Kofi's vote is Elm (2 to 1), wrong; best-of-4 finds Dove
    assert four["majority_vote"] == 0.5 and four["best_of_k"] == 1.0 and four["pass_at_k"] == 1.0
    assert four["tokens"] == (5 + 7 + 6 + 32 + 32 + 6 + 6 + 6) / 2
    with pytest.raises(ValueError, match="ks="):
        scaling_table(samples, [KOFI, other], [5])
    with pytest.raises(ValueError, match="one list of samples per question"):
        scaling_table(samples[:1], [KOFI, other], [1])


def test_sample_answers_read_the_answer_line_and_leave_the_model_alone():
    from companion.checkpoints import load_shipped

    model, tokenizer = load_shipped("reasoning", "cpu")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    questions = two_hop_questions(build_world(0).people[:2])
    samples = sample_answers(model, tokenizer, questions, 3, seed=0)
    assert [len(s) for s in samples] == [3] * len(questions)
    assert all(s.answer is None or isinstance(s.answer, str) for row in samples for s in row)
    assert all(1 <= s.tokens <= 33 for row in samples for s in row)
    assert model.training  # given back in the mode it came in
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = sample_answers(model, tokenizer, questions, 3, seed=0)
    assert again == samples  # the seed fixes the draws


def test_the_shipped_reasoning_model_answers_most_held_out_questions():
    from companion.checkpoints import SHIPPED, shipped_info

    info = shipped_info("reasoning")["extra"]
    assert info["command"] == SHIPPED["reasoning"]
    held = info["grpo_held_out"]
    short = info["short_held_out"]
    assert held.get("right", 0) > short.get("right", 0) + 6  # of 24 questions


# GRPO samples at temperature 1: one rounding that differs on another CPU can flip a sampled
# token, and every later roll-out with it, so a rerun is held to the story, not the digits: the
# held-out accuracy within 4 of the 24 questions of the shipped run's, and above the short model's.
RIGHT_TOLERANCE = 4


@pytest.mark.slow
def test_the_documented_command_reproduces_the_shipped_reasoning_model(tmp_path):
    """Slow on purpose (about 30 s on 2 cores): rerun `python -m companion.reasoning`."""
    from companion.checkpoints import shipped_info
    from companion.reasoning import train_reasoning_model

    figures = train_reasoning_model(tmp_path / "reasoning")
    shipped = shipped_info("reasoning")["extra"]
    short, short_shipped = figures["short_held_out"], shipped["short_held_out"]
    # the 20 SFT steps are deterministic, but another CPU rounds differently and a greedy
    # near-tie can flip: 2 of 24 questions
    assert abs(short.get("right", 0) - short_shipped.get("right", 0)) <= 2
    got, want = figures["grpo_held_out"].get("right", 0), shipped["grpo_held_out"].get("right", 0)
    assert abs(got - want) <= RIGHT_TOLERANCE
    assert got > figures["short_held_out"].get("right", 0) + 6


def test_sample_answers_leave_the_callers_weights_and_modes_alone():
    from companion.checkpoints import load_shipped

    model, tokenizer = load_shipped("reasoning", "cpu")
    model.train()
    model.blocks[0].eval()  # a mixed state, kept as it is
    pointers = [p.data_ptr() for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    sample_answers(model, tokenizer, two_hop_questions(build_world(0).people[:1]), 2)
    assert [p.data_ptr() for p in model.parameters()] == pointers  # the cache re-lays a copy
    assert [m.training for m in model.modules()] == modes
    assert all(t.is_contiguous() for t in model.state_dict().values())


def test_the_scaling_measures_refuse_what_they_cannot_score():
    row = [Sample("Dove", 5), Sample("Elm", 6)]
    with pytest.raises(TypeError, match=r"\[s.answer for s in row\]"):
        majority_vote(row)
    with pytest.raises(TypeError, match="list of answers"):
        majority_vote("Dove")
    with pytest.raises(ValueError, match="same number"):
        scaling_table([row, row[:1]], [KOFI, KOFI], [1])
    with pytest.raises(TypeError, match="list of sample counts"):
        scaling_table([row], [KOFI], (k for k in [1, 2]))
    with pytest.raises(TypeError, match="list or tuple of TwoHop"):
        scaling_table([row], KOFI, [1])
    with pytest.raises(ValueError, match="tokens"):
        Sample("Dove", -1)
    assert pass_at_k(10**9 + 1, 10**9, 1) == pytest.approx(1.0)  # min(c, k) factors: instant


def test_the_reasoning_model_command_checks_its_folder_before_training(tmp_path, monkeypatch):
    import companion.reasoning as reasoning

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the folder was checked")

    monkeypatch.setattr(reasoning, "load_shipped", no_training)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        reasoning.train_reasoning_model(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(TypeError, match="folder's path"):
        reasoning.train_reasoning_model(None)


def test_answers_after_a_first_hop_written_for_the_model():
    from companion.checkpoints import load_shipped
    from companion.reasoning import answers_after_first_hop

    model, tokenizer = load_shipped("reasoning", "cpu")
    pointers = [p.data_ptr() for p in model.parameters()]
    questions = two_hop_questions(split_people(build_world(0), seed=0)[1])
    said = answers_after_first_hop(model, tokenizer, questions, [q.town for q in questions])
    assert len(said) == len(questions) and all(a is None or isinstance(a, str) for a in said)
    # the true town written: most answers right (the shipped model answers 19 of 24 unaided)
    assert sum(a == q.answer for a, q in zip(said, questions, strict=True)) >= 16
    assert [p.data_ptr() for p in model.parameters()] == pointers
    with pytest.raises(ValueError, match="one town per question"):
        answers_after_first_hop(model, tokenizer, questions, ["Thornby"])
