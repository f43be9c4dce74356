"""Training checkpoints: atomic writes, keep-last-k, exact resume.

A checkpoint ``step_<step>.pt`` holds the model (unwrapped from DDP), optimizer, scheduler and
gradient-scaler states, the step, the data position and the random states of Python, NumPy and torch
(CPU and every CUDA device), so training resumed from it continues exactly as if never stopped.
Writes go to a temporary file in the same folder, are fsynced and then renamed over the target:
a crash leaves the previous checkpoint intact, never half a file.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

_NAME = re.compile(r"^step_(\d+)\.pt$")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / ``torch.compile`` wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def rng_state() -> dict:
    np_state = np.random.get_state()  # noqa: NPY002 - the global stream user code draws from
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, key.numpy(), *rest))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def checkpoints(folder: str | os.PathLike) -> list[Path]:
    """``step_*.pt`` files in ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    found = checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(folder: str | os.PathLike, step: int, keep_last: int | None = None, **states) -> Path:
    """Write ``step_<step>.pt`` with ``states`` (objects with ``state_dict()`` are saved through it,
    plain values as they are) plus ``step`` and the RNG states; keep only the newest ``keep_last``."""
    payload = {
        "step": step,
        "rng": rng_state(),
        **{
            k: (unwrap(v) if isinstance(v, nn.Module) else v).state_dict() if hasattr(v, "state_dict") else v
            for k, v in states.items()
        },
    }
    path = Path(folder) / f"step_{step:08d}.pt"
    atomic_save(payload, path)
    if keep_last is not None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None; got {keep_last}")
        for old in checkpoints(folder)[:-keep_last]:
            old.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, restore_rng: bool = True, map_location="cpu", **targets) -> dict:
    """Load ``path`` into ``targets`` (``model=..., optimizer=...``: each gets ``load_state_dict``,
    models strictly) and restore the RNG states; returns the whole payload (``payload["step"]``).

    A missing file or a checkpoint lacking a requested entry is an error naming both.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    missing = sorted(k for k in targets if k not in payload)
    if missing:
        raise KeyError(f"checkpoint {path} has no {missing}; it holds {sorted(payload)}")
    for key, target in targets.items():
        if isinstance(target, nn.Module):
            unwrap(target).load_state_dict(payload[key], strict=True)
        elif target is not None:
            target.load_state_dict(payload[key])
    if restore_rng:
        set_rng_state(payload["rng"])
    return payload
