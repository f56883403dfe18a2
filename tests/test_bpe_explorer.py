"""The BPE explorer widget, driven by setting its slider, and its static figure."""

from __future__ import annotations

import doctest

import matplotlib

matplotlib.use("Agg")
from itertools import pairwise

import matplotlib.pyplot as plt
import pytest

import companion.bpe_explorer
from companion.bpe_explorer import BPEExplorer, merges_figure, pieces_html, segment, show_token
from companion.tokenizer import BPETokenizer

TEXTBOOK = BPETokenizer([(97, 97), (97, 98), (256, 257)], pattern=None)


@pytest.fixture(scope="module")
def trained() -> BPETokenizer:
    return BPETokenizer.train("the cat and the hat and the bat " * 20, 266)


def test_docstring_examples_run():
    result = doctest.testmod(companion.bpe_explorer)
    assert result.attempted > 0 and result.failed == 0


def test_segment_by_hand():
    assert segment(TEXTBOOK, "aaabdaaabac", 0) == [bytes([b]) for b in b"aaabdaaabac"]
    assert segment(TEXTBOOK, "aaabdaaabac", 2) == [b"aa", b"ab", b"d", b"aa", b"ab", b"a", b"c"]
    assert segment(TEXTBOOK, "aaabdaaabac", 3) == [b"aaab", b"d", b"aaab", b"a", b"c"]
    with pytest.raises(ValueError, match=r"num_merges=4 is outside 0..3"):
        segment(TEXTBOOK, "aaab", 4)


def test_full_segmentation_is_the_tokenizers_encoding(trained):
    text = "the cat sat on the mat, and the hat"
    tokens = segment(trained, text, len(trained.merges))
    assert tokens == [trained.token_bytes(i) for i in trained.encode(text)]
    assert b"".join(tokens) == text.encode()


def test_slider_drives_the_view_and_labels():
    explorer = BPEExplorer(TEXTBOOK, "aaabdaaabac")
    assert explorer.slider.max == 3
    assert explorer.count_label.value.startswith("11 tokens for 11 characters")
    assert explorer.merge_label.value.startswith("no merges yet")
    assert explorer.view.value.count("<span") == 11
    explorer.slider.value = 1
    assert explorer.merge_label.value == "merge 1: 'a' + 'a' -> 'aa' (id 256)"
    assert explorer.count_label.value == "9 tokens for 11 characters (1.22 characters per token)"
    explorer.slider.value = 3
    assert explorer.pieces == [b"aaab", b"d", b"aaab", b"a", b"c"]
    assert explorer.merge_label.value == "merge 3: 'aa' + 'ab' -> 'aaab' (id 258)"
    assert explorer.view.value.count("<span") == 5
    assert ">aaab</span>" in explorer.view.value


def test_html_escapes_and_shows_whitespace():
    page = pieces_html([b"<b>", b" x\n"])
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert "·x↵" in page
    assert show_token(b"\xe2\x82") == "\ufffd"


def test_explorer_refuses_what_it_cannot_show():
    with pytest.raises(ValueError, match="no merges"):
        BPEExplorer(BPETokenizer([]), "abc")
    with pytest.raises(ValueError, match="non-empty text"):
        BPEExplorer(TEXTBOOK, "")


def test_figure_plots_the_token_counts(trained):
    text = "the cat and the hat"
    fig = merges_figure(trained, text, steps=[0, 10, len(trained.merges)])
    xs = list(fig.axes[0].lines[0].get_xdata())
    counts = list(fig.axes[0].lines[0].get_ydata())
    assert xs[0] == 0 and counts[0] == len(text.encode())
    assert xs[-1] == len(trained.merges) and counts[-1] == len(trained.encode(text))
    assert all(a >= b for a, b in pairwise(counts))  # merging never adds tokens
    assert fig.axes[0].get_xlabel() == "merges applied"
    plt.close(fig)
