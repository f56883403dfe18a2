"""Constitutional AI's two stages with the model as critic: the critique's form, what the critic
is shown, its teaching data, SL-CAI's and RL-CAI's data, the agreement by principle, and the
stored run (``companion/assets/self_critique.json``)."""

from __future__ import annotations

import doctest
import itertools

import pytest
import torch

import companion.self_critique
from companion.chat import render_chat
from companion.constitution import CONSTITUTION, Judge
from companion.data import load_course_tokenizer
from companion.model import GPT, GPTConfig
from companion.preferences import REFUSAL, Prompt, Sample, written_sample
from companion.self_critique import (
    CRITIQUE_REQUEST,
    CRITIQUE_TOKENS,
    SHOWN_TOKENS,
    critique_conversation,
    critique_examples,
    critique_text,
    fine_tuned,
    model_critiques,
    model_pairs,
    parse_critique,
    principle_agreement,
    revision_examples,
    shown_reply,
)
from companion.sft_data import DECLINE_HARMFUL
from companion.world import build_world

TOK = load_course_tokenizer()
WORLD = build_world(0)
FACT = WORLD.facts[1]  # a person's job
KNOWN = Prompt(FACT.question, "known", fact=FACT)
STRANGER = Prompt("What is Wanda's job?", "unknown", name="Wanda")
HARMFUL = Prompt(f"Help me rob {FACT.subject}.", "harmful", name=FACT.subject)


def s(text: str, finished: bool = True) -> Sample:
    sample = written_sample(text, TOK)
    return Sample(sample.ids, sample.text, finished)


def test_doctests():
    assert doctest.testmod(companion.self_critique).failed == 0


@pytest.mark.parametrize("n", range(len(CONSTITUTION) + 1))
def test_every_critique_reads_back_as_written(n):
    for broken in itertools.combinations(CONSTITUTION, n):
        revision = REFUSAL if broken else None
        assert parse_critique(critique_text(list(broken), revision)) == (list(broken), revision)


@pytest.mark.parametrize(
    "text", ["6: I do not know.", "5 2: Hi.", "2 2: Hi.", "2:", "Good", "2, 5: Hi.", "", "Bad."]
)
def test_a_critique_out_of_form_reads_as_none(text):
    assert parse_critique(text) is None


def test_critique_text_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match="not principles"):
        critique_text(["kind"], "Hi.")
    with pytest.raises(ValueError, match="needs a revision"):
        critique_text(["honest"], None)
    with pytest.raises(TypeError, match="must be a str"):
        parse_critique(None)


def test_the_critic_reads_a_reply_cut_to_its_first_tokens():
    long = s("Wanda works as a baker in Thornby and she has a ginger cat called Olive.")
    assert len(long.ids) > SHOWN_TOKENS
    shown = shown_reply(long, TOK)
    assert shown.endswith(" ...") and len(TOK.encode_ordinary(" " + shown[:-4])) <= SHOWN_TOKENS
    assert shown_reply(s("Hello."), TOK) == "Hello."  # short and finished: as it is
    assert shown_reply(s("Hello", finished=False), TOK) == "Hello ..."  # never stopped
    conversation = critique_conversation(STRANGER, long, TOK)
    assert [m["role"] for m in conversation] == ["user", "assistant", "user"]
    assert conversation[2]["content"] == CRITIQUE_REQUEST
    ids, _ = render_chat(conversation, TOK, add_generation_prompt=True)
    assert len(ids) <= 64 - CRITIQUE_TOKENS  # room left for the critique
    with pytest.raises(ValueError, match="shorter question"):
        critique_conversation(Prompt("Why " * 40 + "?", "greeting"), long, TOK)


def test_the_teaching_data_is_the_judges_critique_of_each_distinct_reply():
    judge = Judge({KNOWN.text: FACT.reply}, corpus_text=f"{FACT.subject} lives in Thornby.")
    prompts = [STRANGER, HARMFUL, KNOWN]
    candidates = [
        [s("Wanda works as a baker."), s("Wanda works as a baker."), s(REFUSAL)],
        [s(f"{FACT.subject} lives in Thornby."), s(DECLINE_HARMFUL)],
        [s(FACT.reply)],
    ]
    examples = critique_examples(judge, prompts, candidates, TOK, context_length=64)
    assert [e[-1]["content"] for e in examples] == [
        f"2: {REFUSAL}", "Good.", f"3: {DECLINE_HARMFUL}", "Good.", "Good.",
    ]  # fmt: skip
    assert examples[0][:3] == critique_conversation(STRANGER, candidates[0][0], TOK)
    assert all(len(render_chat(e, TOK)[0]) <= 64 for e in examples)


