"""``train`` on 2 gloo processes: equal to one process with twice the batch, rank 0 alone writes,
a DDP checkpoint loads in one process and resumes on 2, a failing rank ends the run.

Each spawn starts 2 fresh Python processes (seconds each on 2 cores), so one spawn runs every
2-process scenario in turn and writes what it saw to ``tmp_path``; the tests read it.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import companion.distributed
import companion.pretraining
from companion.checkpoints import load_checkpoint
from companion.data import get_batch
from companion.environment import make_generator
from companion.pretraining import init_model, train

from _tiny import TINY, TOKENS, tiny_config

B, T = 4, 16  # windows per rank, tokens per window
STEPS = 3
TIMEOUT = timedelta(seconds=30)  # a rank waiting for a dead one gives up after this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shared_windows(world_size: int):
    """A ``batch_fn``: the same 2B training windows on every rank (from its own generator, not
    the rank's), rank r keeping windows r·B … (r+1)·B; validation batches whole."""
    shared = make_generator(123)

    def batch_fn(tokens, generator):
        if tokens is not TOKENS:  # validation: every rank the same batch
            return get_batch(tokens, 2 * B, T, generator=generator)
        x, y = get_batch(tokens, 2 * B, T, generator=shared)  # (2B, T) each
        rank = dist.get_rank() if world_size > 1 else None
        return (
            (x, y) if rank is None else (x[rank * B : (rank + 1) * B], y[rank * B : (rank + 1) * B])
        )

    return batch_fn


def _config(folder, **changes):
    values = dict(steps=STEPS, batch_size=B, eval_interval=1, checkpoint_interval=2)
    return tiny_config(**(values | {"checkpoint_dir": str(folder)} | changes))


def _save_run(path, model, history):
    save_file({k: v.clone() for k, v in model.state_dict().items()}, f"{path}.safetensors")
    history.save(f"{path}.json")


def _worker(rank, world_size, port, folder):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=TIMEOUT,
    )  # fmt: skip
    real_save = companion.pretraining.save_checkpoint

    def recording_save(path, *args, **kwargs):  # who writes checkpoints
        with open(f"{folder}/writes-rank{rank}.txt", "a") as f:
            f.write(f"{path}\n")
        return real_save(path, *args, **kwargs)

    companion.pretraining.save_checkpoint = recording_save
    # 1. the same windows as one process with 2B: checkpoints at steps 2 and 3
    model = init_model(TINY, seed=0)
    history = train(
        model, TOKENS, TOKENS[:200], _config(f"{folder}/shared"), progress=False,
        batch_fn=_shared_windows(world_size),
    )  # fmt: skip
    if rank == 0:
        _save_run(f"{folder}/shared-final", model, history)
    # 2. the default batches (each rank its own stream), then resumed from step 2
    config = _config(f"{folder}/own")
    model = init_model(TINY, seed=0)
    history = train(model, TOKENS, TOKENS[:200], config, progress=False)
    resumed = init_model(TINY, seed=5)  # other weights: the checkpoint must replace them
    again = train(
        resumed, TOKENS, TOKENS[:200], _config(f"{folder}/own-again"), progress=False,
        resume_from=f"{folder}/own/step-000002",
    )  # fmt: skip
    if rank == 0:
        _save_run(f"{folder}/own-final", model, history)
        _save_run(f"{folder}/own-resumed", resumed, again)
    dist.barrier()  # every file above is written before the run below fails

    # 3. rank 1 raises at its second step while rank 0 waits for it in an all-reduce
    def batch_fn(tokens, generator, calls=[0]):  # noqa: B006 (a counter on purpose)
        calls[0] += 1
        if rank == 1 and calls[0] > 2 + 1:  # 2 validation batches, then step 1, then step 2
            raise RuntimeError("rank 1 fails on purpose")
        return get_batch(tokens, B, T, generator=generator)

    config = _config(None, eval_batches=2)
    train(init_model(TINY, seed=0), TOKENS, TOKENS[:200], config, batch_fn=batch_fn, progress=False)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    started = time.perf_counter()
    with pytest.raises(mp.ProcessRaisedException) as failure:  # scenario 3 ends the run
        mp.spawn(_worker, args=(2, _free_port(), str(folder)), nprocs=2, join=True)
    (folder / "failure.txt").write_text(str(failure.value))
    (folder / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}")
    return folder


def _tensors(path):
    return load_file(f"{path}.safetensors")


