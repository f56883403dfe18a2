"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically; the base model.

Taught in ``04_pretraining.ipynb``. A checkpoint is a directory::

    model.safetensors       the model's tensors (a tied tensor is stored once)
    optimizer.safetensors   the optimiser's tensors (AdamW moments, step counts), if saved
    checkpoint.json         format, GPTConfig, TrainConfig, step, History, RNG states as lists
                            of ints, the optimiser's scalars, tied-tensor aliases, ``extra``

No pickle anywhere: safetensors holds only tensors and JSON only plain values, so loading a
checkpoint can never run code. **Atomic**: the directory is written under a temporary name next
to its destination and moved into place only when complete, so a crash mid-save leaves the
previous checkpoint intact and no partial one (see :func:`save_checkpoint`).

:func:`load_base_model` returns the course base model, shipped as such a checkpoint in
``companion/assets/base_model`` and trained by :mod:`companion.base_model`.

Left out: sharded checkpoints, keeping the last *k* checkpoints, and saving CUDA RNG states
(dropout on CUDA is therefore not resumed bit for bit; CPU runs are).
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from companion.environment import DeviceLike, resolve_device

FORMAT = "companion-checkpoint v1"
BASE_MODEL_ASSET = "base_model"  # directory inside companion/assets
BASE_MODEL_COMMAND = "python -m companion.base_model --out companion/assets/base_model"
MODEL_FILE, OPTIMIZER_FILE, META_FILE = (
    "model.safetensors",
    "optimizer.safetensors",
    "checkpoint.json",
)


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read. ``model`` has the weights loaded, in eval mode."""

    model: nn.Module  # the model, on the requested device
    step: int  # optimiser steps completed when saved
    model_config: dict[str, Any]  # GPTConfig fields
    train_config: Any = None  # a TrainConfig, or None if none was saved
    history: Any = None  # a History (empty if none was saved)
    generator_state: torch.Tensor | None = None  # the batch sampler's state (uint8)
    torch_rng_state: torch.Tensor | None = None  # torch's global CPU generator state (uint8)
    extra: dict[str, Any] = field(default_factory=dict)  # anything else saved, e.g. val loss


def _aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Names whose tensor is the same memory as an earlier name's: ``{alias: canonical}``.

    For the GPT, ``{"lm_head.weight": "wte.weight"}`` (the tied LM head).
    """
    seen: dict[tuple, str] = {}
    aliases = {}
    for name, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases


