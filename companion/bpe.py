"""Byte-pair encoding, the algorithm itself: count adjacent pairs, merge the most frequent, repeat.

Taught in ``01_tokenization.ipynb`` ("The BPE algorithm step by step"). Text arrives here already
cut into *words* (pre-tokens) and turned into bytes; every byte is a token id 0..255 and merge
number ``i`` creates the new id ``256 + i``. Two trainers produce the same merges:

- :func:`train_plain` recounts every pair of every word after each merge: short and obviously
  right, but slow (each merge costs a pass over the whole corpus);
- :func:`train_incremental` counts once, then after each merge updates only the words that
  contained the merged pair, and keeps the counts in a heap to find the next best pair.

Both break ties the same way: the highest count wins; among equal counts, the smallest pair
``(a, b)`` (compared as a tuple) wins. Words are counted once with their frequency, so
"the" occurring 5,000 times is one word of weight 5,000.

Encoding new text uses the learnt merges in one of two equivalent ways: :func:`replay_merges`
applies them in the order they were learnt (the textbook way), :func:`bpe_parts` repeatedly joins
the adjacent pair whose joined bytes have the lowest rank (tiktoken's way, which needs only a
``{bytes: rank}`` table).

Left out: the regex that cuts text into words and special tokens (:mod:`companion.pretokenize`),
caching (:mod:`companion.tokenizer`) and the file format (:mod:`companion.tokenizer_files`).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise

Pair = tuple[int, int]
_NO_RANK = 1 << 62  # larger than any rank: "this pair is not in the vocabulary"


def get_stats(ids: Sequence[int], counts: dict[Pair, int] | None = None, weight: int = 1) -> dict:
    """Count each adjacent pair in ``ids`` (adding ``weight`` per occurrence into ``counts``).

    >>> get_stats([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right.

    >>> merge([1, 2, 3, 1, 2], (1, 2), 4)
    [4, 3, 4]
    >>> merge([5, 5, 5], (5, 5), 6)  # overlapping occurrences: the leftmost wins
    [6, 5]
    """
    out: list[int] = []
    i, n = 0, len(ids)
    first, second = pair
    while i < n:
        if i + 1 < n and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def count_words(words: Iterable[str]) -> dict[bytes, int]:
    """The training input: each distinct word's UTF-8 bytes and how often it occurs.

    >>> count_words(["ab", " ab", "ab"])
    {b'ab': 2, b' ab': 1}
    """
    return dict(Counter(word.encode("utf-8") for word in words))


def _best(counts: Mapping[Pair, int]) -> Pair:
    """The most frequent pair; ties go to the smallest pair."""
    return max(counts, key=lambda pair: (counts[pair], -pair[0], -pair[1]))


def train_plain(word_counts: Mapping[bytes, int], num_merges: int) -> list[Pair]:
    """Learn up to ``num_merges`` merges by recounting all pairs after every merge (for teaching).

    Stops early, returning fewer merges, when no word has two tokens left.

    >>> train_plain({b"aaabdaaabac": 1}, 3)  # aa -> 256, ab -> 257 (tie, smaller pair), then 256 257
    [(97, 97), (97, 98), (256, 257)]
    """
    words = [list(word) for word in word_counts]
    weights = list(word_counts.values())
    merges: list[Pair] = []
    while len(merges) < num_merges:
        counts: dict[Pair, int] = {}
        for word, weight in zip(words, weights, strict=True):
            get_stats(word, counts, weight)
        if not counts:
            break
        pair = _best(counts)
        new_id = 256 + len(merges)
        words = [merge(word, pair, new_id) for word in words]
        merges.append(pair)
    return merges


def train_incremental(word_counts: Mapping[bytes, int], num_merges: int) -> list[Pair]:
    """Learn the same merges as :func:`train_plain`, updating pair counts incrementally.

    1. Count every pair once, remembering which words contain it.
    2. Pop the best pair from a max-heap of ``(count, pair)``; entries whose count is out of date
       are skipped (they were superseded by a later push).
    3. Merge it in the words that contain it only: subtract those words' old pairs, add their
       new pairs, and push the changed counts onto the heap.

    >>> train_incremental({b"aaabdaaabac": 1}, 3)
    [(97, 97), (97, 98), (256, 257)]
    """
    words = [list(word) for word in word_counts]
    weights = list(word_counts.values())
    counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)  # pair -> indices of words that may contain it
    for index, word in enumerate(words):
        for pair in pairwise(word):
            counts[pair] += weights[index]
            where[pair].add(index)
    # heapq is a min-heap: store -count, and the pair itself breaks ties towards the smallest pair.
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    merges: list[Pair] = []
    while len(merges) < num_merges and heap:
        negative_count, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -negative_count:
            continue  # stale entry: this pair's count changed after it was pushed
        new_id = 256 + len(merges)
        merges.append(pair)
        changed: set[Pair] = set()
        for index in where.pop(pair):
            word, weight = words[index], weights[index]
            merged = merge(word, pair, new_id)
            if len(merged) == len(word):
                continue  # the pair left this word during an earlier merge
            for old in pairwise(word):
                counts[old] -= weight
                changed.add(old)
            for new in pairwise(merged):
                counts[new] += weight
                changed.add(new)
                where[new].add(index)
            words[index] = merged
        for changed_pair in changed:
            count = counts[changed_pair]
            if count > 0:
                heapq.heappush(heap, (-count, changed_pair))
            else:
                del counts[changed_pair]
    return merges


def replay_merges(ids: Sequence[int], merges: Sequence[Pair]) -> list[int]:
    """Encode one word the textbook way: apply the merges to it in the order they were learnt.

    :class:`companion.tokenizer.BPETokenizer` encodes faster (lowest-rank adjacent pair first,
    as tiktoken does); the notebook checks both give the same ids.

    >>> replay_merges(list(b"aaabdaaabac"), [(97, 97), (97, 98), (256, 257)])
    [258, 100, 258, 97, 99]
    """
    out = list(ids)
    for rank, pair in enumerate(merges):
        if len(out) < 2:
            break
        out = merge(out, pair, 256 + rank)
    return out


def bpe_parts(
    token: bytes, ranks: Mapping[bytes, int], *, max_rank: int | None = None
) -> list[bytes]:
    """Split ``token`` into vocabulary pieces: join the lowest-rank adjacent pair until none is left.

    Only pieces of rank below ``max_rank`` (default: all) may be formed. Each byte must be in
    ``ranks`` for the result to be encodable. Among pairs of equal rank the leftmost is joined
    first (tiktoken's order). Rescanning every pair after each join would cost time quadratic
    in the length; instead, as the fast encoders do:

    1. every byte is a *part*; ``end[i]`` is where the part starting at byte ``i`` ends (0 once
       it has been joined into the part on its left), ``prev[i]`` where the part before it starts;
    2. a min-heap holds each adjacent pair ``token[start:stop]`` that is in the vocabulary, as
       the number ``(rank · size + start) · size + stop`` (one int compares faster than a tuple,
       and orders the same: by rank, then leftmost);
    3. pop the smallest: if the two parts it joins have changed since it was pushed, skip it
       (stale); otherwise join them and push the new part's pairs with its two neighbours.

    A join costs O(log n), so a piece of n bytes costs O(n log n).

    >>> bpe_parts(b"abc", {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"abc": 4})
    [b'abc']
    >>> bpe_parts(b"abc", {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"abc": 4}, max_rank=4)
    [b'a', b'bc']
    """
    limit = _NO_RANK if max_rank is None else max_rank
    n = len(token)
    size = n + 1  # positions run 0 … n
    end = list(range(1, n + 1))  # 1. each byte a part: [i, i + 1)
    prev = list(range(-1, n - 1))

    heap = [  # 2. the pairs of single bytes
        (rank * size + i) * size + i + 2
        for i in range(n - 1)
        if (rank := ranks.get(token[i : i + 2], limit)) < limit
    ]
    heapq.heapify(heap)
    while heap:  # 3.
        rank_start, stop = divmod(heapq.heappop(heap), size)
        start = rank_start % size
        middle = end[start]
        if middle == 0 or middle >= n or end[middle] != stop:
            continue  # stale: one of the two parts was joined to another since
        end[start], end[middle] = stop, 0  # join [start, middle) and [middle, stop)
        if stop < n:
            prev[stop] = start
        for left in (prev[start], start):  # the new part with its left, then right, neighbour
            if left < 0 or end[left] >= n:
                continue  # no neighbour on that side
            right = end[end[left]]
            rank = ranks.get(token[left:right], limit)
            if rank < limit:
                heapq.heappush(heap, (rank * size + left) * size + right)
    parts, i = [], 0
    while i < n:
        parts.append(token[i : end[i]])
        i = end[i]
    return parts
