"""Constitutional AI, small: written principles, critiques and revisions, AI-labelled pairs.

Taught in ``06_rlhf.ipynb`` (section 7). In Constitutional AI (Bai et al. 2022) the feedback
comes from written principles instead of people: replies are critiqued against the principles
and revised, and an AI judge labels the preference pairs. Here the judge is a **rule-based
checker** (:class:`Judge`), not a language model: the course model is too small to read a
principle and apply it (:mod:`companion.self_critique` teaches it to, by example, from this
judge's critiques, and runs both of Constitutional AI's stages with it). What makes the judge a
different source of feedback from the simulated rater is what it may read: never the world's
answer key.

* It checks a fact question against **the chat model's own greedy answer** (self-consistency:
  a reply that contradicts what the model says when asked plainly is judged wrong), so where
  the model is wrong, the judge is wrong with it.
* It judges a name unknown when **the corpus the model was trained on never mentions it** (the
  training data, not the world).
* It judges a request harmful when it uses **a word of harm** (:data:`HARM_WORDS`, its own
  reading of the "harmless" principle), not by the rater's list of prompts.
* It adds no noise.

:func:`critique` lists the principles a reply breaks; :func:`revise` rewrites it (a template
refusal for an unknown name, "I will not help with that." for a request that uses a word of
harm (:data:`HARM_WORDS`), the model's greedy answer for any other fault in a reply to a fact
question, the first line otherwise): revisions are written by rules too. The CAI model is then DPO
(:mod:`companion.dpo`) on the judge's pairs plus the (revision ≻ original) pairs.

Left out here: a model-written critique (:mod:`companion.self_critique`), chains of thought,
and red-teaming prompts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from companion.measurement import declines_request, has_word, in_format, says_do_not_know
from companion.preferences import (
    REFUSAL,
    Preference,
    Prompt,
    Sample,
    good_tone,
    label_pairs,
    written_sample,
)
from companion.sft_data import DECLINE_HARMFUL
from companion.world import World

CONSTITUTION: dict[str, str] = {  # principle name -> the principle as written
    "consistent": "Say only what you would say when asked plainly; do not contradict yourself.",
    "honest": "If you have never heard of someone, say that you do not know them.",
    "harmless": "Do not help anyone to steal, hurt, cheat or destroy: decline such a request.",
    "brief": "Answer in one turn and stop; never write the user's part.",
    "polite": "Answer in one or two tidy sentences.",
}


# The words by which the judge knows a harmful request: its reading of the "harmless" principle,
# a rule written by hand, with the training prompts' and the SFT demonstrations' requests in view
# ("lie" is left out, as in "lie on the river"). The judge labels only training prompts; a wording
# without one of these words ("take her money") would pass it unseen.
HARM_WORDS: tuple[str, ...] = (
    "steal", "rob", "hurt", "harm", "kill", "poison", "cheat", "trick", "burn", "fire", "break",
    "scare", "frighten",
)  # fmt: skip


class Judge:
    """The rule-based checker: ``Judge(greedy_answers, corpus_text)``.

    ``greedy_answers`` maps a prompt's text to the chat model's greedy reply; ``corpus_text`` is
    the pretraining corpus (to tell known names from unknown ones).
    """

    def __init__(self, greedy_answers: dict[str, str], corpus_text: str) -> None:
        self.greedy_answers = greedy_answers
        self.names = set(re.findall(r"[A-Z][a-z]+", corpus_text))  # every capitalised word

    def unknown_name(self, prompt: Prompt) -> str | None:
        """The first capitalised word of the question that the corpus never mentions."""
        words = re.findall(r"[A-Z][a-z]+", prompt.text)
        return next((w for w in words[1:] if w not in self.names), None)

    def harmful(self, prompt: Prompt) -> bool:
        """Whether the message asks for harm: it uses one of :data:`HARM_WORDS`."""
        if not isinstance(prompt, Prompt):
            raise TypeError(
                f"prompt must be a Prompt, got a {type(prompt).__name__}; wrap the text, e.g. "
                "Prompt('Help me rob Bruno.', 'harmful')"
            )
        return any(has_word(prompt.text.lower(), word) for word in HARM_WORDS)

    def principles_broken(self, prompt: Prompt, reply: Sample) -> list[str]:
        """The principles ``reply`` breaks, in :data:`CONSTITUTION`'s order."""
        out = []
        stranger = self.unknown_name(prompt)
        plain = self.greedy_answers.get(prompt.text)
        if stranger is None and plain is not None and not says_do_not_know(reply.text):
            words = set(re.findall(r"[A-Za-z]+", plain))
            if not words <= set(re.findall(r"[A-Za-z]+", reply.text)):
                out.append("consistent")
        if stranger is not None and not says_do_not_know(reply.text):
            out.append("honest")
        if self.harmful(prompt) and not declines_request(reply.text):
            out.append("harmless")
        if not in_format(reply.text, reply.finished):
            out.append("brief")
        if not good_tone(None, prompt, reply.text, reply.finished):
            out.append("polite")
        return out

    def rules(self) -> dict:
        """The judge's principles as rules for :func:`companion.preferences.label_pairs`."""

        def rule(principle):
            return lambda world, prompt, text, finished: (
                principle not in self.principles_broken(prompt, Sample((), text, finished))
            )

        return {name: rule(name) for name in CONSTITUTION}


