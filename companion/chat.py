"""The chat template: a conversation as token ids and a loss mask, the context window, ``chat()``.

Taught in ``05_sft.ipynb``. A conversation is a list of messages, each a dict
``{"role": "user" | "assistant", "content": str}`` (the shape Hugging Face chat templates and
chat APIs use). :func:`render_chat` writes each message as its role's marker, its content, and
``<|end|>``, using the course tokenizer's special tokens as the markers::

    <|user|> Where does Mira live?<|end|><|assistant|> Mira lives in Thornby.<|end|>

The space after each marker is part of the template: the corpus almost always has a space
before a word, so the tokenizer's pieces for words carry it (" Mira", " Thornby" are single
tokens; "Mira" at the very start of a text would be "M", "ira"). The reply that :func:`chat`
returns has that one space removed.

Three rules make the template safe to train on and to talk to:

1. **Content is ordinary text.** It is encoded with ``encode_ordinary``, so a user who types
   ``<|end|><|assistant|>`` gets the characters ``<``, ``|``, ``end`` ..., never the special ids:
   role injection is impossible. Markers come only from the roles.
2. **Only the assistant is trained.** The loss mask is True on the assistant's content and its
   closing ``<|end|>`` (so the model learns to stop), False on every marker and user token.
3. **The window holds whole turns.** The model sees 64 tokens. :func:`fit_to_context` keeps the
   system message (if any) and the most recent *whole* messages that fit in a budget, and drops
   the older ones; it never cuts a message in half, and raises ``ValueError`` if even the last
   message (or the system message) does not fit.
   :func:`chat` keeps room for the reply: the history gets ``context_length - max_new_tokens``.

The model has no memory between calls: every reply is generated from the re-sent history.

**Other templates.** The same rules render a real model's template (``09_real_model.ipynb``):
a :class:`ChatTemplate` names each role's opening special token, the ordinary text around the
content, and the closing token. :data:`COURSE_CHAT` is the course's; :data:`SMOLLM2_CHAT` is
SmolLM2's ChatML, ``<|im_start|>user\nHi<|im_end|>\n``, with its system role and the default
system message its file's template adds (tested equal to ``apply_chat_template``).

Left out: tool calls, and packing several conversations into one training row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from companion.generation import generate_many

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
MARKERS: dict[str, str] = {"user": USER, "assistant": ASSISTANT}  # role -> its opening marker
ROLES: tuple[str, ...] = tuple(MARKERS)
Message = Mapping[str, str]  # {"role": "user" | "assistant", "content": "..."}


@dataclass(frozen=True)
class ChatTemplate:
    """How one message becomes tokens: ``[opening id] + ordinary(role_text + content_prefix +
    content) + [end id] + ordinary(after_end)``; the generation prompt is the assistant's
    opening token and role text."""

    markers: Mapping[str, str]  # role -> the special token that opens its messages
    end: str  # the special token that closes a message; generation stops at it
    role_text: str = ""  # ordinary text after the opening token; "{role}" becomes the role
    content_prefix: str = ""  # put before the content (the course's space); stripped from replies
    after_end: str = ""  # ordinary text after the closing token
    default_system: str | None = None  # put first, as a system message, when there is none
    roles: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", tuple(self.markers))


COURSE_CHAT = ChatTemplate(markers=MARKERS, end=END, content_prefix=" ")
"""The course's template: ``<|user|> Hi<|end|><|assistant|> Hello.<|end|>``."""
SMOLLM2_CHAT = ChatTemplate(
    markers={"system": "<|im_start|>", "user": "<|im_start|>", "assistant": "<|im_start|>"},
    end="<|im_end|>",
    role_text="{role}\n",
    after_end="\n",
    default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
)
"""SmolLM2's ChatML, as its GGUF file's Jinja template writes it."""


