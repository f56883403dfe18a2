"""Generation speed: companion's ``generate`` with and without the KV cache, and Hugging Face
``transformers``' ``generate`` (with its cache) on the same weights.

Run: ``python benchmarks/bench_generate.py [--lengths 64 128 256 512] [--repeats 3]
[--max-uncached-length 512] [--device cpu]``. The model is GPT-2 small's shape (12 blocks of width 768, context 1024,
V = 50,257) with random weights: a ``transformers`` ``GPT2LMHeadModel`` made from a seed, copied
into companion's ``GPT`` with ``GPT.from_hf_gpt2`` (with the cache: wrapped in
``CachedGPT``). Greedy decoding, batch 1, an 8-token prompt,
exactly ``n`` new tokens (no stop token). Each cell is the median of ``--repeats`` runs
(medians, because the machine may be shared; the three are run in turn, repeat by repeat, so a
busy spell slows each of them). Without the cache, step k runs the whole sequence
of 8 + k tokens, so the uncached run grows quadratically (hours at 512 on a busy 2-core machine):
above ``--max-uncached-length`` it is not run end to end; instead the table shows an upper bound
on its speed (marked ≤): half its steps read at least 8 + n/2 tokens, so it takes at least n/2
times one measured forward pass over 8 + n/2 tokens. Prints tokens/s, the ratios, how many leading
tokens the two libraries agree on, and the cache's memory. Nothing is downloaded or written.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from companion.environment import make_generator, resolve_device
from companion.generation import generate
from companion.kv_cache import CachedGPT, bytes_per_token
from companion.model import GPT

PROMPT_LENGTH = 8


def _timed(run, device: torch.device) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # wait for the kernels, not just their launch
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-uncached-length", type=int, default=512)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps")
    args = parser.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel

    device = resolve_device(args.device)
    torch.manual_seed(0)  # transformers initialises its weights from torch's global generator
    hf_config = GPT2Config(n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    hf = GPT2LMHeadModel(hf_config).to(device).eval()
    ours = GPT.from_hf_gpt2(hf).eval()
    V = ours.config.vocab_size
    prompt = torch.randint(0, V, (1, PROMPT_LENGTH), generator=make_generator(0)).to(device)
    print(f"device: {device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"model: GPT-2 small shape, random weights, {sum(p.numel() for p in ours.parameters()):,}"
          f" parameters; prompt {PROMPT_LENGTH} tokens; greedy; batch 1")  # fmt: skip

    cached_model = CachedGPT(ours)  # chapter 7's cache around the same weights

    def ours_run(n: int, use_cache: bool) -> torch.Tensor:
        return generate(cached_model if use_cache else ours, prompt, n, temperature=0)

    def hf_run(n: int) -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0,
            )  # fmt: skip

    ours_run(4, True), ours_run(4, False), hf_run(4)  # warm-up: first calls pay for set-up
    header = (
        f"{'new':>5} {'cache tok/s':>12} {'no cache tok/s':>15} {'HF tok/s':>9} "
        f"{'cache/no cache':>15} {'cache/HF':>9} {'same tokens as HF':>18}"
    )
    print(header)
    for n in args.lengths:
        cached, theirs, uncached = [], [], []
        for _ in range(args.repeats):  # interleaved, so a busy spell slows both sides alike
            cached.append(_timed(lambda n=n: ours_run(n, True), device))
            theirs.append(_timed(lambda n=n: hf_run(n), device))
            if n <= args.max_uncached_length:
                uncached.append(_timed(lambda n=n: ours_run(n, False), device)[0])
        if uncached:
            u, bound = n / statistics.median(uncached), " "
        else:  # n/2 steps of at least 8 + n/2 tokens each
            window = prompt.new_zeros(1, PROMPT_LENGTH + n // 2)
            with torch.no_grad():
                forward = min(
                    _timed(lambda w=window: ours(w), device)[0] for _ in range(args.repeats)
                )
            u, bound = n / (n // 2 * forward), "≤"
        c = n / statistics.median(s for s, _ in cached)
        h = n / statistics.median(s for s, _ in theirs)
        a, b = cached[0][1][0, PROMPT_LENGTH:], theirs[0][1][0, PROMPT_LENGTH:]
        same = int((a != b).nonzero()[0, 0]) if not torch.equal(a, b) else n  # leading agreement
        print(
            f"{n:>5} {c:>12.2f} {bound}{u:>14.2f} {h:>9.2f} {'≥' if bound == '≤' else ' '}"
            f"{c / u:>13.1f}× {c / h:>8.2f}× {same:>12} of {n}"
        )
    per_token = bytes_per_token(ours.config)
    longest = PROMPT_LENGTH + max(args.lengths)
    print(
        f"KV cache: {per_token:,} bytes per token (2 × {ours.config.n_layer} layers × "
        f"{ours.config.d_model} × 4 bytes) = {per_token / 1024:.0f} KiB; "
        f"{longest} tokens: {per_token * longest / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
