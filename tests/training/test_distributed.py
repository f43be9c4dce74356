"""Two gloo processes on CPU: the DDP-averaged gradient equals one process on the same global batch,
with gradient accumulation (no_sync) and truncated BPTT (several backward passes per micro-batch)."""

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from tests.training.tiny import SequenceData, tiny_model
from videostate.training import OptimConfig, Trainer, TrainerConfig, truncated_bptt
from videostate.training.distributed import init_distributed

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    data = SequenceData(n=8, length=5, seed=4)
    data.x, data.y = data.x.double(), data.y.double()
    return data


def _step(model, batch, backward):
    """Truncated BPTT in chunks of 3 over 5 steps: two backward passes per micro-batch."""
    x, y = batch
    state = _unwrap(model).init_state(x.shape[0], dtype=torch.float64)
    result = truncated_bptt(model, x, lambda out, t: (out - y[:, t]).pow(2).mean(), state, 3, backward=backward)
    return {"loss": result.loss}


def _unwrap(model):
    return getattr(model, "module", model)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    # rank 1 builds different weights on purpose: DDP must broadcast rank 0's
    model = tiny_model(seed=rank, dtype=torch.float64)
    cfg = TrainerConfig(
        max_steps=1,
        batch_size=2,
        grad_accum=2,
        clip_grad_norm=None,
        progress=False,
        log_every=1,
        output_dir=f"{out}/run",
    )
    trainer = Trainer(
        model,
        _step,
        _data(),
        cfg,
        OptimConfig(schedule="constant"),
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
    )
    assert trainer.dist.world_size == WORLD and trainer.dist.rank == rank
    seen = sorted(trainer.sampler)
    trained = trainer.fit()
    torch.save({"params": dict(trained.state_dict()), "samples": seen}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_gradient_equals_single_process_global_batch(tmp_path):
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError("DDP workers did not finish within 120 s")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    # the two ranks split the 8 samples between them, and end with the same weights
    assert sorted(results[0]["samples"] + results[1]["samples"]) == list(range(8))
    for name, value in results[0]["params"].items():
        assert torch.equal(value, results[1]["params"][name]), name
    # the checkpoint (written by rank 0 only) holds every rank's random streams
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "step_00000001.pt", weights_only=True)
    streams = checkpoint["rng_per_rank"]
    assert len(streams) == WORLD and not torch.equal(streams[0]["torch"], streams[1]["torch"])
    # oracle: rank 0's initial weights, truncated BPTT over the global batch of 8, one SGD step with lr 1
    reference = tiny_model(seed=0, dtype=torch.float64)
    data = _data()
    _step(reference, (data.x, data.y), torch.Tensor.backward)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(results[0]["params"][name], (p - p.grad).detach(), rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize(("device", "expected"), [("cuda", "cuda:0"), ("cuda:1", "cuda:1"), ("auto", "cuda:0")])
def test_cuda_device_without_index_is_the_local_rank(monkeypatch, device, expected):
    """``torch.cuda.set_device`` rejects a bare ``"cuda"``: a process takes ``cuda:LOCAL_RANK`` instead."""
    chosen = []

    def set_device(d):
        if d.index is None:
            raise ValueError(f"set_device needs an index; got {d}")
        chosen.append(d)

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    info, dev = init_distributed(device)
    assert dev == torch.device(expected) and chosen == [dev] and info.local_rank == 0
