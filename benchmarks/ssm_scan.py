"""Selective scan (Mamba-1) reference: plain sequential loop vs the chunked reference.

Tokens/s and peak memory at B=2, N=16, D in {384, 768, 1536}, L in {197, 1569, 3137, 6272}, with
the full Mamba configuration (delta bias + softplus, D skip, z gate). Writes
``benchmarks/results/ssm_scan_<device>.json``.

    python benchmarks/ssm_scan.py                 # CPU
    python benchmarks/ssm_scan.py --device cuda   # GPU, when there is one
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import describe_device, measure_peak_bytes, measure_time, write_result

from videostate.ssm.selective_scan import default_chunk_size, selective_scan_reference

BATCH, N = 2, 16


def sequential_loop(u, delta, A, B, C, D, z, delta_bias):
    """The plain loop over time: one ``(batch, dim, N)`` state, nothing of size L*N."""
    delta = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = (
            torch.exp(delta[:, :, t, None] * A) * h
            + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        )
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=-1) + D[:, None] * u
    return y * F.silu(z)


def make_inputs(dim: int, length: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    inputs = {
        "u": torch.randn(BATCH, dim, length, generator=g),
        "delta": torch.randn(BATCH, dim, length, generator=g) * 0.5,
        "A": -torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(BATCH, N, length, generator=g),
        "C": torch.randn(BATCH, N, length, generator=g),
        "D": torch.ones(dim),
        "z": torch.randn(BATCH, dim, length, generator=g),
        "delta_bias": torch.randn(dim, generator=g) * 0.5 - 4.0,
    }
    return {k: v.to(device) for k, v in inputs.items()}


@torch.no_grad()
def measure_case(dim: int, length: int, device: torch.device, repeats: int) -> dict:
    inputs = make_inputs(dim, length, device)

    def loop():
        return sequential_loop(**inputs)

    def chunked():
        return selective_scan_reference(**inputs, delta_softplus=True)

    torch.testing.assert_close(chunked(), loop(), rtol=1e-4, atol=1e-4)
    loop_s, chunked_s = measure_time(loop, device, repeats), measure_time(chunked, device, repeats)
    tokens = BATCH * length
    return {
        "batch": BATCH,
        "dim": dim,
        "length": length,
        "N": N,
        "chunk": default_chunk_size(BATCH, dim, N),
        "loop_tokens_per_s": tokens / loop_s,
        "chunked_tokens_per_s": tokens / chunked_s,
        "chunked_time_over_loop": chunked_s / loop_s,
        "loop_peak_bytes": measure_peak_bytes(loop, device, inputs),
        "chunked_peak_bytes": measure_peak_bytes(chunked, device, inputs),
        "bdln_float32_bytes": BATCH * dim * length * N * 4,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 768, 1536])
    parser.add_argument("--lengths", type=int, nargs="+", default=[197, 1569, 3137, 6272])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for dim in args.dims:
        for length in args.lengths:
            row = measure_case(dim, length, device, args.repeats)
            rows.append(row)
            mib = 2.0**20
            print(
                f"D={dim:5d} L={length:5d}  tokens/s loop {row['loop_tokens_per_s']:9.0f} "
                f"chunked {row['chunked_tokens_per_s']:9.0f}  time ratio {row['chunked_time_over_loop']:.2f}  "
                f"peak MiB loop {row['loop_peak_bytes'] / mib:7.1f} chunked {row['chunked_peak_bytes'] / mib:7.1f} "
                f"(B*D*L*N*4 = {row['bdln_float32_bytes'] / mib:7.1f})",
                flush=True,
            )
    path = write_result(f"ssm_scan_{device.type}.json", {"environment": describe_device(device), "rows": rows})
    print(f"wrote {path.relative_to(path.parents[2])}")


if __name__ == "__main__":
    main()