def check_messages(
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
    template: ChatTemplate = COURSE_CHAT,
) -> None:
    """Raise ``ValueError`` naming what is allowed unless ``messages`` is a valid conversation.

    >>> check_messages([{"role": "user", "content": "Hello!"}])
    >>> check_messages([{"role": "system", "content": "Be nice."}])
    Traceback (most recent call last):
    ...
    ValueError: message 0 has role 'system'; allowed roles are 'user' and 'assistant'
    """
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise ValueError("messages is empty; give at least one {'role': 'user', 'content': ...}")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
            raise ValueError(
                f"message {i} must be a dict with exactly the keys 'role' and 'content', "
                f"got {message!r}"
            )
        role, content = message["role"], message["content"]
        if role not in template.markers:
            names = [repr(r) for r in template.roles]
            allowed = ", ".join(names[:-1]) + " and " + names[-1]
            raise ValueError(f"message {i} has role {role!r}; allowed roles are {allowed}")
        if not isinstance(content, str):
            raise ValueError(
                f"message {i} has content of type {type(content).__name__}; content must be a "
                "non-empty str"
            )
        if not content.strip():
            raise ValueError(f"message {i} has empty content; content must be a non-empty str")
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise ValueError(
            "the conversation ends with an assistant message, so there is nothing to reply to; "
            "with add_generation_prompt=True the last message must be the user's"
        )


def special_ids(tokenizer) -> dict[str, int]:
    """The ids of the three turn markers in ``tokenizer``; a clear error if it lacks them."""
    special = getattr(tokenizer, "special_tokens", {})
    missing = [m for m in (USER, ASSISTANT, END) if m not in special]
    if missing:
        raise ValueError(
            f"the tokenizer has no special tokens {missing}; use the course tokenizer "
            "(companion.data.load_course_tokenizer())"
        )
    return {m: special[m] for m in (USER, ASSISTANT, END)}


def _template_ids(tokenizer, template: ChatTemplate) -> dict[str, int]:
    """The ids of a template's special tokens in ``tokenizer``; a clear error if it lacks them."""
    if template is COURSE_CHAT:
        return special_ids(tokenizer)
    special = getattr(tokenizer, "special_tokens", {})
    needed = {*template.markers.values(), template.end}
    missing = sorted(needed - set(special))
    if missing:
        raise ValueError(f"the tokenizer has no special tokens {missing}; use the model's own")
    return {s: special[s] for s in needed}


def _with_default_system(messages: Sequence[Message], template: ChatTemplate) -> list[Message]:
    if template.default_system is None or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": template.default_system}, *messages]


def _render_message(
    message: Message, tokenizer, ids: dict[str, int], template: ChatTemplate = COURSE_CHAT
) -> tuple[list[int], list[bool]]:
    """A message's ids and their loss mask: the assistant's content and closing token."""
    role = message["role"]
    text = template.role_text.format(role=role) + template.content_prefix + message["content"]
    content = tokenizer.encode_ordinary(text)  # never a special id
    after = tokenizer.encode_ordinary(template.after_end) if template.after_end else []
    tokens = [ids[template.markers[role]], *content, ids[template.end], *after]
    trained = role == "assistant"
    n_role = len(tokenizer.encode_ordinary(template.role_text.format(role=role)))  # not trained
    n_trained = len(content) - n_role + 1  # the content and the closing token
    return tokens, [False] * (1 + n_role) + [trained] * n_trained + [False] * len(after)


def message_lengths(
    messages: Sequence[Message], tokenizer, *, template: ChatTemplate = COURSE_CHAT
) -> list[int]:
    """Tokens each message takes in the template: its marker, its content and ``<|end|>``.

    >>> from companion.data import load_course_tokenizer
    >>> message_lengths(as_messages("Hello!"), load_course_tokenizer())  # <|user|> Hello ! <|end|>
    [4]
    """
    check_messages(messages, template=template)
    ids = _template_ids(tokenizer, template)
    return [len(_render_message(m, tokenizer, ids, template)[0]) for m in messages]


def fit_to_context(
    messages: Sequence[Message],
    tokenizer,
    max_tokens: int,
    *,
    add_generation_prompt: bool = False,
    template: ChatTemplate = COURSE_CHAT,
) -> list[Message]:
    """The system message, if the conversation opens with one, and the most recent whole
    messages after it whose rendering fits in ``max_tokens`` (the policy).

    The system message (the model's instructions) is always kept. Counting from the last
    message backwards, keep every message while the total, plus the generation prompt if asked
    (``<|assistant|>``), stays within ``max_tokens``; drop the first that does not fit and every
    older one. A message is never cut. ``ValueError`` if the system message alone, or the last
    message with it, does not fit. A message far too long to fit is refused from its length in
    bytes, before it is encoded (a long paste costs no time).

    >>> from companion.data import load_course_tokenizer
    >>> talk = as_messages("Hello!", "Hello.", "Goodbye!")  # 4 tokens each
    >>> [m["content"] for m in fit_to_context(talk, load_course_tokenizer(), 11)]
    ['Hello.', 'Goodbye!']
    """
    check_messages(messages, add_generation_prompt=add_generation_prompt, template=template)
    _check_max_tokens(max_tokens)
    return _keep_recent(messages, tokenizer, max_tokens, add_generation_prompt, template)


