"""Tokens/s and MFU of the base model's shape on 1 and 2 DDP processes, beside one plain process.

    python benchmarks/bench_ddp.py [--steps 20] [--device cpu]

Three runs of ``companion.scale`` (4 blocks of width 128, context 64, a step of 32 windows in
all), each in a fresh process: one process without torchrun using every core; ``torchrun
--nproc_per_node=1``; ``torchrun --nproc_per_node=2`` with 16 windows per process and one thread
each. MFU is against the matmul peak each run measures on its own processes, after training.

On a 2-core CPU expect no speed-up from 2 processes: the single process's matrix products
already run on both cores (2 threads), so the 2 processes share the same arithmetic units
between them and add their own costs: an all-reduce of every gradient each step (0.9 M floats
through gloo), the optimiser step done twice, and Python's per-step overhead done twice on
half the work. Data parallelism adds devices; it does not make one device faster. On a GPU node
each process gets its own GPU, and the tokens/s grow with the processes while the all-reduce
stays small beside the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

SHAPE = ["--layers", "4", "--heads", "4", "--width", "128", "--context", "64", "--quiet"]


def run(launcher: list[str], batch: int, threads: int, steps: int, device: str) -> dict:
    """One ``companion.scale`` run in a fresh process; its JSON figures."""
    with tempfile.TemporaryDirectory() as out:
        args = [*SHAPE, "--batch", str(batch), "--steps", str(steps), "--threads", str(threads)]
        args += ["--device", device, "--out", out, "--eval-interval", str(steps)]
        command = [*launcher, "-m", "companion.scale", *args]
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout[done.stdout.index("{") :])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--processes", type=int, default=2, help="processes of the DDP run")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    n = args.processes
    runs = [
        (f"1 process, {cores} threads", [sys.executable], 32, cores),
        ("torchrun, 1 process", [*torchrun, "--nproc_per_node=1"], 32, cores),
        (f"torchrun, {n} processes", [*torchrun, f"--nproc_per_node={n}"], 32 // n, cores // n),
    ]
    print(f"{cores} cores; {args.steps} steps of 32 windows × 64 tokens; device {args.device}")
    print(f"{'run':<24} {'tokens/s':>9} {'peak GFLOP/s':>13} {'MFU':>6} {'val loss':>9}")
    for name, launcher, batch, threads in runs:
        f = run(launcher, batch, max(1, threads), args.steps, args.device)
        peak = f["peak_flops_per_second"] / 1e9
        print(
            f"{name:<24} {f['tokens_per_second']:>9.0f} {peak:>13.1f} {f['mfu']:>6.1%} "
            f"{f['val_loss']:>9.3f}"
        )


if __name__ == "__main__":
    main()
