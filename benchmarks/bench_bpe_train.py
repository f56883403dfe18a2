"""BPE training time: the incremental trainer, the plain recount and Hugging Face ``tokenizers``.

Run: ``taskset -c 0 python benchmarks/bench_bpe_train.py [--text FILE] [--skip-plain]``.
All three train on the same text (default: the first 1,000,000 characters of the course corpus,
``generate_corpus(seed=0)``; ``--text FILE`` reads the first 1,000,000 characters of a UTF-8
file instead), byte-level, cut into pre-tokens by GPT-4's regex, to vocabularies of 512 and
1,024 (no special tokens). Hugging Face's trainer (Rust) is the compiled reference: a ``BPE``
model with ``pre_tokenizers.Split`` on the same regex followed by ``ByteLevel`` and no
normaliser, fed the text line by line. Prints the seconds (best of ``--repeat`` runs; the plain recount runs once), the
ratios ours/HF and plain/incremental, and how many learnt tokens the trainers share. Nothing is
written to disk. The course corpus has only a few hundred distinct words, so it runs out of pairs
before 1,024 (the final vocabulary sizes are printed); use ``--text`` on natural prose to see the
full 1,024.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from companion.corpus import generate_corpus
from companion.pretokenize import GPT4_SPLIT_PATTERN
from companion.tokenizer import BPETokenizer

N_CHARS = 1_000_000


def _gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what ``ByteLevel`` stores)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


_UNICODE_TO_BYTE = {c: b for b, c in _gpt2_byte_to_unicode().items()}  # built once, not timed


def train_hf(text: str, vocab_size: int) -> set[bytes]:
    """Train Hugging Face's byte-level BPE; returns its vocabulary as bytes."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # line by line: its fastest input (one 1 MB string is about 1.5 times slower)
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return {bytes(_UNICODE_TO_BYTE[c] for c in token) for token in tokenizer.get_vocab()}


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    """The fastest of ``repeat`` calls, in seconds, and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def ours(text: str, vocab_size: int, method: str) -> BPETokenizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # running out of pairs is reported in the table
        return BPETokenizer.train(text, vocab_size, method=method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, help="UTF-8 file to train on (first 1e6 characters)")
    parser.add_argument("--vocab", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--skip-plain", action="store_true", help="skip the slow plain recount")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.text is None:
        text, source = generate_corpus(seed=0)[:N_CHARS], "course corpus (seed 0)"
    else:
        text, source = args.text.read_text(encoding="utf-8")[:N_CHARS], str(args.text)
    print(f"text: {source}, {len(text):,} characters, {len(text.encode()):,} bytes")
    header = f"{'vocab':>6} {'method':<12} {'seconds':>8} {'final V':>8} {'ours/HF':>8}"
    print(header + f" {'plain/incr':>10} {'shared with HF':>15}")
    for vocab_size in args.vocab:
        hf_s, hf_vocab = best_of(args.repeat, lambda v=vocab_size: train_hf(text, v))
        print(f"{vocab_size:>6} {'HF (Rust)':<12} {hf_s:>8.3f} {len(hf_vocab):>8}")
        methods = ["incremental"] + ([] if args.skip_plain else ["plain"])
        incremental_s = None
        for method in methods:
            repeat = args.repeat if method == "incremental" else 1
            seconds, tok = best_of(repeat, lambda v=vocab_size, m=method: ours(text, v, m))
            incremental_s = seconds if method == "incremental" else incremental_s
            shared = len({tok.token_bytes(i) for i in range(tok.vocab_size)} & hf_vocab)
            ratio = "" if method == "incremental" else f"{seconds / incremental_s:.1f}"
            print(
                f"{vocab_size:>6} {method:<12} {seconds:>8.3f} {tok.vocab_size:>8} "
                f"{seconds / hf_s:>8.2f} {ratio:>10} {shared / tok.vocab_size:>14.0%}"
            )


if __name__ == "__main__":
    main()
