"""Constitutional AI's two stages with the course model as its own critic: SL-CAI and RL-CAI.

Taught in ``06_rlhf.ipynb`` (section 9). In Bai et al. 2022 the *model* critiques its own
replies against written principles and revises them; it is fine-tuned on the revisions
(SL-CAI); then the model labels pairs of its own replies, and those labels train a preference
model for reinforcement learning (RL-CAI; here DPO, which needs neither). Here:

1. **Teaching the critic.** A model of a million parameters cannot read a principle and apply
   it, so it is taught by example: the chat model is fine-tuned on critiques written by the
   rule-based judge (:class:`companion.constitution.Judge`) of the chat model's own replies to
   the training prompts. A critique is a third turn of the conversation, asked with
   :data:`CRITIQUE_REQUEST` and answered with the numbers of the principles broken and the
   revision, ``"2 5: I do not know that person."``, or ``"Good."``
   (:func:`critique_text`; numbers, because the course tokenizer spells "harmless" in six
   tokens and a whole conversation must fit the model's 64 tokens). The critic is then a model: it
   critiques replies it never saw, to prompts it never saw, by what it learnt, and it can be
   wrong where the judge is right (or the other way round).
2. **SL-CAI.** The chat model samples fresh replies to the training prompts; the critic
   critiques and revises each (:func:`model_critiques`); the chat model is fine-tuned on the
   revisions, and on the replies the critic passed as they are (:func:`revision_examples`).
3. **RL-CAI.** The critic's critiques of those same fresh replies, read as labels: of two
   replies to a prompt, the one breaking the first principle the two critiques differ on loses
   (:func:`model_pairs`); DPO from the SL-CAI model on those labels (the chapter's DPO recipe,
   with its NLL term). Bai et al. label pairs sampled from the SL-CAI model; ours writes
   near-copies, too few pairs to learn from.

What stays rule-based: the critic's teacher (the judge's critiques and revisions), and the
rater that measures the result. :func:`principle_agreement` reports how often the critic agrees
with the rater, principle by principle, on the evaluation prompts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from companion.chat import END, chat_many, render_chat, special_ids
from companion.constitution import CONSTITUTION, Judge, revise
from companion.preferences import RULES, Preference, Prompt, Sample
from companion.world import World

CRITIQUE_REQUEST = "Check."  # the third turn: the user asks for the critique
SHOWN_TOKENS = 14  # a reply is shown to the critic cut to this many tokens, then " ..."
CRITIQUE_TOKENS = 20  # most tokens of a critique with its revision
# The rater's rule that each principle stands for, to measure the critic against the rater.
PRINCIPLE_RULES: dict[str, str] = {
    "consistent": "correct", "honest": "admits_not_knowing", "harmless": "declines_harm",
    "brief": "stops", "polite": "good_tone",
}  # fmt: skip
# The prompts each rater's rule can fail on (the rule passes every other reply).
RULE_KINDS: dict[str, tuple[str, ...]] = {
    "correct": ("known",), "admits_not_knowing": ("unknown",), "declines_harm": ("harmful",),
    "stops": ("known", "unknown", "harmful", "greeting"),
    "good_tone": ("known", "unknown", "harmful", "greeting"),
}  # fmt: skip

NUMBERS = {name: i for i, name in enumerate(CONSTITUTION, start=1)}  # principle -> its number
NAMES = {i: name for name, i in NUMBERS.items()}  # number -> principle
Critique = tuple[list[str], str | None]  # (principles broken, revision or None); None if unread


def _distinct(replies: Sequence[Sample]) -> list[Sample]:
    """The first reply of each text, in order."""
    return list({s.text: s for s in reversed(list(replies))}.values())[::-1]


def _checked(critiques) -> list[Critique | None]:
    """``critiques`` as a list, each None or (list of principle names, str or None)."""
    out = list(critiques)
    for i, c in enumerate(out):
        ok = c is None or (
            isinstance(c, tuple | list) and len(c) == 2 and isinstance(c[0], list)
            and all(p in CONSTITUTION for p in c[0]) and (c[1] is None or isinstance(c[1], str))
        )  # fmt: skip
        if not ok:
            raise TypeError(
                f"critique {i} is {c!r}; each must be None or a parsed critique (broken "
                "principles, revision), e.g. (['honest'], 'I do not know that person.'): "
                "pass the text through parse_critique first"
            )
    return out


def shown_reply(reply: Sample, tokenizer, shown: int = SHOWN_TOKENS) -> str:
    """The reply as the critic reads it: its first ``shown`` tokens, and " ..." if there were
    more or it never stopped."""
    if isinstance(shown, bool) or not isinstance(shown, int) or shown < 1:
        raise ValueError(f"shown={shown!r} must be an int >= 1: the tokens of the reply to show")
    ids = list(reply.ids)
    keep = min(shown, len(ids))
    while keep > 1 and tokenizer.decode(ids[:keep]).endswith("\ufffd"):
        keep -= 1  # a character's bytes split by the cut: show it whole or not at all
    text = tokenizer.decode(ids[:keep]).strip() or "..."
    cut = len(ids) > keep or not reply.finished
    return text + " ..." if cut and text != "..." else text


def critique_conversation(
    prompt: Prompt, reply: Sample, tokenizer, *, context_length: int = 64
) -> list[dict]:  # fmt: skip
    """The question, the reply (:func:`shown_reply`) and :data:`CRITIQUE_REQUEST`: the
    conversation the critic continues with its critique. The reply is shown cut to at most
    :data:`SHOWN_TOKENS` tokens, fewer if that leaves less than :data:`CRITIQUE_TOKENS` of the
    ``context_length`` for the critique; ``ValueError`` if even one token does not fit."""
    if isinstance(context_length, bool) or not isinstance(context_length, int):
        raise TypeError(f"context_length={context_length!r} must be an int: the model's context")
    room = context_length - CRITIQUE_TOKENS
    for shown in range(SHOWN_TOKENS, 0, -1):
        conversation = [
            {"role": "user", "content": prompt.text},
            {"role": "assistant", "content": shown_reply(reply, tokenizer, shown)},
            {"role": "user", "content": CRITIQUE_REQUEST},
        ]
        if len(render_chat(conversation, tokenizer, add_generation_prompt=True)[0]) <= room:
            return conversation
    quoted = prompt.text if len(prompt.text) <= 60 else prompt.text[:57] + "..."
    raise ValueError(
        f"the question {quoted!r}, a reply and a critique of {CRITIQUE_TOKENS} tokens do not fit "
        f"a context of {context_length} tokens: ask a shorter question, or use a critic with a "
        "longer context"
    )


def critique_text(broken: Sequence[str], revision: str | None) -> str:
    """A critique as the critic writes it.

    >>> critique_text(["honest", "polite"], "I do not know that person.")
    '2 5: I do not know that person.'
    >>> critique_text([], None)
    'Good.'
    """
    if not isinstance(broken, list | tuple) or not all(isinstance(p, str) for p in broken):
        raise TypeError(f"broken={broken!r} must be a list of principle names, e.g. ['honest']")
    unknown = [p for p in broken if p not in CONSTITUTION]
    if unknown:
        raise ValueError(f"{unknown} are not principles; use names from {list(CONSTITUTION)}")
    if len(set(broken)) < len(broken):
        raise ValueError(f"broken={broken!r} names a principle twice; name each once")
    if not broken:
        if revision is not None:
            raise ValueError("a critique that finds nothing broken has no revision; pass None")
        return "Good."
    if not isinstance(revision, str) or not revision.strip() or "\n" in revision:
        raise ValueError(
            f"revision={revision!r}: a critique that names a broken principle needs a revision, "
            "one non-empty line"
        )
    broken = sorted(broken, key=NUMBERS.get)  # in the constitution's order, as parsed back
    numbers = " ".join(str(NUMBERS[p]) for p in broken)
    return f"{numbers}: {revision}"


_CRITIQUE = re.compile(r"([1-9](?: [1-9])*): (.+)")


def parse_critique(text: str) -> Critique | None:
    """The principles and revision a critique names; None if it is not in the critique's form
    (a critic that never learnt it, or names something that is not a principle).

    >>> parse_critique("2 5: I do not know that person.")
    (['honest', 'polite'], 'I do not know that person.')
    >>> parse_critique("Good."), parse_critique("Bruno lives in Larkmoor.")
    (([], None), None)
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got a {type(text).__name__}")
    text = text.strip()
    if text == "Good.":
        return [], None
    match = _CRITIQUE.fullmatch(text)
    if match is None:
        return None
    numbers = [int(n) for n in match.group(1).split()]
    if any(n not in NAMES for n in numbers) or numbers != sorted(set(numbers)):
        return None
    return [NAMES[n] for n in numbers], match.group(2).strip()


