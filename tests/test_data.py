"""The data pipeline: the shipped course tokenizer, token tensors, the split and the batch sampler."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch

import companion.corpus
import companion.data
from companion.char_tokenizer import CharTokenizer
from companion.corpus import END_OF_TEXT, generate_corpus
from companion.data import (
    COURSE_VOCAB_SIZE,
    SPECIAL_TOKENS,
    course_tokenizer_path,
    encode_corpus,
    get_batch,
    load_course_tokenizer,
    main,
    train_val_split,
    write_course_tokenizer,
)
from companion.environment import make_generator


def test_docstring_examples_run():
    result = doctest.testmod(companion.data)
    assert result.attempted > 0 and result.failed == 0


# --- the batch sampler -------------------------------------------------------------------------


@pytest.fixture
def stream():
    """1,000 distinct ids in random order: a window's first id tells where it starts."""
    return torch.randperm(1000, generator=make_generator(123))


def test_batch_windows_are_real_slices_and_targets_are_shifted(stream):
    B, T = 16, 32
    x, y = get_batch(stream, B, T, generator=make_generator(0), device="cpu")
    assert x.shape == (B, T) and y.shape == (B, T)
    assert x.dtype == torch.long and y.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])
    position = torch.argsort(stream)  # id -> where it sits in the stream
    for b in range(B):
        s = int(position[x[b, 0]])
        assert torch.equal(x[b], stream[s : s + T])
        assert torch.equal(y[b], stream[s + 1 : s + T + 1])


def test_batches_are_reproducible_from_the_generator(stream):
    a = get_batch(stream, 8, 16, generator=make_generator(7), device="cpu")
    b = get_batch(stream, 8, 16, generator=make_generator(7), device="cpu")
    c = get_batch(stream, 8, 16, generator=make_generator(8), device="cpu")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    generator = make_generator(7)
    first, second = (
        get_batch(stream, 8, 16, generator=generator, device="cpu")[0],
        get_batch(stream, 8, 16, generator=generator, device="cpu")[0],
    )
    assert torch.equal(first, a[0]) and not torch.equal(first, second)


def test_every_start_is_reachable_and_none_overflows():
    tokens = torch.arange(10)
    T = 6  # starts 0..3 fit a window of 6 inputs plus one target
    x, y = get_batch(tokens, 400, T, generator=make_generator(0), device="cpu")
    assert set(x[:, 0].tolist()) == {0, 1, 2, 3}
    assert int(y.max()) == 9
    x, y = get_batch(
        tokens, 3, 9, generator=make_generator(0), device="cpu"
    )  # exactly one window fits
    assert torch.equal(x, torch.arange(9).expand(3, 9)) and torch.equal(y, x + 1)


def test_batch_lands_on_the_requested_device(stream):
    # "meta" (tensors without values) stands in for a GPU: the stream is on the CPU, so a batch
    # that stayed there would fail this
    x, y = get_batch(stream, 2, 4, generator=make_generator(0), device="meta")
    assert x.device.type == "meta" and y.device.type == "meta"


def test_too_short_a_stream_raises_a_clear_error():
    with pytest.raises(ValueError, match=r"fewer than context_length \+ 1 = 9"):
        get_batch(torch.arange(8), 2, 8, generator=make_generator(0))


@pytest.mark.parametrize(
    ("tokens", "batch_size", "context_length", "match"),
    [
        (torch.zeros(2, 50, dtype=torch.long), 2, 4, "1-D tensor"),
        (torch.zeros(50), 2, 4, "integer ids"),
        ([1, 2, 3, 4, 5, 6], 2, 4, "1-D tensor"),
        (torch.arange(50), 0, 4, "batch_size"),
        (torch.arange(50), 2, 0, "context_length"),
    ],
)
def test_bad_batch_arguments_raise(tokens, batch_size, context_length, match):
    with pytest.raises(ValueError, match=match):
        get_batch(tokens, batch_size, context_length, generator=make_generator(0), device="cpu")


# --- the split ---------------------------------------------------------------------------------


