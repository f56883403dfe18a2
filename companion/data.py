"""From corpus to training batches: the course tokenizer, token tensors, splits and random windows.

Taught in ``04_pretraining.ipynb``. The pipeline every training run uses::

    text = generate_corpus(0)                   # str, about 2 million characters
    tokens = encode_corpus(text)                # (N,) int64, the course tokenizer's ids
    train, val = train_val_split(tokens, 0.1)   # first 90 % / last 10 %, contiguous
    x, y = get_batch(train, 16, 128, generator=make_generator(0))  # (B, T) each, y = x shifted

The *course tokenizer* is a byte-level BPE (:class:`companion.tokenizer.BPETokenizer`) trained on
the course corpus and shipped as a text file in ``companion/assets``, so every chapter (and Colab,
where only the package is installed) tokenises the same way. It is reproducible:
``python -m companion.data --write-tokenizer`` trains it again and rewrites the file byte for byte
(a test checks the shipped file against a fresh training). ``python -m companion.data --stats``
prints the corpus's size in characters and tokens.

Left out: streaming corpora too large for memory, document-aware batching (windows cross
``<|endoftext|>`` boundaries, as in GPT-2's training), and padding (all windows have the same
length).
"""

from __future__ import annotations

import argparse
import importlib.resources
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

from companion.char_tokenizer import CharTokenizer
from companion.corpus import END_OF_TEXT, generate_corpus
from companion.environment import DeviceLike, resolve_device
from companion.tokenizer import BPETokenizer

COURSE_CORPUS_SEED = 0  # the corpus every chapter trains on: generate_corpus(COURSE_CORPUS_SEED)
COURSE_VOCAB_SIZE = 768  # V of the course tokenizer: 256 bytes + 508 merges + 4 special tokens
SPECIAL_TOKENS: tuple[str, ...] = (END_OF_TEXT, "<|user|>", "<|assistant|>", "<|end|>")
TOKENIZER_ASSET = "course_tokenizer.txt"  # file name inside companion/assets


def train_course_tokenizer() -> BPETokenizer:
    """Train the course tokenizer from scratch on the course corpus (deterministic; under a second).

    ``COURSE_VOCAB_SIZE`` counts the 256 bytes, the merges and the four special tokens
    ``<|endoftext|>``, ``<|user|>``, ``<|assistant|>``, ``<|end|>`` (ids 764-767). Why 768 and not
    more: the world has only about 300 distinct words, so after about 730 merges every word is one
    token and BPE runs out of pairs (V = 984, 4.07 characters per token); 768 (a multiple of 64)
    keeps the rarer words in pieces at 3.58 characters per token and a smaller embedding table.
    """
    text = generate_corpus(COURSE_CORPUS_SEED)
    return BPETokenizer.train(text, COURSE_VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS))


def course_tokenizer_path() -> Path:
    """Where the shipped tokenizer file lives in the source tree (for rewriting it)."""
    return Path(__file__).resolve().parent / "assets" / TOKENIZER_ASSET


def write_course_tokenizer(path: str | Path | None = None) -> Path:
    """Train the course tokenizer and save it to ``path`` (default: the shipped asset)."""
    target = Path(path) if path is not None else course_tokenizer_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    train_course_tokenizer().save(target)
    return target


@lru_cache(maxsize=1)
def load_course_tokenizer() -> BPETokenizer:
    """The course tokenizer, read once from the file shipped in ``companion/assets``.

    >>> tok = load_course_tokenizer()
    >>> tok.vocab_size
    768
    >>> tok.decode(tok.encode("Mira lives in the town of Thornby."))
    'Mira lives in the town of Thornby.'
    """
    resource = importlib.resources.files("companion") / "assets" / TOKENIZER_ASSET
    if not resource.is_file():
        raise FileNotFoundError(
            f"the course tokenizer file {TOKENIZER_ASSET} is missing from companion/assets; "
            "recreate it with `python -m companion.data --write-tokenizer`"
        )
    with importlib.resources.as_file(resource) as path:
        return BPETokenizer.load(path)


@lru_cache(maxsize=2)
def _encode_course_corpus(seed: int) -> torch.Tensor:
    return encode_corpus(generate_corpus(seed), load_course_tokenizer())


def encode_corpus(
    text: str | None = None, tokenizer: BPETokenizer | CharTokenizer | None = None
) -> torch.Tensor:
    """Tokenise ``text`` (default: the course corpus) into a 1-D ``torch.long`` tensor (N,).

    ``tokenizer`` defaults to :func:`load_course_tokenizer`; ``<|endoftext|>`` in the text becomes
    its single special id (the only special token allowed here). A :class:`CharTokenizer` works
    too. The default corpus's tokens are cached; a fresh tensor is returned every call.

    >>> encode_corpus("aab", CharTokenizer.from_text("ab"))
    tensor([0, 0, 1])
    """
    if text is None and tokenizer is None:
        return _encode_course_corpus(COURSE_CORPUS_SEED).clone()
    text = generate_corpus(COURSE_CORPUS_SEED) if text is None else text
    tokenizer = load_course_tokenizer() if tokenizer is None else tokenizer
    ids = tokenizer.encode(text, allowed_special={END_OF_TEXT})
    return torch.tensor(ids, dtype=torch.long)


