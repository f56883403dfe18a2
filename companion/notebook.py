"""Helpers for the notebooks themselves: the bootstrap cell and the course map.

Taught in ``00_start_here.ipynb``. Every notebook's first code cell is :data:`BOOTSTRAP`,
character for character (a test checks it): on Google Colab it installs this package from the
repository; anywhere else it does nothing, because ``pip install -e .`` already did.
"""

from __future__ import annotations

REPOSITORY = "https://github.com/open-llm-course/llm-course"

BOOTSTRAP = f"""\
# Setup: on Colab, install the course's companion package; elsewhere this cell does nothing.
import sys

if "google.colab" in sys.modules:
    get_ipython().run_line_magic(
        "pip", "install -q git+{REPOSITORY}"
    )"""

CHAPTERS: tuple[tuple[str, str, str], ...] = (
    ("00_start_here", "Start here", "the map of the course and an environment check"),
    ("01_tokenization", "Tokenization", "a byte-level BPE tokenizer that reproduces cl100k_base"),
    ("02_attention", "Attention", "scaled dot-product and multi-head attention"),
    ("03_transformer", "The transformer", "blocks stacked into a GPT equal to GPT-2"),
    ("04_pretraining", "Pretraining", "the course corpus and a base model trained on it"),
    (
        "05_sft",
        "Supervised fine-tuning",
        "a chat template and the chat model that answers and stops",
    ),
    ("07_inference", "Inference", "sampling, a KV cache, streaming, hallucination measured"),
)
"""(notebook stem, title, what you build) for each chapter that exists, in course order."""

COURSE_MAP: tuple[tuple[str, str], ...] = (
    ("Tokens", "text → integers"),
    ("Attention", "tokens look at\neach other"),
    ("Transformer", "blocks stacked\ninto a GPT"),
    ("Pretraining", "random → base\nmodel"),
    ("SFT", "base → chat\nmodel"),
    ("RLHF", "chat → aligned\nmodel"),
    ("Inference", "sampling, KV cache,\nhallucination"),
)
"""(stage, what happens there) for the seven stages of the course, in order."""


def course_map_figure():
    """Draw the course as one row of stages with the model carried from left to right.

    Returns the matplotlib ``Figure`` (the notebook displays it; tests inspect it).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    n = len(COURSE_MAP)
    fig, ax = plt.subplots(figsize=(13, 3.2))
    ax.set_xlim(-0.2, n * 1.9)
    ax.set_ylim(-1.2, 1.5)
    ax.axis("off")
    colours = plt.get_cmap("viridis")
    for i, (stage, what) in enumerate(COURSE_MAP):
        x = i * 1.9
        box = FancyBboxPatch(
            (x, 0), 1.5, 1.1, boxstyle="round,pad=0.05", fc=colours(0.15 + 0.7 * i / (n - 1))
        )
        ax.add_patch(box)
        ax.text(x + 0.75, 0.72, stage, ha="center", va="center", color="white", weight="bold")
        ax.text(x + 0.75, 0.3, what, ha="center", va="center", color="white", fontsize=8)
        ax.text(x + 0.75, 1.3, f"ch. {i + 1}", ha="center", fontsize=8, color="0.3")
        if i < n - 1:
            arrow = FancyArrowPatch((x + 1.55, 0.55), (x + 1.85, 0.55), arrowstyle="-|>")
            ax.add_patch(arrow)
    ax.annotate(
        "",
        xy=(n * 1.9 - 0.4, -0.5),
        xytext=(3 * 1.9, -0.5),
        arrowprops={"arrowstyle": "-|>", "lw": 2, "color": "0.35"},
    )
    ax.text(
        (3 * 1.9 + n * 1.9 - 0.4) / 2,
        -0.95,
        "one small GPT, trained here, carried through every later stage:\n"
        "random → base → chat → aligned",
        ha="center",
        va="center",
        fontsize=9,
        color="0.25",
    )
    fig.tight_layout()
    return fig