def test_split_sizes_and_contiguity():
    tokens = torch.arange(1001)
    train, val = train_val_split(tokens, 0.1)
    assert len(train) == 901 and len(val) == 100
    assert torch.equal(torch.cat([train, val]), tokens)
    train, val = train_val_split(tokens)
    assert len(val) == 100
    train, val = train_val_split(torch.arange(10), 0.25)
    assert val.tolist() == [8, 9]  # round(2.5) == 2: Python rounds halves to even
    assert len(train) + len(val) == 10


@pytest.mark.parametrize(
    ("n", "fraction", "match"),
    [(100, 0.0, "between 0 and 1"), (100, 1.0, "between 0 and 1"), (3, 0.1, "empty split")],
)
def test_bad_split_raises(n, fraction, match):
    with pytest.raises(ValueError, match=match):
        train_val_split(torch.arange(n), fraction)


# --- the character tokenizer -------------------------------------------------------------------


def test_char_tokenizer_round_trip_and_errors():
    text = "To be, or not to be:\nthat is the question."
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    assert list(tok.chars) == sorted(set(text))
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(torch.tensor(tok.encode("tot"))) == "tot"
    assert encode_corpus(text, tok).tolist() == tok.encode(text)
    with pytest.raises(ValueError, match="'Z' is not in"):
        tok.encode("Zebra")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer(["a", "a"])


# --- the course tokenizer ----------------------------------------------------------------------


def test_shipped_tokenizer_is_what_the_documented_command_writes(tmp_path):
    """``python -m companion.data --write-tokenizer`` must reproduce the asset byte for byte."""
    fresh = write_course_tokenizer(tmp_path / "course_tokenizer.txt")
    assert fresh.read_bytes() == course_tokenizer_path().read_bytes()


def test_command_line_writes_and_reports(tmp_path, capsys):
    main(["--write-tokenizer", "--path", str(tmp_path / "tok.txt"), "--stats"])
    out = capsys.readouterr().out
    assert (tmp_path / "tok.txt").read_bytes() == course_tokenizer_path().read_bytes()
    assert "characters per token" in out and "tokens:" in out
    with pytest.raises(SystemExit):
        main([])


def test_course_tokenizer_has_the_special_tokens():
    tok = load_course_tokenizer()
    assert tok is load_course_tokenizer()  # cached
    assert tok.vocab_size == COURSE_VOCAB_SIZE
    for special in SPECIAL_TOKENS:
        ids = tok.encode(special, allowed_special="all")
        assert len(ids) == 1 and ids[0] >= COURSE_VOCAB_SIZE - len(SPECIAL_TOKENS)
    with pytest.raises(ValueError):
        tok.encode("<|user|>")  # user text cannot inject control tokens


def test_encoded_corpus_round_trips_and_is_compact():
    text = generate_corpus(0)
    tokens = encode_corpus()
    tok = load_course_tokenizer()
    assert tokens.dtype == torch.long and tokens.ndim == 1
    assert int(tokens.min()) >= 0 and int(tokens.max()) < tok.vocab_size
    assert tok.decode(tokens.tolist()) == text
    eot = tok.encode(END_OF_TEXT, allowed_special="all")[0]
    assert int((tokens == eot).sum()) == text.count(END_OF_TEXT)
    assert len(text) / len(tokens) > 3.0  # a tokenizer fitted to the world compresses it well
    tokens[0] = -1  # the cached tensor is not handed out: callers may modify theirs
    assert int(encode_corpus()[0]) != -1


def test_documented_sizes_are_the_measured_ones():
    """docs/corpus.md and the corpus module state the size; keep them true."""
    stats = companion.data.corpus_stats()
    assert stats["vocab size"] == COURSE_VOCAB_SIZE
    docs = (Path(__file__).resolve().parents[1] / "docs" / "corpus.md").read_text(encoding="utf-8")
    for text in (docs, companion.corpus.__doc__):
        assert f"{stats['characters']:,}" in text
        assert f"{stats['tokens']:,}" in text
        assert f"{stats['characters per token']:.2f}" in text


def test_bank_is_one_token_in_both_senses():
    """Chapter 2 compares the hidden state of the same token id in two contexts."""
    tok = load_course_tokenizer()
    (bank,) = tok.encode(" bank")
    river = tok.encode("Mira sat on the bank of the river Elm.")
    money = tok.encode("Mira opened an account at the bank in Thornby.")
    assert river.count(bank) == 1 and money.count(bank) == 1
