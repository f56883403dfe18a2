"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Taught in ``04_pretraining.ipynb``. A checkpoint is a directory::

    model.safetensors       the model's tensors (a tied tensor is stored once)
    optimizer.safetensors   the optimiser's tensors (AdamW moments, step counts), if saved
    checkpoint.json         format, GPTConfig, TrainConfig, step, History, RNG states as lists
                            of ints, the optimiser's scalars, ``extra``

No pickle anywhere: safetensors holds only tensors and JSON only plain values, so loading a
checkpoint can never run code. **Atomic**: the directory is written under a temporary name next
to its destination and moved into place only when complete, so a crash mid-save leaves the
previous checkpoint intact and no partial one. A damaged checkpoint (a truncated tensor file, a
broken ``checkpoint.json``, a missing file) gives a ``ValueError`` that names the file.

The shipped models (the base model of :mod:`companion.base_model`, the chat model of
:mod:`companion.sft`, the aligned models of :mod:`companion.rlhf`) are such checkpoints inside
``companion/assets``, each recreated by the command :data:`SHIPPED` names; one call loads any of
them, ``load_shipped("chat")``, and :func:`shipped_info` reads its figures.

Left out: sharded checkpoints, keeping the last *k* checkpoints, and saving CUDA RNG states
(dropout on CUDA is therefore not resumed bit for bit; CPU runs are).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from companion.data import load_course_tokenizer
from companion.environment import DeviceLike, resolve_device
from companion.model import GPT, GPTConfig
from companion.tokenizer import BPETokenizer
from companion.train_config import History, TrainConfig

