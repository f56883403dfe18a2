"""Devices, seeds and the environment check: the two helpers every other module leans on.

Taught in ``00_start_here.ipynb``. Nothing here runs at import time: no device is probed and no
random number generator is touched until you call a function.

Every function in the package that draws random numbers takes a ``seed=`` or ``generator=``
argument, and every function that creates a model or a batch takes ``device=``. A function that
*uses* a model takes no ``device=``: it runs the model where it is (:func:`model_device`) and
never moves it. The helpers below turn those arguments into the torch objects the code needs,
in one place.
"""

from __future__ import annotations

import platform
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata

import numpy as np
import torch
from torch import nn

DeviceLike = str | torch.device | None


def default_device() -> torch.device:
    """The best device this machine has, in the order cuda → mps → cpu.

    >>> default_device().type in {"cuda", "mps", "cpu"}
    True
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: DeviceLike = None) -> torch.device:
    """Turn a ``device=`` argument into a ``torch.device``; ``None`` means :func:`default_device`.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return default_device()
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device={device!r} is not a device torch knows; use 'cpu', 'cuda', 'cuda:0', "
            "'mps', or None to pick the best available one"
        ) from err


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` runs: the device of its first parameter. Functions that use a model run it
    there and put the tensors they make there; none moves the model.

    >>> model_device(nn.Linear(2, 2))
    device(type='cpu')
    """
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError(
            f"{type(model).__name__} has no parameters, so it has no device to run on; "
            "pass a model with weights, e.g. a GPT"
        ) from None


def make_generator(seed: int, device: DeviceLike = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` seeded with ``seed``, living on ``device``.

    Two generators made with the same seed draw the same numbers:

    >>> a, b = make_generator(0), make_generator(0)
    >>> torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    True
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}; pass e.g. seed=0")
    generator = torch.Generator(device=resolve_device(device))
    generator.manual_seed(seed)
    return generator


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (for code that does not take one).

    The package itself never relies on global state; notebooks call this once so that library
    code outside the package (e.g. weight initialisation in ``torch.nn``) is reproducible too.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}; pass e.g. seed=0")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_report(device: DeviceLike = None) -> dict[str, str]:
    """Versions and the device found, as a dict of strings ready to print.

    >>> report = environment_report("cpu")
    >>> report["device"]
    'cpu'
    """
    resolved = resolve_device(device)
    report = {
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "companion": _version("llm-course-companion"),
    }
    for package in ("torch", "numpy", "tiktoken", "matplotlib", "ipywidgets", "safetensors"):
        report[package] = _version(package)
    report["device"] = str(resolved)
    if resolved.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(resolved)
    report["cpu threads"] = str(torch.get_num_threads())
    return report


@contextmanager
def eval_mode(*modules: object) -> Iterator[None]:
    """Run the ``with`` block with every ``nn.Module`` among ``modules`` in eval mode (no
    dropout), and give each its own mode back afterwards, even on an error; anything that is not a
    module (a plain function) is left alone.

    >>> layer = nn.Dropout(0.5).train()
    >>> with eval_mode(layer):
    ...     layer.training
    False
    >>> layer.training
    True
    """
    modes = [(m, m.training) for m in modules if isinstance(m, nn.Module)]
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in modes:
            m.train(was_training)