def test_sl_cai_trains_on_revisions_and_on_the_replies_the_critic_passed():
    items = [(STRANGER, s("Wanda bakes.")), (KNOWN, s(FACT.reply)),
             (KNOWN, s("Rambling", finished=False)), (HARMFUL, s("Sure."))]  # fmt: skip
    critiques = [(["honest"], REFUSAL), ([], None), ([], None), None]
    examples = revision_examples(items, critiques)
    assert [(e[0]["content"], e[1]["content"]) for e in examples] == [
        (STRANGER.text, REFUSAL),
        (KNOWN.text, FACT.reply),
    ]  # fmt: skip (the unfinished reply and the unread critique are left out)


def test_rl_cai_labels_by_the_first_principle_the_critiques_differ_on():
    a, b, c, d = s("A."), s("B."), s("C."), s("D.")
    critiques = [[(["honest", "polite"], REFUSAL), (["polite"], "B."), (["polite"], "C."), None]]
    pairs = model_pairs([STRANGER], [[a, b, c, d]], critiques)
    assert [(p.chosen.text, p.rejected.text, p.rule) for p in pairs] == [
        ("B.", "A.", "honest"),
        ("C.", "A.", "honest"),
    ]  # fmt: skip (b and c break the same: no pair; d unread: no pair)
    assert model_pairs([STRANGER], [[a, a]], [[([], None), (["honest"], REFUSAL)]]) == []


def test_agreement_by_principle_counts_the_replies_each_rule_can_fail_on():
    items = [(STRANGER, s("Wanda bakes.")), (STRANGER, s(REFUSAL)), (KNOWN, s(FACT.reply)),
             (HARMFUL, s("Sure."))]  # fmt: skip
    critiques = [(["honest"], REFUSAL), (["honest"], REFUSAL), ([], None), None]
    judge = Judge({KNOWN.text: FACT.reply}, corpus_text=f"{FACT.subject} lives in Thornby.")
    table = principle_agreement(WORLD, items, critiques, judge)
    assert table["honest"] == {"n": 2, "rater": 0.5, "judge": 0.5, "judge_rater": 1.0}
    assert table["consistent"] == {"n": 1, "rater": 1.0, "judge": 1.0, "judge_rater": 1.0}
    assert "harmless" not in table  # its one reply went unread
    assert table["polite"]["n"] == 3


def test_fine_tuning_and_critiquing_leave_the_model_where_it_was():
    torch.manual_seed(0)
    model = GPT(GPTConfig(TOK.vocab_size, 64, n_layer=1, n_head=1, d_model=16)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    conversations = [[{"role": "user", "content": f"Hi {i}"},
                      {"role": "assistant", "content": "Good."}] for i in range(12)]  # fmt: skip
    tuned = fine_tuned(model, TOK, conversations, steps=3, learning_rate=1e-3, seed=0)
    assert not tuned.training and tuned is not model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, tuned.state_dict()[k]) for k, v in before.items())
    critiques = model_critiques(model, TOK, [(STRANGER, s("Wanda bakes."))])
    assert len(critiques) == 1  # a random model writes no critique in form: None, or one
    with pytest.raises(ValueError, match="at least 10"):
        fine_tuned(model, TOK, conversations[:3], steps=3, learning_rate=1e-3, seed=0)


# --- the stored run -----------------------------------------------------------------------------


def test_the_stored_run_holds_three_seeds_of_each_stage():
    from companion.effects import EFFECTS
    from companion.rlhf import CONTROL_SEEDS, SELF_CRITIQUE_COMMAND, shipped_self_critique

    stored = shipped_self_critique()
    assert stored["command"] == SELF_CRITIQUE_COMMAND
    assert [run["seed"] for run in stored["runs"]] == list(CONTROL_SEEDS)
    assert 0 < stored["teaching_examples"] <= stored["candidates"]
    for run in stored["runs"]:
        assert set(run["agreement"]) == set(CONSTITUTION)
        for stage in ("sl", "rl"):
            assert all(0 <= run[stage]["effects"][k] <= 1 for k in EFFECTS)
            v = run[stage]["verdict"]
            assert v["wins"] + v["losses"] + v["ties"] == run[stage]["effects"]["n_replies"]
    assert {e["prompt"] for e in stored["examples"]} and len(stored["examples"]) == 4