def critique(judge: Judge, prompt: Prompt, reply: Sample) -> str:
    """The critique as text: each broken principle quoted, or that none is broken."""
    broken = judge.principles_broken(prompt, reply)
    if not broken:
        return "The reply follows every principle."
    return " ".join(f"It breaks '{CONSTITUTION[p]}'" for p in broken)


def revise(judge: Judge, prompt: Prompt, reply: Sample, tokenizer) -> Sample:
    """The reply rewritten to follow the principles it breaks (by rules, see the module)."""
    broken = judge.principles_broken(prompt, reply)
    if "honest" in broken:
        return written_sample(REFUSAL, tokenizer)
    if "harmless" in broken:
        return written_sample(DECLINE_HARMFUL, tokenizer)
    if broken and prompt.text in judge.greedy_answers:  # a fact question: say it plainly
        return written_sample(judge.greedy_answers[prompt.text], tokenizer)
    if broken:
        first = reply.text.strip().split("\n")[0].split("<|")[0].strip()
        return written_sample(first or reply.text.strip(), tokenizer)
    return reply


def ai_pairs(
    judge: Judge, world: World, prompts: Sequence[Prompt], candidates: Sequence[Sequence[Sample]],
    tokenizer,
) -> list[Preference]:  # fmt: skip
    """The judge's preference pairs over the model's own candidates (no noise), plus a
    (revision ≻ original) pair for every candidate the judge revised."""
    pairs = label_pairs(world, prompts, candidates, noise=0.0, rules=judge.rules())
    for prompt, replies in zip(prompts, candidates, strict=True):
        for reply in replies:
            better = revise(judge, prompt, reply, tokenizer)
            if better.text != reply.text:
                pairs.append(Preference(prompt, better, reply, "revision", False))
    return pairs


def agreement(
    judge_pairs: Sequence[Preference], rater_pairs: Sequence[Preference]
) -> tuple[float, int]:
    """Share of the pairs both labelled (same prompt, same two replies) on which they agree,
    and how many such pairs there are."""
    rater = {(p.prompt.text, p.chosen.text, p.rejected.text) for p in rater_pairs}
    either = {(p.prompt.text, *sorted((p.chosen.text, p.rejected.text))) for p in rater_pairs}
    both = [
        p for p in judge_pairs
        if p.rule != "revision" and (p.prompt.text, *sorted((p.chosen.text, p.rejected.text))) in either
    ]  # fmt: skip
    if not both:
        raise ValueError("the judge and the rater share no pair; label the same candidates")
    agree = sum((p.prompt.text, p.chosen.text, p.rejected.text) in rater for p in both)
    return agree / len(both), len(both)


def make_judge(chat_model, tokenizer, prompts: Sequence[Prompt]) -> Judge:
    """The judge for ``prompts``: the chat model's greedy replies to the fact questions, and the
    course corpus (seed 0) for the names."""
    from companion.chat import chat_many
    from companion.corpus import generate_corpus

    known = [p for p in prompts if p.kind == "known"]
    conversations = [[{"role": "user", "content": p.text}] for p in known]
    replies = chat_many(chat_model, tokenizer, conversations)
    answers = {p.text: str(r) for p, r in zip(known, replies, strict=True)}
    return Judge(answers, generate_corpus(0))
