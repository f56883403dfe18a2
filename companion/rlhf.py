"""The chapter's pipeline and its shipped models: PPO-, DPO- and Constitutional-AI-aligned.

Taught in ``06_rlhf.ipynb``. Each aligned model starts from the shipped chat model and is
shipped like it: a checkpoint in ``companion/assets`` (safetensors + JSON), loaded with
``companion.checkpoints.load_shipped("ppo")`` (or "dpo", "cai"), and a command that retrains it::

    python -m companion.rlhf ppo --out companion/assets/ppo_model
    python -m companion.rlhf dpo --out companion/assets/dpo_model
    python -m companion.rlhf cai --out companion/assets/cai_model

Every command collects the same preference data (:func:`collect_chapter_data`, seed 0, on the
CPU) and
stores its figures in ``checkpoint.json``'s ``extra``: the four effects
(:func:`companion.effects.measure_effects`), the training time, and for PPO the reward model's
held-out accuracy, the log, and the two failure runs (no KL leash; a miscalibrated reward model
from a rater who cannot check facts), and for DPO the same run without its NLL term (plain
DPO); the weights of those extra runs are not kept. The runs are deterministic given the
seeds; on another CPU float sums round differently, so the slow tests compare a rerun with the
shipped figures within stated tolerances (the measured times are in the README).

Each shipped run is one training seed (0). ``python -m companion.rlhf band --out
companion/assets/seed_bands.json`` reruns each recipe with seeds 1 and 2 (:func:`seed_bands`)
and stores their effects, read back with :func:`shipped_seed_bands`: the chapter reads every
effect against that band of three runs.

Left out: training on a GPU, and hyperparameter searches (the recipes are below, as used).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from companion.checkpoints import SHIPPED, load_shipped, save_checkpoint
from companion.dpo import DPOConfig, train_dpo
from companion.effects import measure_effects
from companion.ppo import PPOConfig, train_ppo
from companion.preferences import (
    RULES,
    Preference,
    Prompt,
    Sample,
    collect_candidates,
    label_pairs,
    make_prompts,
    sample_replies,
)
from companion.reward_model import RewardConfig, pair_accuracy, split_pairs, train_reward_model
from companion.tokenizer import BPETokenizer
from companion.world import World, build_world

ALIGNED: tuple[str, ...] = ("ppo", "dpo", "cai")  # the shipped aligned models
NOISE = 0.1  # the rater's label noise
SHIPPED_REWARD = RewardConfig(steps=200)  # the reward model of the shipped runs
# PPO without a critic (vf_coef 0: the value head stays at zero) and with λ = 1: every token of a
# reply gets the reply's whitened return, as in GRPO. With the course's critic, which learns
# little in a run this short, GAE's λ < 1 ranks a reply's tokens by their distance from its end
# rather than by its score, and the policy drifts while its reward falls (measured, see ppo.gae).
SHIPPED_PPO = PPOConfig(iterations=60, kl_coef=1.0, learning_rate=1e-4, vf_coef=0.0, lam=1.0)
NO_KL_PPO = replace(SHIPPED_PPO, kl_coef=0.0)  # the same, no leash
SHIPPED_DPO = DPOConfig(steps=60, learning_rate=5e-5, beta=0.5, nll_weight=2.0)  # DPO and CAI
PLAIN_DPO = DPOConfig(steps=60, learning_rate=5e-5, beta=0.5)  # the same without the NLL term
CANNOT_CHECK_FACTS = {k: v for k, v in RULES.items() if k != "correct"}  # the miscalibrated rater
BAND_SEEDS = (1, 2)  # training seeds rerun beside each shipped run (seed 0): its seed band
SEED_BANDS = "seed_bands.json"  # in companion/assets, written by `python -m companion.rlhf band`
BAND_COMMAND = f"python -m companion.rlhf band --out companion/assets/{SEED_BANDS}"


@dataclass
class ChapterData:
    """What every aligned model is trained from: the chat model and the rater's preferences."""

    chat_model: nn.Module  # the shipped chat model, on the CPU, eval mode
    tokenizer: BPETokenizer  # the course tokenizer
    world: World  # build_world(0)
    prompts: list[Prompt]  # the train prompts (make_prompts(world, split="train"))
    candidates: list[list[Sample]]  # 4 sampled replies per prompt, + the refusal for strangers
    pairs: list[Preference]  # the rater's noisy preferences over the candidates


