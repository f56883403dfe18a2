"""The benchmarks' own logic: nanoGPT's random stream replayed by bench_shakespeare."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import nn

from companion.environment import make_generator
from companion.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replay_draws_nanogpts_batches_in_nanogpts_order():
    bench = load_benchmark("bench_shakespeare")
    B, T, interval, steps, n_eval = 3, 4, 2, 6, bench.EVAL_BATCHES
    train_tokens, val_tokens = torch.arange(0, 500), torch.arange(1000, 1100)

    # nanoGPT's loop, written out: one generator, a batch fetched ahead, evaluations in between
    generator = make_generator(7)  # nanoGPT: torch's global generator, just after the init

    def starts(tokens):
        return tokens[torch.randint(len(tokens) - T, (B,), generator=generator)]

    expected, last_val = [], None
    batch = starts(train_tokens)  # the very first batch, before the loop
    for iteration in range(steps + 1):
        if iteration % interval == 0:  # estimate_loss: the train split, then the val split
            [starts(train_tokens) for _ in range(n_eval)]
            last_val = [starts(val_tokens) for _ in range(n_eval)]
        if iteration == steps:  # after the last update: the evaluation nanoGPT reports
            break
        expected.append(batch)
        batch = starts(train_tokens)  # fetched while the model works on this one

    replay = bench.NanoGPTBatches(make_generator(7), train_tokens, val_tokens, B, T, interval)
    got = [replay(train_tokens, None)[0][:, 0] for _ in range(steps)]  # window starts
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    final = [x[:, 0] for x, _ in replay.final_eval_batches()]
    assert all(torch.equal(g, e) for g, e in zip(final, last_val, strict=True))


def test_replay_leaves_other_data_to_the_loops_generator():
    bench = load_benchmark("bench_shakespeare")
    train_tokens, val_tokens = torch.arange(0, 500), torch.arange(1000, 1100)
    replay = bench.NanoGPTBatches(make_generator(0), train_tokens, val_tokens, 2, 4, 250)
    x, y = replay(val_tokens, make_generator(1))
    assert bool((x >= 1000).all()) and torch.equal(y[:, :-1], x[:, 1:])
    assert replay.drawn == 0  # the training stream did not move


def test_gpt_draws_its_initial_weights_in_nanogpts_order():
    """The replay's premise: ``torch.manual_seed(s); GPT(config)`` draws what nanoGPT's GPT does."""
    V, T, L, C = 11, 8, 2, 16
    torch.manual_seed(0)
    # nanoGPT's constructor: wte, wpe, per block c_attn, c_proj, c_fc, c_proj, then lm_head
    wte, wpe = nn.Embedding(V, C), nn.Embedding(T, C)
    shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]
    blocks = [[nn.Linear(i, o, bias=False) for i, o in shapes] for _ in range(L)]
    lm_head = nn.Linear(C, V, bias=False)
    # its init, in module order: N(0, 0.02) for every weight, lm_head (tied to wte) last
    weights = [wte.weight, wpe.weight, *(layer.weight for b in blocks for layer in b)]
    for weight in [*weights, lm_head.weight]:
        nn.init.normal_(weight, mean=0.0, std=0.02)
    for block in blocks:  # then the residual projections again, N(0, 0.02 / sqrt(2 L))
        for layer in (block[1], block[3]):
            nn.init.normal_(layer.weight, mean=0.0, std=0.02 / math.sqrt(2 * L))
    state_after = torch.get_rng_state()

    torch.manual_seed(0)
    model = GPT(GPTConfig(V, T, L, 2, C, bias=False))
    assert torch.equal(model.wte.weight, lm_head.weight)
    assert torch.equal(model.wpe.weight, wpe.weight)
    for ours, theirs in zip(model.blocks, blocks, strict=True):
        mine = [ours.attn.qkv, ours.attn.proj, ours.mlp.fc, ours.mlp.proj]
        assert all(torch.equal(a.weight, b.weight) for a, b in zip(mine, theirs, strict=True))
    assert torch.equal(torch.get_rng_state(), state_after)  # and the stream continues alike