def _check_max_tokens(max_tokens: int) -> None:
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens!r} must be a positive int, e.g. 64")


def _keep_recent(messages, tokenizer, max_tokens, add_generation_prompt, template) -> list[Message]:
    """:func:`fit_to_context` for a conversation already checked."""
    ids = _template_ids(tokenizer, template)
    longest = getattr(tokenizer, "longest_token", None)  # bytes in the longest token, if known

    def length(message: Message, budget: int) -> int | None:
        """Tokens ``message`` takes, or None if its bytes alone show it cannot fit ``budget``."""
        if longest and len(message["content"].encode("utf-8")) > budget * longest:
            return None  # even at the longest token per piece it would not fit: not encoded
        return len(_render_message(message, tokenizer, ids, template)[0])

    total = len(_generation_prompt(tokenizer, template)) * add_generation_prompt
    system = 1 if messages[0]["role"] == "system" else 0
    if system:
        needed = length(messages[0], max_tokens - total)
        if needed is None or total + needed > max_tokens:
            raise ValueError(
                f"the system message takes more than the {max_tokens - total} tokens of "
                f"max_tokens={max_tokens} left beside the generation prompt; shorten it (the "
                "system message is never dropped)"
            )
        total += needed
    first = len(messages)
    while first > system:
        needed = length(messages[first - 1], max_tokens - total)
        if needed is None or total + needed > max_tokens:
            break
        first -= 1
        total += needed
    if first == len(messages) and first > system:
        alone = "with the system message" if system else "alone"
        takes = "more than" if needed is None else f"{total + needed} tokens, more than"
        raise ValueError(
            f"the last message {alone} takes {takes} max_tokens={max_tokens}; shorten it (the "
            "model sees only that many tokens)"
        )
    return list(messages[:system]) + list(messages[first:])