def train_val_split(
    tokens: torch.Tensor, val_fraction: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a token stream into a contiguous head (train) and tail (validation).

    The last ``round(N * val_fraction)`` tokens are the validation set; a contiguous split (not a
    random one) keeps every validation window made of text the model never trained on. The two
    parts are views of ``tokens`` (no copy).

    >>> train, val = train_val_split(torch.arange(10), 0.2)
    >>> train.tolist(), val.tolist()
    ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
    """
    _check_tokens(tokens)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be between 0 and 1, e.g. 0.1")
    n_val = round(len(tokens) * val_fraction)
    if n_val == 0 or n_val == len(tokens):
        raise ValueError(
            f"val_fraction={val_fraction} of {len(tokens)} tokens leaves an empty split; "
            "use more tokens or a val_fraction nearer 0.5"
        )
    return tokens[:-n_val], tokens[-n_val:]


def get_batch(
    tokens: torch.Tensor,
    batch_size: int,
    context_length: int,
    *,
    generator: torch.Generator,
    device: DeviceLike = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of the stream: inputs ``x`` and next-token targets ``y``.

    Window ``b`` starts at a position ``s`` drawn uniformly from ``generator`` (every start with
    a full window fits, ``0 ≤ s ≤ N - T - 1``): ``x[b] = tokens[s : s+T]``, ``y[b] =
    tokens[s+1 : s+T+1]``. Both are ``(B, T)`` long tensors on ``device`` (default: the best
    available, as for :func:`companion.pretraining.init_model`); the same generator state gives
    the same batch.

    >>> from companion.environment import make_generator
    >>> x, y = get_batch(torch.arange(100), 2, 4, generator=make_generator(0), device="cpu")
    >>> x.shape, bool((y == x + 1).all())
    (torch.Size([2, 4]), True)
    """
    _check_tokens(tokens)
    for name, value in (("batch_size", batch_size), ("context_length", context_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    n = len(tokens)
    if n < context_length + 1:
        raise ValueError(
            f"the token stream has {n} tokens, fewer than context_length + 1 = "
            f"{context_length + 1} that one window of inputs and targets needs; "
            "use a shorter context_length or more text"
        )
    starts = torch.randint(
        n - context_length, (batch_size,), generator=generator, device=generator.device
    )
    offsets = torch.arange(context_length + 1, device=tokens.device)  # (T+1,)
    windows = tokens[starts.to(tokens.device)[:, None] + offsets]  # (B, 1) + (T+1,) -> (B, T+1)
    target = resolve_device(device)
    x = windows[:, :-1].to(target)  # (B, T)
    y = windows[:, 1:].to(target)  # (B, T)
    return x, y


def _check_tokens(tokens: torch.Tensor) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1:
        raise ValueError(
            f"tokens must be a 1-D tensor of token ids, got {type(tokens).__name__}"
            f"{' of shape ' + str(tuple(tokens.shape)) if isinstance(tokens, torch.Tensor) else ''}; "
            "flatten it or use encode_corpus(text)"
        )
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must hold integer ids, got dtype {tokens.dtype}; use .long()")


def corpus_stats(seed: int = COURSE_CORPUS_SEED) -> dict[str, float]:
    """Size of the corpus in characters, documents and course-tokenizer tokens."""
    text = generate_corpus(seed)
    n_tokens = len(_encode_course_corpus(seed))
    return {
        "characters": len(text),
        "documents": text.count(END_OF_TEXT) + 1,
        "tokens": n_tokens,
        "characters per token": len(text) / n_tokens,
        "vocab size": load_course_tokenizer().vocab_size,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m companion.data --write-tokenizer [--path P]`` or ``--stats``."""
    parser = argparse.ArgumentParser(prog="python -m companion.data", description=__doc__)
    parser.add_argument("--write-tokenizer", action="store_true", help="retrain and save it")
    parser.add_argument("--path", type=Path, default=None, help="where to write (default: asset)")
    parser.add_argument("--stats", action="store_true", help="print the corpus size")
    args = parser.parse_args(argv)
    if not (args.write_tokenizer or args.stats):
        parser.error("nothing to do: pass --write-tokenizer and/or --stats")
    if args.write_tokenizer:
        print(f"wrote {write_course_tokenizer(args.path)}")
    if args.stats:
        for key, value in corpus_stats().items():
            print(f"{key}: {value:,.3f}" if isinstance(value, float) else f"{key}: {value:,}")


if __name__ == "__main__":
    main()
