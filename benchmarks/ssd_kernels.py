"""Triton SSD (Mamba-2) chunked scan against the PyTorch reference on the GPU, in one run.

bfloat16 x/dt/B/C/z, float32 A/D/dt bias, softplus, D and z gate, on two shapes: Mamba-2's (batch 8, L 2048,
24 heads of 64, N 128) and the frame-interpolation backbone's first stage on a 64x64 token grid for two
frames (batch 4, L 8192, embed 32, expand 2, headdim 16 -> 4 heads, N 64). For each: forward and
forward+backward times (CUDA events, median), with and without carried states, peak memory of a training
step against one ``(batch, heads, L, headdim, N)`` float32 tensor, the forward's bytes (inputs read once,
output written once) against a device copy measured in the same run, and the share of the forward spent in
the PyTorch glue (dt bias + softplus and the chunk cumulative sum of ``dt * A``). Writes
``benchmarks/results/ssd_kernels_<device>.json``.

    python benchmarks/ssd_kernels.py
"""

from __future__ import annotations

import importlib.metadata
import re

import torch

from benchmarks.common import copy_bandwidth, cuda_ms, describe_device, write_result
from videostate.ssm.kernels.ssd import chunk_log_decay, kernel_chunk
from videostate.ssm.ssd import NO_LIMIT, discretize_dt, ssd_scan

# (batch, L, heads, headdim, groups, N, chunk_size)
SHAPES = {
    "mamba2": (8, 2048, 24, 64, 1, 128, 64),
    "interpolation": (4, 2 * 64 * 64, 4, 16, 1, 64, 64),
}
GRADS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")


def ssd_inputs(batch, length, heads, headdim, groups, n, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    bf16 = torch.bfloat16

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device=device) * scale

    return {
        "x": randn(batch, length, heads, headdim).to(bf16),
        "dt": randn(batch, length, heads, scale=0.5).to(bf16),
        "A": -torch.linspace(1.0, 16.0, heads, device=device),
        "B": randn(batch, length, groups, n).to(bf16),
        "C": randn(batch, length, groups, n).to(bf16),
        "D": torch.ones(heads, device=device),
        "z": randn(batch, length, heads, headdim).to(bf16),
        "dt_bias": randn(heads, scale=0.5) - 4.0,
    }


def forward_bytes(batch, length, heads, headdim, groups, n) -> int:
    """bfloat16 x, z, dt, B, C read once and y written once."""
    return 2 * (3 * batch * length * heads * headdim + batch * length * heads + 2 * batch * length * groups * n)


def step(backend, inputs, chunk_size, backward, **extra):
    leaves = {k: v.detach().requires_grad_(backward and k in GRADS) for k, v in inputs.items()}

    def run():
        with torch.set_grad_enabled(backward):
            out = ssd_scan(**leaves, chunk_size=chunk_size, dt_softplus=True, backend=backend, **extra)
            y = out[0] if isinstance(out, tuple) else out
            if backward:
                torch.autograd.grad(y, [leaves[k] for k in GRADS], torch.ones_like(y))

    return run