def collect_chapter_data(seed: int = 0) -> ChapterData:
    """The chat model on the CPU, the train prompts, 4 sampled replies each (+ refusals), and
    the rater's noisy pairs (noise :data:`NOISE`)."""
    model, tokenizer = load_shipped("chat", "cpu")
    world = build_world(0)
    prompts, candidates = collect_candidates(model, tokenizer, world, seed=seed)
    pairs = label_pairs(world, prompts, candidates, noise=NOISE, seed=seed)
    return ChapterData(model, tokenizer, world, prompts, candidates, pairs)


def sample_conversations(
    model: nn.Module, tokenizer, world: World, n: int = 8, seed: int = 7
) -> list[list[str]]:
    """``[[question, reply], ...]``: replies at temperature 1 to ``n - 2`` evaluation fact
    questions (every 20th) and two questions about strangers, stored to show in the notebook."""
    prompts = make_prompts(world, split="eval")
    prompts = prompts[::20][: n - 2] + [p for p in prompts if p.kind == "unknown"][::5][:2]
    replies = sample_replies(model, tokenizer, prompts, seed=seed)
    return [[p.text, r.text] for p, r in zip(prompts, replies, strict=True)]


def _reward_model(chat, tokenizer, pairs):
    train, held = split_pairs(pairs)
    start = time.perf_counter()
    reward_model, _ = train_reward_model(chat, tokenizer, train, SHIPPED_REWARD)
    return reward_model, {
        "reward_model_accuracy": pair_accuracy(reward_model, held, tokenizer),
        "reward_model_held_out_pairs": len(held),
        "reward_model_seconds": round(time.perf_counter() - start, 1),
    }


def _ppo_run(chat, tokenizer, world, reward_model, config):
    prompts = make_prompts(world, split="train")
    policy, log = train_ppo(chat, tokenizer, reward_model, prompts, config)
    figures = {
        "ppo_seconds": round(log.seconds[-1], 1),
        "effects": measure_effects(policy, tokenizer, world),
        "log": asdict(log),
        "samples": sample_conversations(policy, tokenizer, world),
        "ppo_config": asdict(config),
    }
    return policy, figures