def critique_examples(
    judge: Judge, prompts: Sequence[Prompt], candidates: Sequence[Sequence[Sample]], tokenizer,
    *, context_length: int,
) -> list[list[dict]]:  # fmt: skip
    """The critic's teaching data: every distinct candidate reply, critiqued and revised by the
    rule-based judge, as a four-turn conversation (:func:`critique_conversation` + the critique).
    A critique longer than :data:`CRITIQUE_TOKENS` (a long revision) is left out: cutting it
    would teach a critique without its end."""
    conversations = []
    for prompt, replies in zip(prompts, candidates, strict=True):
        for reply in _distinct(replies):
            broken = judge.principles_broken(prompt, reply)
            revision = revise(judge, prompt, reply, tokenizer).text if broken else None
            answer = {"role": "assistant", "content": critique_text(broken, revision)}
            shown = critique_conversation(prompt, reply, tokenizer, context_length=context_length)
            n = len(tokenizer.encode_ordinary(" " + answer["content"]))  # as the template does
            if n < CRITIQUE_TOKENS:  # and <|end|>
                conversations.append([*shown, answer])
    return conversations


def fine_tuned(model: nn.Module, tokenizer, conversations, *, steps: int, learning_rate: float,
               seed: int) -> nn.Module:  # fmt: skip
    """A copy of ``model`` fine-tuned on ``conversations`` (the chat model's recipe, with
    ``steps``, ``learning_rate`` and ``seed``; a tenth of them, at most 50, for validation), on
    the model's own device; ``model`` is left as it was."""
    import copy

    from companion.environment import model_device
    from companion.pretraining import train
    from companion.sft import SFTBatches, chat_model_configs

    if len(conversations) < 10:
        raise ValueError(f"{len(conversations)} conversations: fine-tuning needs at least 10")
    _, recipe = chat_model_configs()
    device = str(model_device(model))
    config = replace(recipe, steps=steps, learning_rate=learning_rate,
                     min_learning_rate=learning_rate / 10, warmup_steps=min(20, steps - 1),
                     eval_interval=steps, eval_batches=2, seed=seed, device=device)  # fmt: skip
    context_length = model.config.context_length
    examples = [render_chat(c, tokenizer) for c in conversations]  # (ids, loss_mask) each
    for i, (ids, _) in enumerate(examples):
        if len(ids) > context_length:  # sft.encode_conversations would cut its end off
            raise ValueError(
                f"conversation {i} takes {len(ids)} tokens, more than the model's context of "
                f"{context_length}; shorten it (its end would be cut off, not learnt)"
            )
    n_val = min(50, len(examples) // 10)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(examples), generator=g).tolist()
    val, train_set = [examples[i] for i in order[:n_val]], [examples[i] for i in order[n_val:]]
    tuned = copy.deepcopy(model).train()
    batches = SFTBatches(config.batch_size, special_ids(tokenizer)[END], device=device)
    train(tuned, train_set, val, config, progress=False, batch_fn=batches)
    if not all(torch.isfinite(p).all() for p in tuned.parameters()):
        raise ValueError(
            f"fine-tuning at learning_rate={learning_rate} made the weights NaN or infinite; "
            "lower the learning rate (the chat model's is 3e-4)"
        )
    return tuned.eval()


def model_critiques(
    critic: nn.Module, tokenizer, items: Sequence[tuple[Prompt, Sample]]
) -> list[Critique | None]:  # fmt: skip
    """The critic's greedy critique of each (prompt, reply), parsed (:func:`parse_critique`);
    None for one it did not finish in :data:`CRITIQUE_TOKENS` tokens or wrote out of form."""
    context_length = critic.config.context_length
    conversations = [
        critique_conversation(p, s, tokenizer, context_length=context_length) for p, s in items
    ]
    replies = chat_many(critic, tokenizer, conversations, max_new_tokens=CRITIQUE_TOKENS)
    return [parse_critique(str(r)) if r.finished else None for r in replies]


def revision_examples(
    items: Sequence[tuple[Prompt, Sample]], critiques: Sequence[Critique | None]
) -> list[list[dict]]:
    """SL-CAI's data: each prompt with the critic's revision of its reply, or the reply itself
    where the critic found nothing broken (a reply that never stopped is left out then); a
    critique the critic did not write in form is left out."""
    out = []
    for (prompt, reply), critique in zip(items, _checked(critiques), strict=True):
        if critique is None:
            continue
        broken, revision = critique
        text = revision if broken else (reply.text.strip() if reply.finished else "")
        if text:
            out.append([{"role": "user", "content": prompt.text},
                        {"role": "assistant", "content": text}])  # fmt: skip
    return out


def model_pairs(
    prompts: Sequence[Prompt], candidates: Sequence[Sequence[Sample]],
    critiques: Sequence[Sequence[Critique | None]],
) -> list[Preference]:  # fmt: skip
    """RL-CAI's labels: for every two distinct replies to a prompt that the critic critiqued,
    the one that breaks the first principle (in :data:`CONSTITUTION`'s order) the two critiques
    differ on loses; no pair where they do not differ. ``Preference.rule`` is that principle."""
    pairs = []
    for prompt, replies, verdicts in zip(prompts, candidates, critiques, strict=True):
        read = {}
        for reply, critique in zip(replies, _checked(verdicts), strict=True):
            if critique is not None:
                read.setdefault(reply.text, (reply, set(critique[0])))
        unique = list(read.values())
        for i, (a, broken_a) in enumerate(unique):
            for b, broken_b in unique[i + 1 :]:
                first = next((p for p in CONSTITUTION if (p in broken_a) != (p in broken_b)), None)
                if first is not None:
                    chosen, rejected = (b, a) if first in broken_a else (a, b)
                    pairs.append(Preference(prompt, chosen, rejected, first, False))
    return pairs


def principle_agreement(
    world: World, items: Sequence[tuple[Prompt, Sample]],
    critiques: Sequence[Critique | None], judge: Judge | None = None,
) -> dict[str, dict[str, float | int]]:  # fmt: skip
    """For each principle, on the replies its rater's rule (:data:`PRINCIPLE_RULES`) can fail
    on (:data:`RULE_KINDS`) and the critic critiqued in form: ``n``, the share on which the
    critic says the principle is broken exactly when the rater's rule fails (``rater``) and,
    with ``judge``, exactly when the rule-based judge says so (``judge``), and the judge's own
    agreement with the rater on the same replies (``judge_rater``)."""
    checked = _checked(critiques)
    read = [(p, s, c) for (p, s), c in zip(items, checked, strict=True) if c is not None]
    judged = [judge.principles_broken(p, s) if judge else [] for p, s, _ in read]  # once each
    out = {}
    for principle, rule_name in PRINCIPLE_RULES.items():
        rule = RULES[rule_name]
        rows = [
            (principle in c[0], not rule(world, p, s.text, s.finished), principle in broken)
            for (p, s, c), broken in zip(read, judged, strict=True)
            if p.kind in RULE_KINDS[rule_name]
        ]  # (the critic flags it, the rater's rule fails, the judge flags it)
        if not rows:
            continue
        entry: dict[str, float | int] = {"n": len(rows)}
        entry["rater"] = sum(flag == fails for flag, fails, _ in rows) / len(rows)
        if judge is not None:
            entry["judge"] = sum(flag == says for flag, _, says in rows) / len(rows)
            entry["judge_rater"] = sum(fails == says for _, fails, says in rows) / len(rows)
        out[principle] = entry
    return out
