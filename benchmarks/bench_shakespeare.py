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
validation loss next to nanoGPT's reference figures on a 2-core machine, with the ratios.

nanoGPT's random stream, replayed (``--stream nanogpt``, the default). nanoGPT draws everything
from torch's global generator seeded with 1337: the model's initial weights, then one training
batch per iteration and, at every evaluation, 20 training and 20 validation batches. ``GPT``
builds and initialises its layers in nanoGPT's order, so ``torch.manual_seed(1337); GPT(config)``
draws the same initial weights, and :class:`NanoGPTBatches` draws the same batches from the
generator's state after that. The run then sees nanoGPT's data in nanoGPT's order, and the
final loss is measured on the 20 validation windows nanoGPT's last evaluation reads: the figure
nanoGPT prints, with its sampling noise taken out of the comparison. ``--stream course`` uses
the course's own seeded generators instead (``train``'s default), a different draw of the same
noise.

nanoGPT cannot run here (no downloads), so two more figures measured in the same run keep the
comparison honest: the validation loss over the whole split, and the same update as a bare loop,
timed in bursts between the course loop's steps (this machine's speed drifts by 10 % or more
within minutes), whose ratio to ``train``'s step time is the loop's overhead. The wall time
leaves the bursts out.

Run from the repository root (pin a core with ``taskset -c 1`` to measure one core)::

    python benchmarks/bench_shakespeare.py [--data PATH] [--iters N] [--threads N] [--compile]
        [--stream nanogpt|course] [--seed N]

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

from companion.char_tokenizer import CharTokenizer
from companion.data import get_batch
from companion.environment import make_generator
from companion.model import GPT, GPTConfig
from companion.optimizer import make_optimizer
from companion.pretraining import evaluate_loss, init_model, train
from companion.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "tinyshakespeare.txt"
REFERENCE = {"wall seconds": 107.0, "val loss": 1.886}  # nanoGPT, same configuration, 2 cores
TARGET_LOSS_MARGIN = 0.03
EVAL_BATCHES = 20  # nanoGPT's --eval_iters: batches per split at each evaluation


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