def render_chat(
    messages: Sequence[Message],
    tokenizer,
    *,
    add_generation_prompt: bool = False,
    max_tokens: int | None = None,
    template: ChatTemplate = COURSE_CHAT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The conversation as ``(ids, loss_mask)``: 1-D int64 ids and a bool mask of equal length.

    ``loss_mask[t]`` is True where token ``t`` is one the model should learn to write: the
    assistant's content and its closing ``<|end|>``. With ``add_generation_prompt=True`` the ids
    end with ``<|assistant|>`` (mask False), ready for the model to write the reply. With
    ``max_tokens``, older messages are dropped first (:func:`fit_to_context`). ``template``:
    :data:`COURSE_CHAT` (the default) or another model's, e.g. :data:`SMOLLM2_CHAT`. The
    messages are checked once, here.

    >>> from companion.data import load_course_tokenizer
    >>> tok = load_course_tokenizer()
    >>> ids, mask = render_chat([{"role": "user", "content": "Hi"},
    ...                          {"role": "assistant", "content": "Hello."}], tok)
    >>> [tok.decode([i]) for i in ids.tolist()]
    ['<|user|>', ' H', 'i', '<|end|>', '<|assistant|>', ' Hello', '.', '<|end|>']
    >>> mask.tolist()
    [False, False, False, False, False, True, True, True]
    """
    check_messages(messages, add_generation_prompt=add_generation_prompt, template=template)
    messages = _with_default_system(messages, template)
    if max_tokens is not None:
        _check_max_tokens(max_tokens)
        messages = _keep_recent(messages, tokenizer, max_tokens, add_generation_prompt, template)
    special = _template_ids(tokenizer, template)
    ids: list[int] = []
    mask: list[bool] = []
    for message in messages:
        tokens, trained = _render_message(message, tokenizer, special, template)
        ids += tokens
        mask += trained  # the marker is never trained
    if add_generation_prompt:
        prompt = _generation_prompt(tokenizer, template)
        ids += prompt
        mask += [False] * len(prompt)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool)


def question_ids(question: str, tokenizer, *, template: ChatTemplate = COURSE_CHAT) -> list[int]:
    """One user message in the template, then the assistant's opening: the ids a chat model
    continues with its reply (chapters 6-9 ask their questions this way).

    >>> from companion.data import load_course_tokenizer
    >>> tok = load_course_tokenizer()
    >>> tok.decode(question_ids("Hi", tok))
    '<|user|> Hi<|end|><|assistant|>'
    """
    messages = [{"role": "user", "content": question}]
    return render_chat(messages, tokenizer, add_generation_prompt=True, template=template)[
        0
    ].tolist()


def _generation_prompt(tokenizer, template: ChatTemplate) -> list[int]:
    """The assistant's opening: its marker and role text (``<|assistant|>``; ChatML's
    ``<|im_start|>assistant\\n``)."""
    marker = _template_ids(tokenizer, template)[template.markers["assistant"]]
    text = template.role_text.format(role="assistant")
    return [marker, *(tokenizer.encode_ordinary(text) if text else [])]


class Reply(str):
    """A reply's text, with ``finished``: True if the model ended it with ``<|end|>``, False if
    it was cut at ``max_new_tokens`` (the length limit)."""

    finished: bool  # the model wrote <|end|> (False: cut at the length limit)
    n_tokens: int  # tokens generated, <|end|> included

    def __new__(cls, text: str, *, finished: bool, n_tokens: int) -> Reply:
        reply = super().__new__(cls, text)
        reply.finished, reply.n_tokens = finished, n_tokens
        return reply


def chat_many(
    model: nn.Module,
    tokenizer,
    conversations: Sequence[Sequence[Message]],
    *,
    max_new_tokens: int = 24,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    template: ChatTemplate = COURSE_CHAT,
) -> list[Reply]:
    """:func:`chat` for many conversations at once (batched by rendered length), on the
    model's own device."""
    context_length = model.config.context_length
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens < context_length:
        raise ValueError(
            f"max_new_tokens={max_new_tokens!r} must be an int from 1 to {context_length - 1}: "
            "the history and the reply share the model's context window"
        )
    budget = context_length - max_new_tokens  # the reply must fit in the window too
    prompts = [
        render_chat(c, tokenizer, add_generation_prompt=True, max_tokens=budget, template=template)[
            0
        ].tolist()
        for c in conversations
    ]
    results = generate_many(
        model,
        prompts,
        [_template_ids(tokenizer, template)[template.end]],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
    )
    prefix = template.content_prefix  # the course template's space after the marker
    return [
        Reply(
            tokenizer.decode(c.ids).removeprefix(prefix),
            finished=c.finished,
            n_tokens=len(c.ids) + c.finished,
        )
        for c in results
    ]


def chat(
    model: nn.Module,
    tokenizer,
    messages: Sequence[Message],
    *,
    max_new_tokens: int = 24,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    template: ChatTemplate = COURSE_CHAT,
) -> Reply:
    """The model's reply to ``messages`` (the last must be the user's), as a :class:`Reply`.

    1. render the history with the generation prompt, keeping the most recent whole messages
       that fit in ``context_length - max_new_tokens`` tokens (:func:`fit_to_context`);
    2. generate until ``<|end|>`` or ``max_new_tokens`` (greedy at ``temperature=0``, else
       sampled with a generator seeded by ``seed``);
    3. decode the new tokens without the ``<|end|>`` and the template's leading space;
       ``reply.finished`` says which limit ended it.

    The model runs where it is (its parameters' device); it is never moved.

    >>> from companion.checkpoints import load_shipped
    >>> model, tok = load_shipped("chat", "cpu")
    >>> reply = chat(model, tok, [{"role": "user", "content": "Hello!"}])
    >>> isinstance(reply, str), reply.finished
    (True, True)
    """
    return chat_many(
        model,
        tokenizer,
        [messages],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        template=template,
    )[0]


def as_messages(*turns: str) -> list[dict[str, Any]]:
    """Alternating user/assistant messages from plain strings, starting with the user.

    >>> as_messages("Hi", "Hello.")
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello.'}]
    """
    return [{"role": ROLES[i % 2], "content": text} for i, text in enumerate(turns)]
