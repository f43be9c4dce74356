"""The depth task under DDP: two gloo processes on CPU train two steps (one single-frame batch, one chunked
clip with several backward passes) and end with the same weights."""

import os
import socket
import time

import torch
import torch.multiprocessing as mp

from videostate.training.recipe import load_recipe, train

from .test_training import write_rgbd_sequence

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str, teacher_dir: str, root: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    recipe = load_recipe(
        {
            "task": "videostate.depth.training:TASK",
            "trainer": {"max_steps": 2, "batch_size": 1, "output_dir": f"{out}/run", "progress": False},
            "optim": {"lr": 1e-2},
            "model": {"teacher": teacher_dir, "input_size": 28, "temporal": {"num_blocks": [1, 1, 1, 1], "d_state": 4}},
            "data": {
                "sources": [f"{root}/image"],
                "depth_sources": [f"{root}/depth"],
                "clip_length": 4,
                "chunk_size": 2,
                "p_single_frame": 0.5,
                "clips_per_video": 4,
                "crop_size": [28, 28],
                "flow_preset": "ultrafast",
            },
        }
    )
    model = train(recipe)
    torch.save(dict(model.state_dict()), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_depth_training_under_ddp_keeps_ranks_in_step(teacher_dir, tmp_path):
    write_rgbd_sequence(tmp_path / "rgbd")
    ctx = mp.start_processes(
        _worker,
        args=(_free_port(), str(tmp_path), str(teacher_dir), str(tmp_path / "rgbd")),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError("DDP workers did not finish within 240 s")
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
    assert not torch.equal(first["temporal_out.0.weight"], torch.zeros_like(first["temporal_out.0.weight"]))
