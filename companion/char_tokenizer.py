"""Characters as tokens: the simplest tokenizer, one id per distinct character.

Taught in ``01_tokenization.ipynb`` (why not characters: every text becomes as many positions as
it has characters). Used by the Tiny Shakespeare benchmark, which trains on characters as nanoGPT
does, and by small tests. It is called like :class:`companion.tokenizer.BPETokenizer`:
``encode(text, allowed_special=...)`` and ``decode(ids)``.

Left out: special tokens and unknown-character fallbacks (an unseen character is an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet

import torch


class CharTokenizer:
    """A character-level tokenizer: one id per distinct character, in sorted order.

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.chars, tok.encode("hole"), tok.decode([3, 1])
    (('e', 'h', 'l', 'o'), [1, 3, 2, 0], 'oh')
    """

    def __init__(self, chars: Sequence[str]) -> None:
        chars = tuple(chars)
        if not chars or any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError(
                "chars must be distinct single characters; use CharTokenizer.from_text"
            )
        self.chars = chars  # id -> character
        self.ids = {c: i for i, c in enumerate(chars)}  # character -> id

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of ``text``: its distinct characters, sorted."""
        if not text:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """V: the number of distinct characters."""
        return len(self.chars)

    def encode(
        self,
        text: str,
        *,
        allowed_special: AbstractSet[str] | str = frozenset(),
        disallowed_special: AbstractSet[str] | str = "all",
    ) -> list[int]:
        """Characters to ids; a character outside the vocabulary raises ``ValueError``.

        A character tokenizer has no special tokens: ``<|endoftext|>`` is thirteen characters
        here. The two keyword arguments exist so that both tokenizers are called alike
        (:meth:`companion.tokenizer.BPETokenizer.encode`); they change nothing.
        """
        try:
            return [self.ids[c] for c in text]
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} is not in this tokenizer's {self.vocab_size}-character "
                "vocabulary; build it from text that contains it (CharTokenizer.from_text)"
            ) from None

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids to characters; an id outside ``0 … V-1`` raises ``ValueError``."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside 0..{self.vocab_size - 1}")
        return "".join(self.chars[i] for i in ids)
