"""Benchmark the course's training loop against nanoGPT on character-level Tiny Shakespeare.

Trains ``companion.model.GPT`` with ``companion.pretraining.train`` (the loop every chapter uses)
in nanoGPT's CPU configuration from its README::

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

i.e. 4 layers, 4 heads, d_model 128, context 64, batch 12, AdamW lr 1e-3 with 100 warm-up
iterations and cosine decay to 1e-4 over 2,000 iterations, betas (0.9, 0.99), weight decay 0.1,
gradient clipping 1.0, no dropout, no biases (nanoGPT's default ``bias=False``); the first 90 % of
the characters train, the last 10 % validate, evaluation every 250 iterations on 20 batches.
It prints tokens/s, the median ms per iteration, peak memory (RSS), wall time and the final
validation loss next to nanoGPT's reference figures on a 2-core machine, with the ratios. nanoGPT
cannot run here (no downloads), so two figures measured in the same run keep the comparison
honest: the validation loss over the whole split (the 20-batch figure has sampling noise), and
the same update as a bare loop, whose ratio to ``train``'s step time is the loop's overhead.

Run from the repository root (pin a core with ``taskset -c 1`` to measure one core)::

    python benchmarks/bench_shakespeare.py [--data PATH] [--iters N] [--threads N] [--compile]

Tiny Shakespeare is used for benchmarking only; it is not part of the course.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from companion.data import CharTokenizer, get_batch, train_val_split
from companion.environment import make_generator
from companion.model import GPTConfig
from companion.optimizer import make_optimizer
from companion.pretraining import TrainConfig, init_model, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "tinyshakespeare.txt"
REFERENCE = {"wall seconds": 107.0, "val loss": 1.886}  # nanoGPT, same configuration, 2 cores
TARGET_LOSS_MARGIN = 0.03


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@torch.no_grad()
def whole_split_loss(model: torch.nn.Module, tokens: torch.Tensor, T: int, B: int = 256) -> float:
    """Mean next-token loss over every position of ``tokens``, in non-overlapping windows of T.

    nanoGPT's figure (and ``history.val_loss``) averages 20 random batches of 12 × 64 tokens: an
    estimate with sampling noise. This one has none, so seeds and implementations
    can be compared on it.
    """
    model.eval()
    n = (len(tokens) - 1) // T  # whole windows with their shifted targets
    x = tokens[: n * T].view(n, T)  # (n, T)
    y = tokens[1 : n * T + 1].view(n, T)  # (n, T)
    total = 0.0
    for i in range(0, n, B):
        _, loss = model(x[i : i + B], y[i : i + B])
        total += loss.item() * len(x[i : i + B])
    return total / n


def bare_loop_ms(model_config: GPTConfig, config: TrainConfig, tokens: torch.Tensor) -> float:
    """Median ms per step of the same update written as a bare loop, in the same process.

    forward, backward, clip, AdamW step on the same model size and batches, with nothing else:
    no schedule, logging, evaluation or callback. Its ratio to ``train``'s median step time is
    what the course's loop adds; the rest is the model's own arithmetic.
    """
    model = init_model(model_config, seed=config.seed, device="cpu")
    optimizer = make_optimizer(model, config)
    generator = make_generator(config.seed)
    times = []
    for _ in range(200):
        begin = time.perf_counter()
        x, y = get_batch(tokens, config.batch_size, config.context_length, generator=generator)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - begin)
    return 1000 * statistics.median(times[20:])  # the first steps warm up the allocator


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    parser.add_argument("--iters", type=int, default=2000, help="training iterations")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=int, default=1337, help="nanoGPT's seed")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"{args.data} not found; pass --data PATH to tinyshakespeare.txt")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    text = args.data.read_text(encoding="utf-8")
    tokenizer = CharTokenizer.from_text(text)
    tokens = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train_tokens, val_tokens = train_val_split(tokens, 0.1)
    model_config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=64, n_layer=4, n_head=4, d_model=128,
        dropout=0.0, bias=False,
    )  # fmt: skip
    config = TrainConfig(
        steps=args.iters, batch_size=12, context_length=64, learning_rate=1e-3,
        min_learning_rate=1e-4, warmup_steps=100, decay_steps=2000, weight_decay=0.1,
        betas=(0.9, 0.99), grad_clip=1.0, eval_interval=250, eval_batches=20, seed=args.seed,
        device="cpu",
    )  # fmt: skip
    model = init_model(model_config, seed=args.seed, device="cpu")
    if args.compile:
        model = torch.compile(model)

    step_times: list[float] = []
    last = [time.perf_counter()]

    def timer(step, history, model) -> None:
        now = time.perf_counter()
        if not history.step or history.step[-1] != step:  # leave out the evaluation steps
            step_times.append(now - last[0])
        last[0] = now

    history = train(model, train_tokens, val_tokens, config, progress=False, callback=timer)
    wall = time.perf_counter() - start
    tokens_seen = history.tokens_seen[-1]
    figures = {
        "wall seconds": wall,
        "val loss": history.val_loss[-1],
        "train seconds": history.seconds[-1],
        "tokens/s": tokens_seen / history.seconds[-1],
        "ms/iteration (median)": 1000 * statistics.median(step_times),
        "peak RSS MB": peak_rss_mb(),
        "val loss, whole split": whole_split_loss(model, val_tokens, 64),
        "bare loop ms/iteration": bare_loop_ms(model_config, config, train_tokens),
    }
    figures["loop overhead %"] = 100 * (
        figures["ms/iteration (median)"] / figures["bare loop ms/iteration"] - 1
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.iters} iterations"
    )
    print(f"{'step':>6} {'train loss':>11} {'val loss':>9} {'seconds':>8}")
    for row in zip(
        history.step, history.train_loss, history.val_loss, history.seconds, strict=True
    ):
        print(f"{row[0]:>6} {row[1]:>11.4f} {row[2]:>9.4f} {row[3]:>8.1f}")
    print(f"\n{'':<24} {'companion':>10} {'nanoGPT':>10} {'ratio':>7}")
    for name, value in figures.items():
        ref = REFERENCE.get(name)
        if ref is None:
            print(f"{name:<24} {value:>10.{3 if 'loss' in name else 2}f}")
        else:
            print(f"{name:<24} {value:>10.3f} {ref:>10.3f} {value / ref:>7.2f}")
    ok_loss = abs(figures["val loss"] - REFERENCE["val loss"]) <= TARGET_LOSS_MARGIN
    ok_time = figures["wall seconds"] <= REFERENCE["wall seconds"]
    print(
        f"target: val loss within {TARGET_LOSS_MARGIN} of {REFERENCE['val loss']}: "
        f"{'yes' if ok_loss else 'no'}; wall time <= {REFERENCE['wall seconds']:.0f} s: "
        f"{'yes' if ok_time else 'no'} (the reference ran on 2 cores)"
    )
    return figures


if __name__ == "__main__":
    main()