def test_ddp_with_batch_b_per_rank_equals_one_process_with_2b(ddp_run, tmp_path):
    model = init_model(TINY, seed=0)
    history = train(
        model, TOKENS, TOKENS[:200], _config(tmp_path, batch_size=2 * B), progress=False,
        batch_fn=_shared_windows(1),
    )  # fmt: skip
    ddp = json.loads((ddp_run / "shared-final.json").read_text())
    # The two runs differ only in the order of float32 sums: the loss is a mean over 2·B·T = 128
    # cross-entropies (one sum of 128, or two of 64 then an average), each rounding at most
    # u = 2**-24 ≈ 6e-8 relative per addition, so |difference| ≤ 128 · u · loss ≈ 8e-6 · loss;
    # 1e-5 relative covers it. The gradients then differ by the same kind of rounding, and AdamW
    # divides each by its own size, so the weights after 3 steps of lr ≤ 3e-3 are compared with
    # torch's float32 defaults (rtol 1.3e-6, atol 1e-5): a rank that kept its own gradient
    # instead of the average would move weights by about lr = 1.5e-3 (warm-up) at once.
    assert history.train_loss == pytest.approx(ddp["train_loss"], rel=1e-5)
    assert history.val_loss == pytest.approx(ddp["val_loss"], rel=1e-5)
    assert history.tokens_seen == ddp["tokens_seen"]  # 2·B·T per step both times
    for name, tensor in _tensors(ddp_run / "shared-final").items():
        torch.testing.assert_close(model.state_dict()[name], tensor)


def test_only_rank_0_writes_checkpoints(ddp_run):
    assert not (ddp_run / "writes-rank1.txt").exists()
    written = (ddp_run / "writes-rank0.txt").read_text().split()
    assert [p.rsplit("/", 1)[1] for p in written[:2]] == ["step-000002", "step-000003"]
    assert sorted(p.name for p in (ddp_run / "shared").iterdir()) == ["step-000002", "step-000003"]


def test_ddp_checkpoint_resumes_on_2_processes_as_if_never_stopped(ddp_run):
    final, resumed = _tensors(ddp_run / "own-final"), _tensors(ddp_run / "own-resumed")
    for name in final:  # the same arithmetic in the same order: equal to the bit
        assert torch.equal(final[name], resumed[name]), name
    a = json.loads((ddp_run / "own-final.json").read_text())
    b = json.loads((ddp_run / "own-resumed.json").read_text())
    assert a.pop("seconds") != [] and b.pop("seconds") != []  # wall time: never equal
    assert a == b


def test_ddp_checkpoint_loads_in_one_process_and_resuming_it_there_says_how(ddp_run, tmp_path):
    state = load_checkpoint(ddp_run / "own" / "step-000003", init_model(TINY, seed=5))
    final = _tensors(ddp_run / "own-final")
    for name, tensor in state.model.state_dict().items():
        assert torch.equal(tensor, final[name]), name  # no "module." prefix, all weights
    assert state.extra["world_size"] == 2 and len(state.extra["rank_streams"]) == 2
    with pytest.raises(ValueError, match="torchrun --nproc_per_node=2"):
        train(
            init_model(TINY, seed=0), TOKENS, TOKENS[:200], _config(tmp_path), progress=False,
            resume_from=ddp_run / "own" / "step-000002",
        )  # fmt: skip
    # a new one-process run from the DDP run's weights is what the message offers instead
    history = train(
        state.model,
        TOKENS,
        TOKENS[:200],
        _config(tmp_path, steps=1, warmup_steps=0),
        progress=False,
    )
    assert history.step == [1]


def test_a_failing_rank_ends_the_run_with_its_error(ddp_run):
    assert "rank 1 fails on purpose" in (ddp_run / "failure.txt").read_text()
    # ended by the failure, not by the 30 s process-group timeout nor a hang
    assert float((ddp_run / "seconds.txt").read_text()) < TIMEOUT.total_seconds() + 60


def test_rank_seeds_and_the_environment():
    assert companion.distributed.rank_seed(7, 0) == 7  # rank 0 draws what one process draws
    seeds = {companion.distributed.rank_seed(7, r) for r in range(8)}
    assert len(seeds) == 8
    ranks = companion.distributed.ranks_from_environment()
    assert (ranks.rank, ranks.world_size, ranks.is_main) == (0, 1, True)


def test_bad_rank_environment_names_the_fix(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="torchrun"):
        companion.distributed.ranks_from_environment()


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE set but RANK, LOCAL_RANK not"),
        ({"RANK": "0", "WORLD_SIZE": "0", "LOCAL_RANK": "0"}, "WORLD_SIZE=0 must be >= 1"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "LOCAL_RANK=-1"),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "5"}, "LOCAL_RANK=5"),
    ],
)
def test_an_environment_torchrun_would_not_set_is_refused(monkeypatch, environment, message):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        companion.distributed.ranks_from_environment()
