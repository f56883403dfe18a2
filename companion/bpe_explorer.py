"""Watching BPE work: a text re-segmented after each merge, as a widget and as a static figure.

Taught in ``01_tokenization.ipynb`` ("Watching the merges: a widget"). :func:`segment` cuts a text
into the tokens a tokenizer makes with only its first ``k`` merges; :class:`BPEExplorer` puts a
slider over ``k`` next to the text drawn as coloured token boxes, names the latest merge and counts
the tokens. The widget's logic lives here (state + an ``observe`` handler), so pytest drives it by
setting ``explorer.slider.value``. :func:`merges_figure` is the static picture for the book, where
widgets render blank.

Left out: special tokens (the explorer shows ordinary text only) and animation.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from companion.bpe import replay_merges
from companion.tokenizer import BPETokenizer

_COLOURS = ("#cfe8ff", "#ffe0b3", "#d5f5d0", "#f7d0f0", "#fff3a8", "#e0d8ff")


def show_token(token: bytes) -> str:
    """A token's bytes as readable text: spaces as ``·``, newlines as ``↵``, tabs as ``→``.

    Bytes that are not whole UTF-8 characters show as U+FFFD.

    >>> show_token(b" the\\n")
    '·the↵'
    """
    text = token.decode("utf-8", errors="replace")
    return text.replace(" ", "·").replace("\n", "↵").replace("\r", "␍").replace("\t", "→")


def segment(tokenizer: BPETokenizer, text: str, num_merges: int) -> list[bytes]:
    """The token pieces of ``text`` (each token's bytes) when only the first ``num_merges``
    merges are applied.

    ``num_merges=0`` gives the single bytes; ``len(tokenizer.merges)`` the tokenizer's own
    encoding (special-token strings count as ordinary text).

    >>> tok = BPETokenizer([(97, 97), (97, 98), (256, 257)], pattern=None)
    >>> segment(tok, "aaabdaaabac", 1)
    [b'aa', b'a', b'b', b'd', b'aa', b'a', b'b', b'a', b'c']
    >>> segment(tok, "aaabdaaabac", 3)
    [b'aaab', b'd', b'aaab', b'a', b'c']
    """
    merges = tokenizer.merges
    if not 0 <= num_merges <= len(merges):
        raise ValueError(
            f"num_merges={num_merges} is outside 0..{len(merges)} (the tokenizer's merges)"
        )
    merges = merges[:num_merges]
    byte_id = {b: i for i, b in enumerate(tokenizer.byte_order)}  # byte -> its id
    pieces: list[bytes] = []
    for word in tokenizer.split(text):  # [text] when the tokenizer has no pattern
        ids = replay_merges([byte_id[b] for b in word.encode("utf-8")], merges)
        pieces.extend(tokenizer.token_bytes(i) for i in ids)
    return pieces


def pieces_html(pieces: Sequence[bytes]) -> str:
    """Token pieces as coloured inline boxes (HTML), one colour per position, cycling.

    >>> pieces_html([b"a", b" b"]).count("<span")
    2
    """
    boxes = [
        f'<span style="background:{_COLOURS[i % len(_COLOURS)]};padding:1px 2px;margin:1px;'
        f'border-radius:3px;font-family:monospace;white-space:pre">'
        f"{html.escape(show_token(piece))}</span>"
        for i, piece in enumerate(pieces)
    ]
    return '<div style="line-height:1.9">' + "".join(boxes) + "</div>"


class BPEExplorer:
    """A slider over the number of merges applied, the text as token boxes, and a token count.

    Display ``explorer.widget``. ``explorer.slider.value = k`` re-segments at once (the handler
    runs synchronously), so tests and notebooks can drive it without a browser.
    """

    def __init__(self, tokenizer: BPETokenizer, text: str, *, start: int = 0) -> None:
        import ipywidgets as widgets

        if not text:
            raise ValueError("give the explorer a non-empty text to segment")
        if not tokenizer.merges:
            raise ValueError("this tokenizer has no merges to step through; train it first")
        self.tokenizer, self.text = tokenizer, text
        self.pieces: list[bytes] = []  # the bytes of each token, in order
        n = len(tokenizer.merges)
        self.slider = widgets.IntSlider(
            value=min(max(start, 0), n), min=0, max=n, description="merges", continuous_update=True
        )
        self.view = widgets.HTML()
        self.merge_label = widgets.Label()
        self.count_label = widgets.Label()
        self.slider.observe(self.update, names="value")
        self.widget = widgets.VBox([self.slider, self.merge_label, self.count_label, self.view])
        self.update()

    def latest_merge(self) -> str:
        """Words for the merge the slider stopped at, e.g. ``merge 3: 'aa' + 'ab' -> 'aaab'``."""
        k = self.slider.value
        if k == 0:
            return "no merges yet: every byte is its own token"
        a, b = self.tokenizer.merges[k - 1]
        left, right = (show_token(self.tokenizer.token_bytes(i)) for i in (a, b))
        new_id = 256 + k - 1
        return f"merge {k}: {left!r} + {right!r} -> {left + right!r} (id {new_id})"

    def update(self, change: dict | None = None) -> None:
        """Handler for the slider: re-segment the text and rewrite the labels."""
        self.pieces = segment(self.tokenizer, self.text, self.slider.value)
        self.view.value = pieces_html(self.pieces)
        self.merge_label.value = self.latest_merge()
        n_chars = len(self.text)
        self.count_label.value = (
            f"{len(self.pieces)} tokens for {n_chars} characters "
            f"({n_chars / len(self.pieces):.2f} characters per token)"
        )


def merges_figure(tokenizer: BPETokenizer, text: str, steps: Sequence[int]):
    """Tokens in ``text`` against merges applied (top) and the segmentation at each of ``steps``.

    Returns the matplotlib ``Figure``; ``fig.axes[0].lines[0].get_ydata()`` are the token counts.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(tokenizer.merges)
    xs = sorted({*range(0, n + 1, max(1, n // 100)), n, *steps})
    segments = {k: segment(tokenizer, text, k) for k in xs}  # xs includes every step
    counts = [len(segments[k]) for k in xs]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 3 + 0.55 * len(steps)), height_ratios=[2.2, 0.5 * len(steps) + 0.4]
    )
    top.plot(xs, counts, marker=".", markersize=3)
    top.set_xlabel("merges applied")
    top.set_ylabel("tokens in the text")
    top.set_title(f"{len(text)} characters re-segmented as merges are added")
    top.grid(alpha=0.3)
    rows = [[show_token(t) for t in segments[k]] for k in steps]
    width = max(sum(len(label) for label in labels) for labels in rows)
    bottom.set_xlim(-12, width + 1)
    bottom.set_ylim(len(steps), -0.2)
    bottom.axis("off")
    for row, (k, labels) in enumerate(zip(steps, rows, strict=True)):
        bottom.text(-1, row + 0.4, f"{k} merges", ha="right", va="center", fontsize=8)
        x = 0
        for i, label in enumerate(labels):
            colour = _COLOURS[i % len(_COLOURS)]
            bottom.add_patch(
                Rectangle((x, row + 0.05), len(label), 0.7, fc=colour, ec="0.5", lw=0.5)
            )
            bottom.text(
                x + len(label) / 2,
                row + 0.4,
                label,
                ha="center",
                va="center",
                fontsize=7,
                family="monospace",
            )
            x += len(label)
    fig.tight_layout()
    return fig
