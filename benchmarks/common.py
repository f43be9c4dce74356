"""Helpers shared by the benchmark scripts: environment record, timing, peak memory, JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

RESULTS = Path(__file__).resolve().parent / "results"


def describe_device(device: torch.device) -> dict:
    """Device, library versions, date and the command line, for the result file."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python "
        + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device_type": device.type,
    }
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = _cpu_name()
        info["threads"] = torch.get_num_threads()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that run (on a GPU, each is at least one kernel launch from Python)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of tensor storage allocated by the ops run inside the mode and still referenced.

    Counts storages, so views share their base's bytes; storages created before the mode (the
    inputs) are never counted. Exact for tensor memory on any device; allocator slack is not included.
    """

    def __init__(self) -> None:
        super().__init__()
        self.external: set[int] = set()
        self.live: dict[int, list[int]] = {}  # data_ptr -> [nbytes, python references]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.live and not self.external:
            self.external = {
                t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if _is_tensor(t)
            }
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if _is_tensor(tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.external or storage.nbytes() == 0:
            return
        if key in self.live:
            self.live[key][1] += 1
        else:
            self.live[key] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]


def _is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


def measure_time(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """Best wall time of ``repeats`` runs, in seconds, after one untimed warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_peak_bytes(fn: Callable[[], object], device: torch.device, inputs: dict) -> int:
    """Peak bytes the run adds on top of its inputs.

    CUDA: the caching allocator's peak. CPU: :class:`TensorMemoryTracker` (the process resident set is
    too coarse for this).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    tracker = TensorMemoryTracker()
    tracker.external = {t.untyped_storage().data_ptr() for t in inputs.values() if _is_tensor(t)}
    with tracker:
        fn()
    return tracker.peak


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def cuda_ms(fn: Callable[[], object], rep: int = 200) -> float:
    """Median milliseconds of ``fn`` over about ``rep`` ms of repetitions (CUDA events), after warm-up."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = time.perf_counter() - start
    for _ in range(max(1, min(10, int(0.025 / max(once, 1e-6))))):
        fn()
    repeats = max(3, min(1000, int(rep * 1e-3 / max(once, 1e-6))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for begin, end in events:
        begin.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(begin.elapsed_time(end) for begin, end in events)


def kernel_ms(fn: Callable[[], object], reps: int = 20) -> float:
    """Milliseconds of GPU time per call of ``fn``: the summed durations of the kernels and memory operations it runs
    on the device (torch.profiler), after warm-up. Unlike :func:`cuda_ms` it leaves out the host's work between
    them, which bounds the wall time of a call whose kernels take less time than launching them."""
    fn()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    device_events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not device_events:
        raise RuntimeError("the profiler recorded no device work for the call")
    return sum(e.time_range.elapsed_us() for e in device_events) / reps / 1e3


def copy_bandwidth(device) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randn(1 << 28, device=device)
    dst = torch.empty_like(src)
    t = cuda_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (t * 1e-3)