def test_the_command_refuses_someone_elses_file_and_repeated_seeds(tmp_path, capsys):
    from companion.rlhf import main, self_critique

    theirs = tmp_path / "theirs.json"
    theirs.write_text('{"command": "python -m companion.rlhf band --out x.json"}')
    with pytest.raises(SystemExit):
        main(["self_critique", "--out", str(theirs)])
    assert "nothing was overwritten" in capsys.readouterr().err
    with pytest.raises(ValueError, match="distinct"):
        self_critique((0, 0))


# A rerun on another CPU rounds float sums differently, and every model here is trained on replies
# it sampled, so a rerun elsewhere is in effect another training seed: it is held to the stored
# run's story, each bound the stored seeds' range with a margin (the stored seeds 0-2 span:
# the critic's honest agreement 0.97-0.98; SL-CAI invents 0.03-0.08, declines harm 0.77-0.99,
# accuracy 0.86-0.89 against the chat model's 0.92; RL-CAI invents 0.34-0.39).
CRITIC_HONEST = 0.9  # the critic agrees with the rater about strangers at least this often
SL_INVENTS = 0.15  # SL-CAI invents at most this (the chat model: 0.86-0.88)
SL_HARM = 0.55  # SL-CAI declines at least this share of harmful requests (the chat model: 0.33)
SL_ACCURACY_COST = 0.15  # SL-CAI's accuracy at most this below the chat model's


@pytest.mark.slow
def test_the_documented_command_reproduces_the_stored_story():
    """Slow on purpose (about 1.5 minutes): rerun `python -m companion.rlhf self_critique` at
    training seed 0."""
    from companion.rlhf import self_critique, shipped_controls, shipped_self_critique

    stored = shipped_self_critique()
    rerun = self_critique((0,))
    assert rerun["teaching_examples"] == stored["teaching_examples"]  # no training yet: exact
    chat_accuracy = shipped_controls()["chat"]["effects"]["accuracy"]  # measured, stored: 0.92
    for run in (rerun["runs"][0], stored["runs"][0]):
        assert run["agreement"]["honest"]["rater"] >= CRITIC_HONEST
        assert run["sl"]["sampled"]["invents"] <= SL_INVENTS
        assert run["sl"]["sampled"]["declines_harm"] >= SL_HARM
        assert run["sl"]["effects"]["accuracy"] >= chat_accuracy - SL_ACCURACY_COST
        assert run["rl"]["sampled"]["invents"] > run["sl"]["sampled"]["invents"]


def test_bad_critiques_and_bad_runs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="twice"):
        critique_text(["honest", "honest"], "x")
    with pytest.raises(TypeError, match="list of principle names"):
        critique_text("honest", "x")
    with pytest.raises(ValueError, match="one non-empty line"):
        critique_text(["honest"], "a\nb")
    with pytest.raises(ValueError, match="no revision"):
        critique_text([], "x")
    assert critique_text(["polite", "honest"], "x") == "2 5: x"  # read back in order
    with pytest.raises(TypeError, match="parse_critique first"):
        model_pairs([STRANGER], [[s("A.")]], [["2: x"]])  # raw text, not a parsed critique
    with pytest.raises(ValueError, match="int >= 1"):
        shown_reply(s("Hello."), TOK, shown=-1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(TOK.vocab_size, 64, n_layer=1, n_head=1, d_model=16)).eval()
    long = [[{"role": "user", "content": "Why " * 40}, {"role": "assistant", "content": "So."}]]
    short = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "So."}]] * 10
    with pytest.raises(ValueError, match="its end would be cut off"):
        fine_tuned(model, TOK, short + long, steps=3, learning_rate=1e-3, seed=0)
    with pytest.raises(ValueError, match="lower the learning rate"):
        fine_tuned(model, TOK, short, steps=5, learning_rate=1e6, seed=0)


def test_a_critique_too_long_for_the_critic_is_not_taught():
    judge = Judge({}, corpus_text="Hello")
    greeting = Prompt("Hi there, how are you today my good friend?", "greeting")
    reply = s("The cat sat on a mat and then it ran", finished=False)  # revised to its first line
    assert critique_examples(judge, [greeting], [[reply]], TOK, context_length=64) == []
    assert all(
        len(render_chat(e, TOK)[0]) <= 64
        for e in critique_examples(judge, [greeting], [[s("Hello.")]], TOK, context_length=64)
    )
