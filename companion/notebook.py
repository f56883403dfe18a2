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
    get_ipython().run_line_magic("pip", "install -q git+{REPOSITORY}")"""

CHAPTERS: tuple[tuple[str, str, str], ...] = (
    ("00_start_here", "Start here", "the map of the course and an environment check"),
    ("01_tokenization", "Tokenization", "a byte-level BPE tokenizer that reproduces cl100k_base"),
    ("02_attention", "Attention", "scaled dot-product and multi-head attention"),
    ("03_transformer", "The transformer", "blocks stacked into a GPT equal to GPT-2"),
    ("04_pretraining", "Pretraining", "the course corpus and a base model trained on it"),
)
"""(notebook stem, title, what you build) for each chapter that exists, in course order."""
