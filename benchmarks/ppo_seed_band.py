"""PPO's training-seed band: the shipped recipe (``companion.rlhf.SHIPPED_PPO``) run with
several training seeds from the shipped chat model and one reward model, each run's effects
(``companion.effects.measure_effects``) printed beside the chat model's and the shipped PPO
model's stored ones, then each effect's range over the runs.

Run: ``OMP_NUM_THREADS=1 python benchmarks/ppo_seed_band.py [--seeds 0 1 2]`` (about 2 minutes
for the reward model and 1-2 minutes per seed with one thread on an idle 2-core machine; the
runs are deterministic for a given thread count). The seed draws the prompts, replies and
minibatches; a different thread count rounds float sums differently, and PPO, which learns from
its own samples, then follows another path: so a run on another CPU is in effect another draw
from this band, which is why the slow test of the shipped PPO model holds a rerun to the
chapter's story (it invents less than the chat model and keeps most of its accuracy), not to the
shipped digits. Nothing is written.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from companion.checkpoints import shipped_info
from companion.effects import EFFECTS, measure_effects
from companion.rlhf import SHIPPED_PPO, _ppo_run, _reward_model, collect_chapter_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.manual_seed(0)  # as the shipped command: nothing should draw from it
    data = collect_chapter_data()
    chat, tokenizer, world = data.chat_model, data.tokenizer, data.world
    rows = {"chat": measure_effects(chat, tokenizer, world)}
    rows["shipped PPO"] = shipped_info("ppo")["extra"]["effects"]
    start = time.perf_counter()
    reward_model, rm = _reward_model(chat, tokenizer, data.pairs)
    print(f"threads {torch.get_num_threads()}; reward model held-out accuracy "
          f"{rm['reward_model_accuracy']:.3f} ({time.perf_counter() - start:.0f} s)")  # fmt: skip
    runs = []
    for seed in args.seeds:
        start = time.perf_counter()
        _, run = _ppo_run(chat, tokenizer, world, reward_model, replace(SHIPPED_PPO, seed=seed))
        rows[f"PPO seed {seed}"] = run["effects"]
        runs.append(run["effects"])
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s")
    print(f"\n{'':<14}" + "".join(f"{key:>15}" for key in EFFECTS))
    for name, effects in rows.items():
        print(f"{name:<14}" + "".join(f"{effects[key]:>15.3f}" for key in EFFECTS))
    spread = {key: (min(r[key] for r in runs), max(r[key] for r in runs)) for key in EFFECTS}
    print(
        f"{'seed range':<14}" + "".join(f"{f'{lo:.3f}-{hi:.3f}':>15}" for lo, hi in spread.values())
    )


if __name__ == "__main__":
    main()