FORMAT = "companion-checkpoint v1"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "checkpoint.json"


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read. ``model`` has the weights loaded, in eval mode."""

    model: nn.Module  # the model, on the requested device
    step: int  # optimiser steps completed when saved
    train_config: TrainConfig | None = None  # None if none was saved
    history: History = field(default_factory=History)  # empty if none was saved
    generator_state: torch.Tensor | None = None  # the batch sampler's state (uint8)
    torch_rng_state: torch.Tensor | None = None  # torch's global CPU generator state (uint8)
    extra: dict[str, Any] = field(default_factory=dict)  # anything else saved, e.g. val loss


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    train_config: TrainConfig | None = None,
    history: History | None = None,
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

    Only a checkpoint is ever replaced: an existing ``path`` must be a directory holding
    ``checkpoint.json`` and nothing but checkpoint files, or a ``ValueError`` names it before
    anything is written (a folder of your own files is never emptied to make room).

    >>> import tempfile
    >>> model = GPT(GPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=1, d_model=4))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save_checkpoint(f"{folder}/ckpt", model, step=3)
    ...     sorted(p.name for p in path.iterdir()), load_checkpoint(path).step
    (['checkpoint.json', 'model.safetensors'], 3)
    """
    path = Path(path)
    previous = _previous(path)
    check_can_save(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = generator is not None  # a training run: save where both random streams stand
    meta: dict[str, Any] = {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "train_config": train_config.to_dict() if train_config is not None else None,
        "step": step,
        "history": history.to_dict() if history is not None else None,
        "generator_state": generator.get_state().tolist() if rng else None,
        "torch_rng_state": torch.get_rng_state().tolist() if rng else None,
        "optimizer": None,
        "extra": extra or {},
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_model(  # ties kept once; weights stored transposed are written row by row
            model, str(tmp / MODEL_FILE), metadata={"format": FORMAT}, force_contiguous=True
        )
        if optimizer is not None:
            tensors, meta["optimizer"] = _split_optimizer_state(optimizer)
            save_file(tensors, tmp / OPTIMIZER_FILE, metadata={"format": FORMAT})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        _usual_permissions(tmp)
        shutil.rmtree(previous, ignore_errors=True)  # a checkpoint: checked above
        if path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _previous(path: Path) -> Path:
    """Where :func:`save_checkpoint` keeps the old checkpoint while it swaps in the new one."""
    return path.parent / f".{path.name}.previous"


def check_can_save(path: str | Path) -> None:
    """The ``ValueError`` :func:`save_checkpoint` would raise for ``path``, raised now: a long run
    can ask before it starts. ``path`` and its ``.previous`` must be new or checkpoints."""
    path = Path(path)
    _check_replaceable(path)
    _check_replaceable(_previous(path))


def _check_replaceable(path: Path) -> None:
    """A ``ValueError`` naming ``path`` if it exists and is not a checkpoint we may replace."""
    if not path.exists() and not path.is_symlink():
        return
    names = {e.name for e in path.iterdir()} if path.is_dir() and not path.is_symlink() else set()
    foreign = sorted(names - {META_FILE, MODEL_FILE, OPTIMIZER_FILE})
    if META_FILE not in names:
        problem = "is not a checkpoint folder (it has no checkpoint.json)"
    elif foreign:
        problem = f"holds {foreign[:5]}, which a checkpoint does not"
    else:
        return  # a checkpoint: save_checkpoint may replace it
    raise ValueError(
        f"{path} already exists and {problem}; nothing was written or deleted. Save the "
        "checkpoint to a new folder (e.g. path / 'checkpoint'), or move your files elsewhere"
    )


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
    path = _resolve(path)
    meta = _read_meta(path / META_FILE)
    saved = _saved_config(meta["model_config"], path / META_FILE).to_dict()
    model = GPT(GPTConfig(**saved)) if model is None else model
    ours = model.config.to_dict()
    for name in sorted(set(ours) | set(saved)):
        if ours.get(name) != saved.get(name):
            raise ValueError(
                f"GPTConfig.{name} differs: {ours.get(name)!r} in the model, "
                f"{saved.get(name)!r} in the checkpoint; build the model with the checkpoint's "
                "config (load_checkpoint(path) without a model does that)"
            )
    _load_tensors(path / MODEL_FILE, lambda file: load_model(model, file))
    model.to(resolve_device(device)).eval()
    if optimizer is not None:
        _load_optimizer_state(optimizer, path, meta["optimizer"])

    def rng_state(values: list[int] | None) -> torch.Tensor | None:
        return None if values is None else torch.tensor(values, dtype=torch.uint8)

    return Checkpoint(
        model=model,
        step=meta["step"],
        train_config=TrainConfig.from_dict(meta["train_config"]) if meta["train_config"] else None,
        history=History.from_dict(meta["history"]) if meta["history"] else History(),
        generator_state=rng_state(meta["generator_state"]),
        torch_rng_state=rng_state(meta["torch_rng_state"]),
        extra=meta["extra"],
    )


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``checkpoint.json`` (configs, step, history, ``extra``), read without its
    tensors: what a resume checks before it writes anything into a model."""
    path = _resolve(path)
    return _read_meta(path / META_FILE)


def _saved_config(fields: Any, file: Path) -> GPTConfig:
    """The model config a checkpoint names; fields added to GPTConfig since take their defaults.
    An unknown or missing field is a ``ValueError`` naming it and the file."""
    known = {f.name: f for f in dataclasses.fields(GPTConfig)}
    if not isinstance(fields, dict):
        raise ValueError(f"{file}: model_config must be a JSON object of GPTConfig's fields")
    required = {
        n
        for n, f in known.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    unknown, missing = sorted(set(fields) - set(known)), sorted(required - set(fields))
    if unknown or missing:
        raise ValueError(
            f"{file}: model_config has unknown fields {unknown} and lacks {missing}; "
            f"GPTConfig's fields are {sorted(known)}. Was it written by another program, or "
            "edited by hand? Save the model again with save_checkpoint"
        )
    return GPTConfig(**fields)


def _resolve(path: str | Path) -> Path:
    """The checkpoint directory, or its ``.previous`` if a save died between the two renames."""
    path = Path(path)
    previous = _previous(path)
    if not (path / META_FILE).is_file() and (previous / META_FILE).is_file():
        return previous
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}; save one with save_checkpoint")
    return path


def _read_meta(file: Path) -> dict[str, Any]:
    """``checkpoint.json`` as a dict; a ``ValueError`` naming the file if it is missing or broken."""
    keys = {"format", "model_config", "train_config", "step", "history", "extra"}
    keys |= {"generator_state", "torch_rng_state", "optimizer"}
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{file} cannot be read as a checkpoint ({err}); the checkpoint is damaged or "
            "incomplete: save it again, or for a shipped model reinstall the package"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not keys <= set(meta):
        raise ValueError(
            f"{file} is not a {FORMAT!r} file; save the checkpoint with save_checkpoint"
        )
    return meta


def _load_tensors(file: Path, load: Any) -> Any:
    """Run ``load(file)``; a missing, truncated or mismatched tensor file gives a ``ValueError``."""
    if not file.is_file():
        raise ValueError(
            f"{file} is missing, so the checkpoint is incomplete; save it again, or for a "
            "shipped model reinstall the package"
        )
    try:
        return load(str(file))
    except SafetensorError as err:
        raise ValueError(
            f"{file} is damaged ({err}); save the checkpoint again, or for a shipped model "
            "reinstall the package"
        ) from None
    except RuntimeError as err:  # load_state_dict: a tensor missing, extra, or of another shape
        raise ValueError(f"{file} does not fit the model: {err}") from None


def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """``optimizer.state_dict()`` as tensors (``state.<i>.<key>``) and JSON-ready scalars."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer_state(optimizer: torch.optim.Optimizer, path: Path, saved: dict | None):
    """The inverse of :func:`_split_optimizer_state`, into ``optimizer``."""
    if saved is None:
        raise ValueError(f"the checkpoint at {path} has no optimizer state to load")
    tensors = _load_tensors(path / OPTIMIZER_FILE, load_file)
    groups = saved["param_groups"]
    sizes = [len(g["params"]) for g in optimizer.param_groups], [len(g["params"]) for g in groups]
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
        group["betas"] = tuple(group["betas"])  # JSON gave a list back
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    for param, param_state in optimizer.state.items():  # saved row by row: back to the param's
        for name, value in param_state.items():  # strides (kv_cache.stored_transposed), so the
            if isinstance(value, torch.Tensor) and value.shape == param.shape:  # update is exact
                param_state[name] = torch.empty_like(param).copy_(value)


def _usual_permissions(directory: Path) -> None:
    """mkdtemp makes a private (0700) directory; give it and its files the umask's permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for file in directory.iterdir():
        os.chmod(file, 0o666 & ~umask)


# --- models shipped inside the package -------------------------------------------------------

SHIPPED: dict[str, str] = {  # name -> the command that recreates companion/assets/<name>_model
    "base": "python -m companion.base_model --out companion/assets/base_model",
    "chat": "python -m companion.sft --out companion/assets/chat_model --ablation",
    "ppo": "python -m companion.rlhf ppo --out companion/assets/ppo_model",
    "dpo": "python -m companion.rlhf dpo --out companion/assets/dpo_model",
    "cai": "python -m companion.rlhf cai --out companion/assets/cai_model",
    "reasoning": "python -m companion.reasoning --out companion/assets/reasoning_model",
}


def load_shipped(name: str, device: DeviceLike = None) -> tuple[GPT, BPETokenizer]:
    """A model shipped in ``companion/assets`` and its tokenizer: ``(GPT in eval mode on
    device, BPETokenizer)``. ``name`` is one of :data:`SHIPPED`: "base" (chapter 4), "chat"
    (chapter 5), "ppo", "dpo", "cai" (chapter 6), "reasoning" (chapter 8). Nothing is trained or downloaded.

    >>> model, tokenizer = load_shipped("chat", "cpu")
    >>> model.training, model.config.vocab_size == tokenizer.vocab_size
    (False, True)
    """
    with importlib.resources.as_file(_shipped(name)) as path:
        model = load_checkpoint(path, device=device).model
    return model, load_course_tokenizer()


def shipped_info(name: str) -> dict[str, Any]:
    """The shipped model's ``checkpoint.json``: its configs, history and, in ``extra``, its
    figures and ``command``, the command that recreates it (:data:`SHIPPED`).

    >>> shipped_info("base")["extra"]["command"] == SHIPPED["base"]
    True
    """
    with importlib.resources.as_file(_shipped(name)) as path:
        return _read_meta(path / META_FILE)


def shipped_path(name: str) -> Path:
    """Where the shipped model ``name`` lives in the source tree (its command rewrites it)."""
    _check_shipped(name)
    return Path(__file__).resolve().parent / "assets" / f"{name}_model"


def _check_shipped(name: str) -> None:
    if name not in SHIPPED:
        raise ValueError(f"no shipped model {name!r}; the shipped models are {sorted(SHIPPED)}")


def _shipped(name: str):
    _check_shipped(name)
    directory = importlib.resources.files("companion") / "assets" / f"{name}_model"
    if not (directory / META_FILE).is_file():
        raise FileNotFoundError(
            f"the shipped model is missing from companion/assets/{name}_model; reinstall the "
            f"package, or recreate it with `{SHIPPED[name]}`"
        )
    return directory