class NanoGPTBatches:
    """Training batches in nanoGPT's order, from its global generator's stream.

    ``stream`` is a generator in the state nanoGPT's global one is in once the model is built.
    nanoGPT then draws batch 0, and at each evaluation (iterations 0, ``eval_interval``, ...)
    ``EVAL_BATCHES`` training and ``EVAL_BATCHES`` validation windows, before the batch of the
    next iteration. Calling the object (as ``train``'s ``batch_fn``) returns the next training
    batch, skipping those evaluation draws; :meth:`final_eval_batches` then returns the validation
    windows of nanoGPT's evaluation after the last iteration. Batches of any other data (the
    course loop's own fixed validation batches) come from the generator ``train`` passes.
    """

    def __init__(
        self, stream: torch.Generator, train_tokens: torch.Tensor, val_tokens: torch.Tensor,
        batch_size: int, context_length: int, eval_interval: int,
    ) -> None:  # fmt: skip
        self.stream, self.train_tokens, self.val_tokens = stream, train_tokens, val_tokens
        self.B, self.T, self.eval_interval = batch_size, context_length, eval_interval
        self.drawn = 0  # training batches drawn so far

    def _draw(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return get_batch(tokens, self.B, self.T, generator=self.stream)

    def __call__(self, data: torch.Tensor, generator: torch.Generator):
        if data is not self.train_tokens:
            return get_batch(data, self.B, self.T, generator=generator)
        if self.drawn > 0 and (self.drawn - 1) % self.eval_interval == 0:
            self._evaluation_draws()  # nanoGPT evaluated at iteration drawn - 1
        self.drawn += 1
        return self._draw(self.train_tokens)

    def _evaluation_draws(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(EVAL_BATCHES):
            self._draw(self.train_tokens)
        return [self._draw(self.val_tokens) for _ in range(EVAL_BATCHES)]

    def final_eval_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The validation windows of nanoGPT's evaluation after the last iteration."""
        self._draw(self.train_tokens)  # nanoGPT prefetches one batch past the last iteration
        return self._evaluation_draws()


class BareLoop:
    """The same update written as a bare loop, timed in bursts between the course loop's steps.

    forward, backward, clip, AdamW step on its own copy of the model, with nothing else: no
    schedule, logging, evaluation or callback. Bursts run inside the course run (every
    ``BURST_EVERY`` of its steps), so both loops are timed on the machine as it is at that moment,
    and the ratio of their median step times is what the course's loop adds; the rest is the
    model's own arithmetic.
    """

    def __init__(self, model_config: GPTConfig, config: TrainConfig, tokens: torch.Tensor) -> None:
        self.model = init_model(model_config, seed=config.seed, device="cpu")
        self.optimizer = make_optimizer(self.model, config)
        self.generator = make_generator(config.seed)
        self.config, self.tokens = config, tokens
        self.times: list[float] = []  # seconds per step

    def run(self, steps: int) -> None:
        """``steps`` timed updates; the first one, which finds the caches full of the other
        model, is run but not recorded."""
        c = self.config
        for i in range(steps + 1):
            begin = time.perf_counter()
            x, y = get_batch(self.tokens, c.batch_size, c.context_length, generator=self.generator)
            _, loss = self.model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if i > 0:
                self.times.append(time.perf_counter() - begin)


BURST_EVERY, BURST = 100, 10  # a burst of 10 bare-loop steps after every 100 course steps


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    parser.add_argument("--iters", type=int, default=2000, help="training iterations (2000)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=int, default=1337, help="nanoGPT's seed")
    parser.add_argument(
        "--stream", choices=("nanogpt", "course"), default="nanogpt",
        help="replay nanoGPT's random stream (initial weights and batches), or the course's own",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"{args.data} not found; pass --data PATH to tinyshakespeare.txt")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    text = args.data.read_text(encoding="utf-8")
    tokenizer = CharTokenizer.from_text(text)  # nanoGPT's vocabulary: the sorted characters
    tokens = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    n_train = int(0.9 * len(tokens))  # nanoGPT's split; its batch starts depend on these lengths
    train_tokens, val_tokens = tokens[:n_train], tokens[n_train:]
    model_config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=64, n_layer=4, n_head=4, d_model=128,
        dropout=0.0, bias=False,
    )  # fmt: skip
    config = TrainConfig(
        steps=args.iters, batch_size=12, context_length=64, learning_rate=1e-3,
        min_learning_rate=1e-4, warmup_steps=100, decay_steps=2000, weight_decay=0.1,
        betas=(0.9, 0.99), grad_clip=1.0, eval_interval=250, eval_batches=EVAL_BATCHES,
        seed=args.seed, device="cpu",
    )  # fmt: skip
    replay = None
    if args.stream == "nanogpt":
        torch.manual_seed(args.seed)
        model = GPT(model_config)  # draws nanoGPT's initial weights from the global generator
        stream = torch.Generator()
        stream.set_state(torch.get_rng_state())  # where nanoGPT's batches start drawing
        replay = NanoGPTBatches(
            stream, train_tokens, val_tokens, config.batch_size, config.context_length,
            config.eval_interval,
        )  # fmt: skip
    else:
        model = init_model(model_config, seed=args.seed, device="cpu")
    if args.compile:
        model = torch.compile(model)

    begin = time.perf_counter()
    bare = BareLoop(model_config, config, train_tokens)
    bare.run(BURST)  # warm-up: the first steps of a new model fill the allocator's caches
    bare.times.clear()
    burst_seconds = [time.perf_counter() - begin]  # the reference's time, left out of the wall
    step_times: list[float] = []
    last = [time.perf_counter()]

    def timer(step, history, model) -> None:
        now = time.perf_counter()
        if not history.step or history.step[-1] != step:  # leave out the evaluation steps
            step_times.append(now - last[0])
        if step % BURST_EVERY == 0:
            bare.run(BURST)
            burst_seconds[0] += time.perf_counter() - now
        last[0] = time.perf_counter()

    history = train(
        model, train_tokens, val_tokens, config, progress=False, callback=timer, batch_fn=replay
    )
    if replay is not None:  # the loss nanoGPT prints: its last evaluation's 20 windows
        final_loss = evaluate_loss(model, replay.final_eval_batches())
    else:  # the course loop's own 20 fixed validation batches
        final_loss = history.val_loss[-1]
    wall = time.perf_counter() - start - burst_seconds[0]
    tokens_seen = history.tokens_seen[-1]
    figures = {
        "wall seconds": wall,
        "val loss": final_loss,
        "val loss, fixed batches": history.val_loss[-1],
        "train seconds": history.seconds[-1],
        "tokens/s": tokens_seen / history.seconds[-1],
        "ms/iteration (median)": 1000 * statistics.median(step_times),
        "peak RSS MB": peak_rss_mb(),
        "val loss, whole split": whole_split_loss(model, val_tokens, 64),
        "bare loop ms/iteration": 1000 * statistics.median(bare.times),
    }
    figures["loop overhead %"] = 100 * (
        figures["ms/iteration (median)"] / figures["bare loop ms/iteration"] - 1
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.iters} iterations, "
        f"seed {args.seed}, {args.stream}'s random stream"
    )
    print(
        f"{'step':>6} {'train loss':>11} {'val loss':>9} {'seconds':>8}  (val: the fixed batches)"
    )
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
    print(
        "val loss: "
        + ("on nanoGPT's last 20 validation windows" if replay else "on the fixed batches")
    )
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