def peak_bytes(fn, device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def bench_shape(name, shape, device, copy_bw) -> dict:
    batch, length, heads, headdim, groups, n, chunk_size = shape
    inputs = ssd_inputs(batch, length, heads, headdim, groups, n, device)
    fields = ("batch", "L", "heads", "headdim", "groups", "N", "chunk_size")
    row = {"name": name, "shape": dict(zip(fields, shape, strict=True))}
    row["kernel_chunk"] = kernel_chunk(chunk_size)
    states = torch.randn(batch, heads, headdim, n, device=device)
    for backend in ("triton", "reference"):
        print(f"{name}: {backend}", flush=True)
        try:
            row[f"{backend}_forward_ms"] = cuda_ms(step(backend, inputs, chunk_size, False))
            row[f"{backend}_forward_with_states_ms"] = cuda_ms(
                step(backend, inputs, chunk_size, False, initial_states=states, return_final_states=True)
            )
            row[f"{backend}_forward_backward_ms"] = cuda_ms(step(backend, inputs, chunk_size, True))
            row[f"{backend}_peak_extra_bytes_fwd_bwd"] = peak_bytes(step(backend, inputs, chunk_size, True), device)
        except torch.OutOfMemoryError:
            row[f"{backend}_error"] = "out of memory"
        torch.cuda.empty_cache()

    def glue():
        dt = discretize_dt(inputs["dt"], inputs["dt_bias"], True, NO_LIMIT, torch.float32)
        return chunk_log_decay(dt, inputs["A"], row["kernel_chunk"])

    row["glue_forward_ms"] = cuda_ms(glue)
    row["forward_bytes"] = forward_bytes(*shape[:-1])
    row["floor_ms"] = row["forward_bytes"] / copy_bw * 1e3
    row["bytes_of_one_BHLPN_float32"] = 4 * batch * heads * length * headdim * n
    if "triton_forward_ms" in row:
        row["forward_fraction_of_copy_bw"] = row["floor_ms"] / row["triton_forward_ms"]
        row["glue_share_of_forward"] = row["glue_forward_ms"] / row["triton_forward_ms"]
        for key in ("forward", "forward_backward"):
            if f"reference_{key}_ms" in row:
                row[f"speedup_{key}_vs_reference"] = row[f"reference_{key}_ms"] / row[f"triton_{key}_ms"]
    print(row, flush=True)
    return row


def main() -> None:
    device = torch.device("cuda")
    info = describe_device(device)
    info["triton"] = importlib.metadata.version("triton")
    copy_bw = copy_bandwidth(device)
    payload = {**info, "copy_bandwidth_bytes_per_s": copy_bw, "dtype": "bfloat16", "ssd_scan": []}
    for name, shape in SHAPES.items():
        try:
            payload["ssd_scan"].append(bench_shape(name, shape, device, copy_bw))
        except Exception as error:  # keep what the other shape measured
            payload.setdefault("errors", {})[name] = repr(error)
            print(f"{name} failed: {error!r}", flush=True)
        torch.cuda.empty_cache()
    slug = re.sub(r"[^a-z0-9]+", "_", info["device"].lower()).strip("_")
    path = write_result(f"ssd_kernels_{slug}.json", payload)

    def fmt(row, key, spec=".3f"):
        value = row.get(key)
        return format(value, spec) if isinstance(value, float) else "-"

    print(f"\ncopy bandwidth {copy_bw / 1e12:.2f} TB/s")
    print("shape | triton fwd ms (floor, % bw) | fwd+states | fwd+bwd ms | reference fwd / fwd+bwd ms | speedup"
          " fwd / fwd+bwd | peak MB triton / reference (one BHLPN fp32) | glue share")  # fmt: skip
    for r in payload["ssd_scan"]:
        mb = 1 << 20
        peaks = " / ".join(
            f"{r[k] / mb:.0f}" if k in r else "-"
            for k in ("triton_peak_extra_bytes_fwd_bwd", "reference_peak_extra_bytes_fwd_bwd")
        )
        print(
            f"{r['name']} | {fmt(r, 'triton_forward_ms')} ({r['floor_ms']:.3f}, "
            f"{100 * r.get('forward_fraction_of_copy_bw', 0):.0f}%) | {fmt(r, 'triton_forward_with_states_ms')}"
            f" | {fmt(r, 'triton_forward_backward_ms')} | {fmt(r, 'reference_forward_ms')} / "
            f"{fmt(r, 'reference_forward_backward_ms')} | {fmt(r, 'speedup_forward_vs_reference', '.1f')}x / "
            f"{fmt(r, 'speedup_forward_backward_vs_reference', '.1f')}x | {peaks} "
            f"({r['bytes_of_one_BHLPN_float32'] / mb:.0f}) | {100 * r.get('glue_share_of_forward', 0):.0f}%"
        )
    for name, error in payload.get("errors", {}).items():
        print(f"{name}: {error}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
