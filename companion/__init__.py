"""companion: the tested package behind the course's notebooks.

Read the modules in course order; each one names the notebook that teaches it.

    environment   devices, seeds and the environment check        (00_start_here)
    notebook      the bootstrap cell every notebook starts with    (00_start_here)
    tokenizer     byte-level BPE, trained and cl100k_base          (01_tokenization)
    attention     scaled dot-product and multi-head attention      (02_attention)
    model         the GPT: blocks, embeddings, parameter counts    (03_transformer)
    corpus        the course's own generated world of facts        (04_pretraining)
    data          tokenised corpus, splits and batches             (04_pretraining)
    pretraining   the training loop every later stage reuses      (04_pretraining)
    checkpoints   safetensors checkpoints and the base model       (04_pretraining)

Importing ``companion`` does nothing else: no I/O, no network, no seeding. Import the module you
need, e.g. ``from companion.model import GPT``.
"""

__version__ = "0.1.0"