def train_aligned_model(kind: str, out_dir: str | Path) -> dict[str, Any]:
    """Train the ``kind`` ("ppo", "dpo" or "cai") model from the chat model, save it to
    ``out_dir``, and return its figures (also in the checkpoint's ``extra``)."""
    if kind not in ALIGNED:
        raise ValueError(f"kind={kind!r}; use one of {list(ALIGNED)}")
    torch.manual_seed(0)  # nothing should draw from it; fixed all the same
    data = collect_chapter_data()
    chat, tokenizer, world, pairs = data.chat_model, data.tokenizer, data.world, data.pairs
    figures: dict[str, Any] = {"command": SHIPPED[kind], "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "pairs": len(pairs)}  # fmt: skip
    if kind == "ppo":
        reward_model, rm_figures = _reward_model(chat, tokenizer, pairs)
        model, run = _ppo_run(chat, tokenizer, world, reward_model, SHIPPED_PPO)
        figures |= rm_figures | run
        _, figures["no_kl"] = _ppo_run(chat, tokenizer, world, reward_model, NO_KL_PPO)
        blind = label_pairs(
            world, data.prompts, data.candidates, noise=NOISE, rules=CANNOT_CHECK_FACTS
        )
        blind_model, blind_figures = _reward_model(chat, tokenizer, blind)
        _, run = _ppo_run(chat, tokenizer, world, blind_model, SHIPPED_PPO)
        figures["miscalibrated"] = blind_figures | run
    else:
        if kind == "cai":
            from companion.constitution import ai_pairs, make_judge

            judge = make_judge(chat, tokenizer, data.prompts)
            pairs = ai_pairs(judge, world, data.prompts, data.candidates, tokenizer)
            figures["ai_pairs"] = len(pairs)
        model, log = train_dpo(chat, tokenizer, pairs, SHIPPED_DPO)
        figures |= {
            "dpo_seconds": round(log.seconds[-1], 1),
            "effects": measure_effects(model, tokenizer, world),
            "log": asdict(log),
            "samples": sample_conversations(model, tokenizer, world),
            "dpo_config": asdict(SHIPPED_DPO),
        }
        if kind == "dpo":
            plain, plain_log = train_dpo(chat, tokenizer, pairs, PLAIN_DPO)
            figures["plain"] = {
                "dpo_seconds": round(plain_log.seconds[-1], 1),
                "log": asdict(plain_log),
                "effects": measure_effects(plain, tokenizer, world),
                "samples": sample_conversations(plain, tokenizer, world),
                "dpo_config": asdict(PLAIN_DPO),
            }
    save_checkpoint(out_dir, model, extra=figures)
    return figures


def seed_bands(seeds: Sequence[int] = BAND_SEEDS) -> dict[str, Any]:
    """Each shipped recipe rerun with the training seeds ``seeds`` (PPO's draws of prompts,
    replies and minibatches; DPO's and CAI's batches), from the same preference data and, for
    PPO, the same reward model, as :func:`train_aligned_model` makes them; returns
    ``{"ppo": [{"seed": s, "effects": {...}}, ...], "dpo": [...], "cai": [...]}`` with the
    command, thread count and torch version. With the shipped run (seed 0) each kind has a band
    of ``len(seeds) + 1`` runs; an effect counts only beyond it. The weights are not kept.
    """
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds={seeds!r} must be a non-empty list of ints, e.g. (1, 2)")
    if 0 in seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds!r}: distinct seeds other than 0 (the shipped run's)")
    torch.manual_seed(0)  # as train_aligned_model: nothing should draw from it
    data = collect_chapter_data()
    chat, tokenizer, world = data.chat_model, data.tokenizer, data.world
    reward_model, _ = _reward_model(chat, tokenizer, data.pairs)
    from companion.constitution import ai_pairs, make_judge

    judge = make_judge(chat, tokenizer, data.prompts)
    cai_pairs = ai_pairs(judge, world, data.prompts, data.candidates, tokenizer)

    def dpo_effects(pairs, seed):
        model, _ = train_dpo(chat, tokenizer, pairs, replace(SHIPPED_DPO, seed=seed))
        return measure_effects(model, tokenizer, world)

    bands: dict[str, Any] = {"command": BAND_COMMAND, "threads": torch.get_num_threads(),
                             "torch": torch.__version__}  # fmt: skip
    runs = {
        "ppo": lambda s: _ppo_run(chat, tokenizer, world, reward_model,
                                  replace(SHIPPED_PPO, seed=s))[1]["effects"],
        "dpo": lambda s: dpo_effects(data.pairs, s),
        "cai": lambda s: dpo_effects(cai_pairs, s),
    }  # fmt: skip
    for kind, run in runs.items():
        bands[kind] = [{"seed": s, "effects": run(s)} for s in seeds]
    return bands


def shipped_seed_bands() -> dict[str, Any]:
    """The stored :func:`seed_bands` of the shipped recipes (``companion/assets/seed_bands.json``)."""
    file = importlib.resources.files("companion") / "assets" / SEED_BANDS
    if not file.is_file():
        raise FileNotFoundError(f"companion/assets/{SEED_BANDS} is missing; recreate it with "
                                f"`{BAND_COMMAND}`")  # fmt: skip
    return json.loads(file.read_text())


def _is_seed_bands_file(path: Path) -> bool:
    """The file holds what :func:`seed_bands` writes (so rewriting it loses nothing else)."""
    try:
        return json.loads(path.read_text()).get("command") == BAND_COMMAND
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, or not an object
        return False


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m companion.rlhf {ppo,dpo,cai} --out DIR``, or ``band --out FILE.json``."""
    parser = argparse.ArgumentParser(prog="python -m companion.rlhf", description=__doc__)
    parser.add_argument("kind", choices=(*ALIGNED, "band"))
    parser.add_argument("--out", type=Path, required=True,
                        help="checkpoint directory to write (band: the JSON file to write)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.kind == "band":
        if args.out.suffix != ".json" or args.out.is_dir():
            parser.error(f"band writes one JSON file; --out {args.out} should end in .json")
        if args.out.exists() and not _is_seed_bands_file(args.out):
            parser.error(f"{args.out} exists and is not a file this command wrote; nothing was "
                         "overwritten: choose another --out")  # fmt: skip
        bands = seed_bands()
        args.out.write_text(json.dumps(bands, indent=1) + "\n")
        print(json.dumps(bands, indent=1))
        return
    figures = train_aligned_model(args.kind, args.out)
    print(json.dumps({k: v for k, v in figures.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
