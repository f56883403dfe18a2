"""The BPE algorithm (companion.bpe): the textbook case by hand, and the two trainers agreeing."""

from __future__ import annotations

import doctest
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import companion.bpe
from companion.bpe import (
    bpe_parts,
    count_words,
    get_stats,
    merge,
    replay_merges,
    train_incremental,
    train_plain,
)
from companion.pretokenize import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN
from companion.tokenizer import BPETokenizer

SMALL_TEXT = (
    "The cat sat on the mat. The cat's hat is flat; that's that! 12345 + 678 = 13023.\n"
    "  Indented line with    spaces, tabs\tand\r\nwindows line ends. Ünïcödé, 東京, émoji 🙂🙂.\n"
) * 3


def test_docstring_examples_run():
    result = doctest.testmod(companion.bpe)
    assert result.attempted > 0 and result.failed == 0


def test_aaabdaaabac_by_hand():
    # Wikipedia's example. Round 1: (a, a) occurs 4 times ("aaab" twice, overlapping pairs counted)
    # -> Z=256: "ZabdZabac". Round 2: (Z, a), (a, b) each occur twice; the smaller pair (97, 98)
    # wins the tie -> Y=257: "ZYdZYac". Round 3: (Z, Y) twice -> X=258: "XdXac".
    ids = list(b"aaabdaaabac")
    assert get_stats(ids)[(97, 97)] == 4
    merges = train_plain({b"aaabdaaabac": 1}, 3)
    assert merges == [(97, 97), (97, 98), (256, 257)]
    assert train_incremental({b"aaabdaaabac": 1}, 3) == merges
    assert replay_merges(ids, merges) == [258, ord("d"), 258, ord("a"), ord("c")]
    tok = BPETokenizer.train("aaabdaaabac", 259, pattern=None)
    assert tok.merges == merges
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.decode([258]) == "aaab"


def test_merge_takes_overlapping_occurrences_left_to_right():
    assert merge([5, 5, 5], (5, 5), 6) == [6, 5]
    assert merge([5, 5, 5, 5], (5, 5), 6) == [6, 6]
    assert merge([1, 2, 1], (2, 3), 9) == [1, 2, 1]


def test_count_words_weights_repeated_words():
    assert count_words(["ab", " ab", "ab"]) == {b"ab": 2, b" ab": 1}


def test_bpe_parts_respects_max_rank():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"abc": 4}
    assert bpe_parts(b"abc", ranks) == [b"abc"]
    assert bpe_parts(b"abc", ranks, max_rank=4) == [b"a", b"bc"]
    assert bpe_parts(b"", ranks) == []


def test_bpe_parts_joins_the_leftmost_of_equal_ranks_and_skips_stale_pairs():
    ranks = {b"a": 0, b"aa": 1, b"aaaa": 2, b"b": 3, b"ab": 4}
    assert bpe_parts(b"aaa", ranks) == [b"aa", b"a"]  # (0, 1) before (1, 2), which is then stale
    assert bpe_parts(b"aaaaa", ranks) == [b"aaaa", b"a"]  # aa aa a, then aa + aa
    assert bpe_parts(b"aab", ranks) == [b"aa", b"b"]  # aa (rank 1) before ab (rank 4)
    assert bpe_parts(b"bab", ranks) == [b"b", b"ab"]
    assert bpe_parts(b"a" * 9, ranks) == [b"aaaa", b"aaaa", b"a"]
    assert bpe_parts(b"xa", ranks) == [b"x", b"a"]  # a byte outside the ranks stays alone


@pytest.mark.parametrize("pattern", [GPT4_SPLIT_PATTERN, GPT2_SPLIT_PATTERN, None])
@pytest.mark.parametrize("vocab_size", [260, 300, 400])
def test_incremental_and_plain_trainers_learn_the_same_merges(pattern, vocab_size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small text may run out of pairs: both stop alike
        fast = BPETokenizer.train(SMALL_TEXT, vocab_size, pattern=pattern, method="incremental")
        slow = BPETokenizer.train(SMALL_TEXT, vocab_size, pattern=pattern, method="plain")
    assert fast.merges == slow.merges
    assert len(fast.merges) > 0


@settings(database=None, max_examples=60, deadline=None)
@given(
    words=st.dictionaries(
        st.binary(min_size=1, max_size=12).map(lambda b: bytes(x % 4 + 97 for x in b)),
        st.integers(1, 5),
        min_size=1,
        max_size=8,
    ),
    num_merges=st.integers(0, 30),
)
def test_trainers_agree_on_random_word_counts(words, num_merges):
    # A four-letter alphabet makes ties and overlapping pairs ("aaaa") common.
    assert train_incremental(words, num_merges) == train_plain(words, num_merges)


@settings(database=None, max_examples=60, deadline=None)
@given(
    text=st.text(alphabet="abc ", min_size=1, max_size=80),
    probe=st.text(alphabet="abc ", max_size=40),
    extra=st.integers(1, 40),
)
def test_rank_based_encoding_equals_replaying_the_merges(text, probe, extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = BPETokenizer.train(text, 256 + extra, pattern=GPT4_SPLIT_PATTERN)
    for piece in tok._regex.findall(probe + " " + text):
        assert tok.encode_ordinary(piece) == replay_merges(list(piece.encode()), tok.merges)


def test_training_stops_cleanly_and_says_so_when_pairs_run_out():
    with pytest.warns(UserWarning, match=r"stopped after 1 of 10 merges.*vocab_size is 257"):
        tok = BPETokenizer.train("ab", 266, pattern=None)
    assert tok.merges == [(97, 98)]
    assert tok.vocab_size == 257
    assert train_plain({b"ab": 1}, 10) == train_incremental({b"ab": 1}, 10) == [(97, 98)]