def _state_to_list(state: torch.Tensor) -> list[int]:
    return state.to(torch.uint8).tolist()


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split ``optimizer.state_dict()`` into tensors (``state.<i>.<key>``) and JSON scalars."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    train_config: Any = None,
    history: Any = None,
    step: int = 0,
    generator: torch.Generator | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically; returns ``path``.

    1. write every file into a fresh temporary directory beside ``path`` (same file system);
    2. if ``path`` exists, rename it to ``.<name>.previous``; 3. rename the new directory to
    ``path``; 4. delete the previous one. An error in step 1 removes the temporary directory
    and leaves ``path`` untouched; :func:`load_checkpoint` falls back to ``.previous`` should the
    process die between steps 2 and 3.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    aliases = _aliases(state)
    tensors = {k: v.cpu().contiguous() for k, v in state.items() if k not in aliases}
    config = getattr(model, "config", None)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
        "train_config": train_config.to_dict() if train_config is not None else None,
        "step": step,
        "history": history.to_dict() if history is not None else None,
        "generator_state": _state_to_list(generator.get_state()) if generator else None,
        "torch_rng_state": _state_to_list(torch.get_rng_state()) if generator else None,
        "aliases": aliases,
        "optimizer": None,
        "extra": extra or {},
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file(tensors, tmp / MODEL_FILE, metadata={"format": FORMAT})
        if optimizer is not None:
            opt_tensors, meta["optimizer"] = _optimizer_parts(optimizer)
            save_file(opt_tensors, tmp / OPTIMIZER_FILE, metadata={"format": FORMAT})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        _usual_permissions(tmp)
        previous = path.parent / f".{path.name}.previous"
        if previous.exists():
            shutil.rmtree(previous)
        if path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _usual_permissions(directory: Path) -> None:
    """mkdtemp makes a private (0700) directory; give it and its files the umask's permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for file in directory.iterdir():
        os.chmod(file, 0o666 & ~umask)


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    previous = path.parent / f".{path.name}.previous"
    if (previous / META_FILE).is_file():  # the process died between the two renames
        return previous
    raise FileNotFoundError(
        f"no checkpoint at {path} ({META_FILE} is missing); save one with save_checkpoint"
    )


def _check_model_config(model: nn.Module, saved: dict[str, Any] | None) -> None:
    config = getattr(model, "config", None)
    if saved is None or not hasattr(config, "to_dict"):
        return
    ours = config.to_dict()
    for name in sorted(set(ours) | set(saved)):
        if ours.get(name) != saved.get(name):
            raise ValueError(
                f"GPTConfig.{name} differs: {ours.get(name)!r} in the model, "
                f"{saved.get(name)!r} in the checkpoint; build the model with the checkpoint's "
                "config (load_checkpoint(path) without a model does that)"
            )


def _load_model_tensors(model: nn.Module, file: Path, aliases: dict[str, str]) -> None:
    loaded = load_file(file)
    expected = model.state_dict()
    for name, tensor in expected.items():
        source = aliases.get(name, name)
        if source not in loaded:
            raise ValueError(f"tensor {name!r} of the model is missing from the checkpoint")
        if tuple(loaded[source].shape) != tuple(tensor.shape):
            raise ValueError(
                f"tensor {name!r} has shape {tuple(tensor.shape)} in the model but "
                f"{tuple(loaded[source].shape)} in the checkpoint"
            )
    unused = sorted(set(loaded) - {aliases.get(n, n) for n in expected})
    if unused:
        raise ValueError(f"the checkpoint has tensors the model does not: {unused}")
    model.load_state_dict({name: loaded[aliases.get(name, name)] for name in expected})


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path, saved: dict | None) -> None:
    if saved is None or not (path / OPTIMIZER_FILE).is_file():
        raise ValueError(f"the checkpoint at {path} has no optimizer state to load")
    tensors = load_file(path / OPTIMIZER_FILE)
    groups = saved["param_groups"]
    ours = optimizer.state_dict()["param_groups"]
    sizes = ([len(g["params"]) for g in ours], [len(g["params"]) for g in groups])
    if sizes[0] != sizes[1]:
        raise ValueError(
            f"optimizer parameter groups differ: sizes {sizes[0]} here, {sizes[1]} in the checkpoint"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in saved["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    device: DeviceLike = None,
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    With ``model=None`` a :class:`companion.model.GPT` is built from the saved config. With a
    model, its config and every tensor's shape must match the checkpoint, or a ``ValueError``
    names the field or tensor and both values. ``optimizer`` (built for the same model) gets the
    saved state. The model is moved to ``device`` and returned in eval mode.
    """
    from companion.pretraining import History, TrainConfig

    path = _resolve(path)
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path / META_FILE} is not a {FORMAT!r} file (format {meta.get('format')!r})"
        )
    if model is None:
        from companion.model import GPT, GPTConfig

        if meta["model_config"] is None:
            raise ValueError("the checkpoint has no model config; pass the model to load into")
        model = GPT(GPTConfig(**meta["model_config"]))
    _check_model_config(model, meta["model_config"])
    _load_model_tensors(model, path / MODEL_FILE, meta["aliases"])
    model.to(resolve_device(device)).eval()
    if optimizer is not None:
        _load_optimizer(optimizer, path, meta["optimizer"])

    def as_state(values: list[int] | None) -> torch.Tensor | None:
        return None if values is None else torch.tensor(values, dtype=torch.uint8)

    train_config = meta["train_config"]
    return Checkpoint(
        model=model,
        step=meta["step"],
        model_config=meta["model_config"],
        train_config=TrainConfig.from_dict(train_config) if train_config is not None else None,
        history=History.from_dict(meta["history"]) if meta["history"] else History(),
        generator_state=as_state(meta["generator_state"]),
        torch_rng_state=as_state(meta["torch_rng_state"]),
        extra=meta["extra"],
    )


# --- the shipped base model (trained by companion.base_model) -----------------------------------


def base_model_path() -> Path:
    """Where the shipped base model lives in the source tree (for rewriting it)."""
    return Path(__file__).resolve().parent / "assets" / BASE_MODEL_ASSET


def _base_model_resource():
    """The shipped base model's directory, as a package resource; a clear error if missing."""
    directory = importlib.resources.files("companion") / "assets" / BASE_MODEL_ASSET
    if not (directory / META_FILE).is_file():
        raise FileNotFoundError(
            f"the base model is missing from companion/assets/{BASE_MODEL_ASSET}; "
            f"recreate it with `{BASE_MODEL_COMMAND}`"
        )
    return directory


def read_base_model_info() -> dict[str, Any]:
    """The shipped base model's ``checkpoint.json``: configs, history and, in ``extra``, its
    final validation loss, fact accuracy and training time."""
    return json.loads((_base_model_resource() / META_FILE).read_text(encoding="utf-8"))


def load_base_model(device: DeviceLike = None) -> tuple[nn.Module, Any]:
    """The course base model and its tokenizer: ``(GPT in eval mode, BPETokenizer)``.

    Read from ``companion/assets/base_model``; nothing is trained or downloaded.

    >>> model, tokenizer = load_base_model("cpu")
    >>> model.training, model.config.vocab_size == tokenizer.vocab_size
    (False, True)
    """
    from companion.data import load_course_tokenizer

    with importlib.resources.as_file(_base_model_resource()) as path:
        model = load_checkpoint(path, device=device).model
    return model, load_course_tokenizer()
