"""Before BPE: cutting text into pre-tokens with a regex, and keeping special tokens out of it.

Taught in ``01_tokenization.ipynb`` ("GPT-4's pre-tokenization regex, by example" and "Special
tokens and prompt injection"). :class:`companion.tokenizer.BPETokenizer` uses these helpers:

- a split pattern (GPT-2's or GPT-4's regex) cuts text into *pre-tokens*; BPE merges never cross
  a pre-token boundary, so " dog" and "." stay apart and digits stay in groups of three;
- special tokens (``<|endoftext|>`` ...) are control signals with ids of their own. Text that
  contains their strings is refused unless the caller allows them (:func:`refuse_special`), as
  tiktoken does, so user text cannot inject them; allowed ones are cut out first
  (:func:`split_special`) and never merged with their neighbours.

Left out: Unicode normalisation (NFC/NFKC) and SentencePiece-style whitespace handling.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Literal

import regex

GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokenization regex: contractions, words, numbers, punctuation, whitespace."""
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
"""GPT-4's (cl100k_base's) regex, exactly as tiktoken has it: numbers split in chunks of 1-3 digits."""
SMOLLM2_SPLIT_PATTERN = (
    r"""\p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
)
r"""SmolLM2's pre-tokenization (``09_real_model.ipynb``) as one regex: every digit alone, then
GPT-2's rules on the rest. Its tokenizer splits digits off first and runs GPT-2's regex on the
pieces between them; so here a whitespace run before a digit ends a piece, as the end of text
does (``\s+(?![^\s\p{N}])``): ``"  1"`` is ``["  ", "1"]``, where GPT-2's regex gives
``[" ", " 1"]``."""
WHOLE_TEXT_PATTERN = r"[\s\S]+"
"""What ``to_tiktoken`` uses for ``pattern=None``: the whole text (between special tokens) is one piece."""

AllowedSpecial = Literal["all"] | Collection[str]


def compile_pattern(pattern: str | None) -> regex.Pattern | None:
    """Compile a split pattern (``None`` stays ``None``: no splitting); a bad one raises ValueError.

    >>> compile_pattern(GPT4_SPLIT_PATTERN).findall("It's 2024!")
    ['It', "'s", ' ', '202', '4', '!']
    """
    try:
        return None if pattern is None else regex.compile(pattern)
    except (regex.error, TypeError) as err:
        raise ValueError(f"pattern {pattern!r} is not a valid regex ({err}); fix it") from err


def special_pattern(strings: Iterable[str]) -> str:
    """A regex matching any of ``strings`` literally, longest first.

    >>> special_pattern(["<|a|>", "<|end|>"])
    '<\\\\|end\\\\|>|<\\\\|a\\\\|>'
    """
    return "|".join(regex.escape(s) for s in sorted(strings, key=len, reverse=True))


def check_special_tokens(special: Mapping[str, int], first_free_id: int) -> None:
    """Raise ValueError unless the special tokens are distinct non-empty strings with free ids.

    >>> check_special_tokens({"<|end|>": 300}, first_free_id=300)
    """
    if len(set(special.values())) != len(special):
        raise ValueError(f"special token ids must be distinct, got {dict(special)}")
    for string, token_id in special.items():
        if not isinstance(string, str) or not string:
            raise ValueError(f"special tokens must be non-empty strings, got {string!r}")
        if not isinstance(token_id, int) or token_id < first_free_id:
            raise ValueError(
                f"special token {string!r} has id {token_id!r}, but ids below {first_free_id} "
                "belong to bytes and merges; give it an id after the merges"
            )


def resolve_special(
    special: Collection[str], allowed_special: AllowedSpecial, disallowed_special: AllowedSpecial
) -> tuple[set[str], set[str]]:
    """tiktoken's rule: ``(allowed, disallowed)``; by default every special token not allowed is
    disallowed. Naming a string that is not a special token raises.

    >>> resolve_special({"<|a|>", "<|b|>"}, {"<|a|>"}, "all")
    ({'<|a|>'}, {'<|b|>'})
    """
    allowed = set(special) if allowed_special == "all" else set(allowed_special)
    unknown = allowed - set(special)
    if unknown:
        raise ValueError(
            f"allowed_special names {sorted(unknown)}, which are not special tokens of this "
            f"tokenizer; its special tokens are {sorted(special)}"
        )
    if disallowed_special == "all":
        return allowed, set(special) - allowed
    return allowed, set(disallowed_special)


def refuse_special(text: str, disallowed: Collection[str]) -> None:
    """Raise ValueError if ``text`` contains any ``disallowed`` special-token string.

    >>> refuse_special("hello", {"<|endoftext|>"})
    """
    if disallowed and (found := regex.search(special_pattern(disallowed), text)):
        raise ValueError(
            f"the text contains the special token {found.group()!r} at character "
            f"{found.start()}; user text must not inject control tokens. To encode it as its "
            f"id pass allowed_special={{{found.group()!r}}}; to encode it as plain text use "
            "encode_ordinary(text) or disallowed_special=()"
        )


def split_special(text: str, allowed: Collection[str]) -> list[tuple[str, bool]]:
    """Cut ``text`` around the ``allowed`` special tokens: ``(piece, is_special)``, empties dropped.

    >>> split_special("hi<|end|>yo", {"<|end|>"})
    [('hi', False), ('<|end|>', True), ('yo', False)]
    """
    if not allowed:
        return [(text, False)] if text else []
    pieces = regex.split(f"({special_pattern(allowed)})", text)
    # odd positions are the special tokens the capturing group kept
    return [(piece, i % 2 == 1) for i, piece in enumerate(pieces) if piece]


def training_words(
    text: str, pattern: str | None, special_tokens: Sequence[str] = ()
) -> Iterator[str]:
    """The pre-tokens BPE trains on: special tokens cut out, the rest split by ``pattern``.

    >>> list(training_words("a cat<|end|>a hat", GPT4_SPLIT_PATTERN, ["<|end|>"]))
    ['a', ' cat', 'a', ' hat']
    """
    compiled = compile_pattern(pattern)
    for piece, is_special in split_special(text, special_tokens):
        if not is_special:
            words = [piece] if compiled is None else compiled.findall(piece)
            yield from (word for word in words if word)
