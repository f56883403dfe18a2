"""Attention cost against sequence length: fused kernel vs the from-scratch version.

Run: ``python benchmarks/bench_attention.py [--lengths 256 512 1024 2048] [--device cpu]``.
Prints seconds per causal attention call (best of 3, batch 1, 4 heads of size 64) and the
fitted exponent of time ∝ T^slope for each implementation (2 means quadratic), then the
time of a small GPT's forward pass (fused attention) and of its ``attention_maps`` walk (the
from-scratch attention, which also returns every weight). Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import time

import torch

from companion.attention_explorer import power_law_exponent, time_attention
from companion.environment import make_generator, resolve_device
from companion.model import GPTConfig
from companion.pretraining import init_model


def _model_seconds(path: str, device: torch.device, T: int = 256) -> float:
    config = GPTConfig(vocab_size=1000, context_length=T, n_layer=4, n_head=4, d_model=256)
    model = init_model(config, seed=0, device=device).eval()
    idx = torch.randint(0, config.vocab_size, (4, T), generator=make_generator(0)).to(device)
    best = float("inf")
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            model(idx) if path == "forward" else model.attention_maps(idx)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # wait for the kernels, not just their launch
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {device}, threads: {torch.get_num_threads()}")
    results = {
        impl: time_attention(args.lengths, attention=impl, device=device)
        for impl in ("fused", "manual")
    }
    print(f"{'T':>6} {'fused ms':>10} {'manual ms':>10} {'manual/fused':>13}")
    for i, T in enumerate(args.lengths):
        fused, manual = results["fused"][i], results["manual"][i]
        print(f"{T:>6} {fused * 1e3:>10.2f} {manual * 1e3:>10.2f} {manual / fused:>13.1f}")
    for impl, seconds in results.items():
        print(f"{impl}: time ∝ T^{power_law_exponent(args.lengths, seconds):.2f}")
    for path in ("forward", "attention_maps"):
        ms = _model_seconds(path, device) * 1e3
        print(f"GPT (4 layers, d_model 256, B=4, T=256), {path}: {ms:.1f} ms")


if __name__ == "__main__":
    main()
