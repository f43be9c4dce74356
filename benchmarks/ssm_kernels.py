"""GPU kernels of videostate.ssm: Triton vs the reference ops and a plain PyTorch loop, in one run.

Selective scan at the issue's three shapes (bf16 u/delta/z/B/C, fp32 A/D/delta bias, N=16, z gate, D,
delta bias and softplus): forward and backward times, achieved bytes/s against a device-to-device copy
measured in the same run (the bandwidth floor), peak memory, and the ratio to mamba_ssm's published
CUDA kernel figures. Each time is taken twice: the GPU time of the call's kernels (``*_kernel_ms``, from the
profiler: the figure the ratios and bytes/s use) and the wall time of the call (``*_ms``, CUDA events around each
call), which also holds the host's launch work where that takes longer than the kernels. Then the long-sequence
kernels (the state kernel, the lane kernel over whole sequences and the lane kernels in time-parallel segments) of
the forward and of the backward from few to many channels per SM (the figures behind the launcher's choices),
the fused bidirectional scan against two one-direction calls plus flips, the causal convolution and the fused
add + RMSNorm against the reference ops.
``--sweep`` first times a few launch settings of the scan kernels (forward kernel and its tiles, backward tiles)
and uses the fastest. Writes ``benchmarks/results/ssm_kernels_<device>.json``.

    python benchmarks/ssm_kernels.py --sweep
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import re

import torch
import torch.nn.functional as F

from benchmarks.common import copy_bandwidth, cuda_ms, describe_device, kernel_ms, write_result
from videostate.ssm.causal_conv import causal_conv1d
from videostate.ssm.kernels import selective_scan as scan_kernels
from videostate.ssm.mamba import selective_scan_bidirectional
from videostate.ssm.norm import rms_norm
from videostate.ssm.selective_scan import selective_scan

N = 16
SHAPES = [(8, 1536, 2048), (64, 384, 1569), (2, 768, 6272)]
# mamba_ssm's CUDA selective scan on an H100 (issue 5), and a plain PyTorch loop over time.
PEER_MS = {
    (8, 1536, 2048): {"forward": 0.45, "backward": 1.84, "loop_forward": 222.0},
    (64, 384, 1569): {"forward": 1.41, "backward": 5.62},
    (2, 768, 6272): {"forward": 0.38, "backward": 1.37, "loop_forward": 636.0},
}
# Launch settings tried by --sweep: the state kernels' (channels, steps per chunk, warps), the last H100 sweep's
# fastest first, and the step kernel's (lanes per channel, warps, unrolled steps).
STATE_SETTINGS = ((1, 256, 1), (1, 128, 1), (1, 512, 1), (2, 256, 1), (1, 512, 2), (1, 1024, 4))
FORWARD_CONFIGS = [
    *({"kernel": "state", "block_d": d, "block_l": l, "num_warps": w} for d, l, w in STATE_SETTINGS),
    *({"kernel": "step", "split": split, "num_warps": 2, "unroll": 4} for split in (1, 4, 8)),
]
BACKWARD_CONFIGS = [{"block_d": d, "block_l": l, "num_warps": w} for d, l, w in STATE_SETTINGS]
# The first two shapes, and the second at a length that is a multiple of 16 (which the lane kernel needs).
BIDIRECTIONAL_SHAPES = [*SHAPES[:2], (64, 384, 1568)]
# Shapes from few to many channels (batch * dim) per SM, short and long, for the choice between the kernels.
KERNEL_CHOICE_SHAPES = [(1, 384, 12544), (1, 768, 12544), (1, 1152, 12544), (1, 384, 1584), (1, 768, 512),
                        (2, 768, 1024), (2, 768, 6272), (1, 1152, 3136), (2, 1536, 2048), (4, 768, 3136),
                        (4, 1536, 4096), (4, 2048, 2048), (6, 1536, 2048), (8, 1536, 2048), (32, 768, 1024),
                        (64, 384, 1569)]  # fmt: skip


def scan_inputs(batch, dim, length, device, *, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    bf16 = torch.bfloat16

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device=device) * scale

    return {
        "u": randn(batch, dim, length).to(bf16),
        "delta": randn(batch, dim, length, scale=0.5).to(bf16),
        "A": -torch.arange(1, N + 1, dtype=torch.float32, device=device).repeat(dim, 1),
        "B": randn(batch, N, length).to(bf16),
        "C": randn(batch, N, length).to(bf16),
        "D": torch.ones(dim, device=device),
        "z": randn(batch, dim, length).to(bf16),
        "delta_bias": randn(dim, scale=0.5) - 4.0,
    }


def scan_bytes(batch, dim, length) -> int:
    """Inputs read once and the output written once (bf16), the small parameters ignored."""
    return 2 * (4 * batch * dim * length + 2 * batch * N * length)


def sequential_loop(u, delta, A, B, C, D, z, delta_bias):
    """The plain PyTorch loop over time (float32 state)."""
    u, delta, B, C, z = (t.float() for t in (u, delta, B, C, z))
    delta = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=-1) + D[:, None] * u
    return (y * F.silu(z)).to(torch.bfloat16)


def timed_backward(fn, inputs: dict, grad_names, timer=cuda_ms) -> float:
    """Time of the backward pass alone by ``timer`` (the graph is kept between repetitions)."""
    leaves = {k: v.detach().requires_grad_(k in grad_names) for k, v in inputs.items()}
    out = fn(**leaves)
    out = out[0] if isinstance(out, tuple) else out
    cotangent = torch.randn_like(out)
    targets = [leaves[k] for k in grad_names]
    return timer(lambda: torch.autograd.grad(out, targets, cotangent, retain_graph=True))


SCAN_GRADS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_fn(backend, **extra):
    def run(**inputs):
        return selective_scan(**inputs, delta_softplus=True, backend=backend, **extra)

    return run


def peak_bytes(fn, device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def scan_outputs(inputs: dict) -> list[torch.Tensor]:
    """Output and input gradients of the Triton scan (to check every swept configuration)."""
    leaves = {k: v.detach().requires_grad_(k in SCAN_GRADS) for k, v in inputs.items()}
    y = scan_fn("triton")(**leaves)
    cotangent = torch.randn(y.shape, generator=torch.Generator(device=y.device).manual_seed(0), device=y.device)
    return [y, *torch.autograd.grad(y, [leaves[k] for k in SCAN_GRADS], cotangent.to(y.dtype))]


def sweep(device) -> dict:
    """Time the launch settings on every shape; keep the one with the least summed ratio to the peer.

    Each configuration's output and gradients are compared with those of the default configuration
    (the one the tests run) on a small shape; a configuration that disagrees is not chosen. The lane kernels are held
    off meanwhile, so that the settings themselves are compared; afterwards the launcher's rule applies as usual."""
    rule = scan_kernels.LANE_MIN_CHANNELS_PER_SM
    scan_kernels.LANE_MIN_CHANNELS_PER_SM = float("inf")
    try:
        return sweep_settings(device)
    finally:
        scan_kernels.LANE_MIN_CHANNELS_PER_SM = rule


def sweep_settings(device) -> dict:
    """:func:`sweep`'s timings, with whatever kernels the launcher now takes."""
    report = {}
    check_inputs = scan_inputs(2, 96, 1000, device, seed=3)
    expected = scan_outputs(check_inputs)
    for phase, configs in (("forward", FORWARD_CONFIGS), ("backward", BACKWARD_CONFIGS)):
        rows = []
        for cfg in configs:
            scan_kernels.CONFIG[phase] = dict(cfg)
            got = scan_outputs(check_inputs)
            error = max(
                ((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got, expected, strict=True)
            )
            times = {}
            for shape in SHAPES:
                inputs = scan_inputs(*shape, device)
                try:
                    if phase == "forward":
                        times[str(shape)] = cuda_ms(lambda inputs=inputs: scan_fn("triton")(**inputs), rep=50)
                    else:
                        times[str(shape)] = timed_backward(scan_fn("triton"), inputs, SCAN_GRADS)
                except Exception as error:  # a setting too large for the chip fails to compile or launch
                    times[str(shape)] = f"failed: {type(error).__name__}"
                del inputs
            score = sum(
                t / PEER_MS[shape][phase] if isinstance(t, float) else float("inf")
                for shape, t in zip(SHAPES, times.values(), strict=True)
            )
            if not error < 1e-2:
                score = float("inf")
            rows.append({"config": cfg, "ms": times, "score": score, "max_rel_error_vs_default": error})
            print(f"sweep {phase} {cfg} {times} error vs default {error:.1e}", flush=True)
        best = min(rows, key=lambda row: row["score"])
        scan_kernels.CONFIG[phase] = dict(best["config"])
        report[phase] = {"results": rows, "chosen": best["config"]}
    return report


def bench_scan(device, copy_bw) -> list[dict]:
    rows = []
    for shape in SHAPES:
        batch, dim, length = shape
        inputs = scan_inputs(*shape, device)
        row = {"shape": list(shape)}
        # a length that is not a multiple of 16 runs over padded rows, which the lane kernel reads as vectors
        padded = -(-length // 16) * 16
        row["kernel"] = kernel_taken(batch, dim, padded, device, scan_kernels.FORWARD_LANE)
        row["backward_kernel"] = kernel_taken(batch, dim, padded, device, scan_kernels.BACKWARD_LANE)
        row["lane_forward_parts"] = scan_kernels.lane_forward_parts(batch * dim, N, device)
        row["triton_forward_ms"] = cuda_ms(lambda i=inputs: scan_fn("triton")(**i))
        state = torch.randn(batch, dim, N, device=device)
        row["triton_forward_with_states_ms"] = cuda_ms(
            lambda i=inputs, s=state: scan_fn("triton", initial_state=s, return_final_state=True)(**i)
        )
        row["triton_backward_ms"] = timed_backward(scan_fn("triton"), inputs, SCAN_GRADS)
        row["triton_forward_kernel_ms"] = kernel_ms(lambda i=inputs: scan_fn("triton")(**i))
        row["triton_backward_kernel_ms"] = timed_backward(scan_fn("triton"), inputs, SCAN_GRADS, timer=kernel_ms)
        row["reference_forward_ms"] = cuda_ms(lambda i=inputs: scan_fn("reference")(**i), rep=100)
        try:
            row["reference_backward_ms"] = timed_backward(scan_fn("reference"), inputs, SCAN_GRADS)
        except torch.OutOfMemoryError:
            row["reference_backward_ms"] = "out of memory"
        torch.cuda.empty_cache()
        if "loop_forward" in PEER_MS[shape]:
            with torch.no_grad():
                row["loop_forward_ms"] = cuda_ms(lambda i=inputs: sequential_loop(**i), rep=1)
        row["bytes"] = scan_bytes(*shape)
        row["floor_ms"] = row["bytes"] / copy_bw * 1e3
        row["forward_bytes_per_s"] = row["bytes"] / (row["triton_forward_kernel_ms"] * 1e-3)
        row["forward_fraction_of_copy_bw"] = row["forward_bytes_per_s"] / copy_bw
        row["peer_forward_ms"] = PEER_MS[shape]["forward"]
        row["peer_backward_ms"] = PEER_MS[shape]["backward"]
        row["speedup_forward_vs_peer"] = row["peer_forward_ms"] / row["triton_forward_kernel_ms"]
        row["speedup_backward_vs_peer"] = row["peer_backward_ms"] / row["triton_backward_kernel_ms"]
        row["speedup_forward_call_vs_peer"] = row["peer_forward_ms"] / row["triton_forward_ms"]
        row["speedup_backward_call_vs_peer"] = row["peer_backward_ms"] / row["triton_backward_ms"]
        row["speedup_forward_vs_reference"] = row["reference_forward_ms"] / row["triton_forward_ms"]
        leaves = {k: v.detach().requires_grad_(k in SCAN_GRADS) for k, v in inputs.items()}

        def train_step(leaves=leaves):
            y = scan_fn("triton")(**leaves)
            torch.autograd.grad(y, [leaves[k] for k in SCAN_GRADS], torch.ones_like(y))

        row["triton_peak_extra_bytes_fwd_bwd"] = peak_bytes(train_step, device)
        row["bytes_of_one_BDLN_float32"] = 4 * batch * dim * length * N
        rows.append(row)
        print(row, flush=True)
        del inputs, leaves
        torch.cuda.empty_cache()
    return rows


def bidirectional_inputs(shape, device):
    forward, backward = scan_inputs(*shape, device, seed=0), scan_inputs(*shape, device, seed=1)
    inputs = dict(forward)
    for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"):
        inputs[f"{k}_b"] = backward[k]
    return inputs


def two_calls_with_flips(**i):
    """What a one-direction kernel needs for VideoMamba's backward branch: flip z in, flip y out, add."""
    y = selective_scan(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"], True,
                       backend="triton")  # fmt: skip
    y_b = selective_scan(i["u_b"], i["delta_b"], i["A_b"], i["B_b"], i["C_b"], i["D_b"], i["z"].flip(-1),
                         i["delta_bias_b"], True, backend="triton")  # fmt: skip
    return y + y_b.flip(-1)


def fused(**i):
    return selective_scan_bidirectional(**i, delta_softplus=True, backend="triton")


def bench_bidirectional(device) -> list[dict]:
    rows = []
    grads = (*SCAN_GRADS, *(f"{k}_b" for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")))
    for shape in BIDIRECTIONAL_SHAPES:
        inputs = bidirectional_inputs(shape, device)
        row = {"shape": list(shape)}
        row["fused_forward_ms"] = cuda_ms(lambda i=inputs: fused(**i))
        row["two_calls_forward_ms"] = cuda_ms(lambda i=inputs: two_calls_with_flips(**i))
        row["fused_backward_ms"] = timed_backward(fused, inputs, grads)
        row["two_calls_backward_ms"] = timed_backward(two_calls_with_flips, inputs, grads)
        row["fused_forward_kernel_ms"] = kernel_ms(lambda i=inputs: fused(**i))
        row["two_calls_forward_kernel_ms"] = kernel_ms(lambda i=inputs: two_calls_with_flips(**i))
        row["fused_backward_kernel_ms"] = timed_backward(fused, inputs, grads, timer=kernel_ms)
        row["two_calls_backward_kernel_ms"] = timed_backward(two_calls_with_flips, inputs, grads, timer=kernel_ms)
        for direction in ("forward", "backward"):
            row[f"speedup_{direction}"] = row[f"two_calls_{direction}_kernel_ms"] / row[f"fused_{direction}_kernel_ms"]
            row[f"speedup_{direction}_call"] = row[f"two_calls_{direction}_ms"] / row[f"fused_{direction}_ms"]
        rows.append(row)
        print(row, flush=True)
        del inputs
        torch.cuda.empty_cache()
    return rows


@contextlib.contextmanager
def kernel_forced(kernel: str):
    """The launcher's rule forced to one kernel: ``"state"``, ``"lane"`` (whole sequences) or ``"segments"`` (the lane
    kernels in time-parallel segments of the lane settings' channels per SM, from two chunks on)."""
    lanes = (scan_kernels.FORWARD_LANE, scan_kernels.BACKWARD_LANE)
    saved = scan_kernels.LANE_MIN_CHANNELS_PER_SM, [dict(lane) for lane in lanes]
    scan_kernels.LANE_MIN_CHANNELS_PER_SM = 0 if kernel == "lane" else float("inf")
    for lane in lanes:
        if kernel == "state":
            lane["segment_channels_per_sm"] = 0
        lane["segment_min_chunks"] = 2
    try:
        yield
    finally:
        scan_kernels.LANE_MIN_CHANNELS_PER_SM = saved[0]
        for lane, setting in zip(lanes, saved[1], strict=True):
            lane.clear()
            lane.update(setting)


def kernel_taken(batch: int, dim: int, length: int, device, lane: dict) -> str:
    """Which kernel the launcher's rule takes for a sequence of rows read as vectors, with the lane setting
    ``lane`` (FORWARD_LANE or BACKWARD_LANE)."""
    if not scan_kernels.uses_lane(batch, dim, length, device, lane=lane):
        return "state"
    n_chunks = -(-length // scan_kernels.CONFIG["backward"]["block_l"])
    segment = scan_kernels.lane_segment_chunks(lane, batch * dim, n_chunks, device)
    return "lane" if segment == n_chunks else f"lane, {-(-n_chunks // segment)} segments"


def bench_kernel_choice(device, direction: str) -> list[dict]:
    """The state kernel, the lane kernel over whole sequences and the lane kernels in time-parallel segments, of the
    ``direction`` ("forward" or "backward") on each of KERNEL_CHOICE_SHAPES, and the one the launcher's rule takes:
    the figures behind the rule (GPU time)."""
    sms = scan_kernels.sm_count(device)
    lane = scan_kernels.FORWARD_LANE if direction == "forward" else scan_kernels.BACKWARD_LANE
    rows = []
    for shape in KERNEL_CHOICE_SHAPES:
        inputs = scan_inputs(*shape, device)
        row = {"shape": list(shape), "channels_per_sm": shape[0] * shape[1] / sms}
        row["rule_takes"] = kernel_taken(*shape[:2], -(-shape[2] // 16) * 16, device, lane)  # odd lengths padded
        if direction == "forward":
            row["lane_parts"] = scan_kernels.lane_forward_parts(shape[0] * shape[1], N, device)
        for kernel in ("state", "lane", "segments"):
            with kernel_forced(kernel):
                if direction == "forward":
                    row[f"{kernel}_forward_ms"] = kernel_ms(lambda i=inputs: scan_fn("triton")(**i))
                else:
                    row[f"{kernel}_backward_ms"] = timed_backward(scan_fn("triton"), inputs, SCAN_GRADS, kernel_ms)
        rows.append(row)
        print(row, flush=True)
        del inputs
        torch.cuda.empty_cache()
    return rows


def bench_conv(device) -> list[dict]:
    rows = []
    for batch, dim, length in [(8, 3072, 2048), (64, 768, 1569)]:
        g = torch.Generator(device=device).manual_seed(0)
        inputs = {
            "x": torch.randn(batch, dim, length, generator=g, device=device).to(torch.bfloat16),
            "weight": torch.randn(dim, 4, generator=g, device=device),
            "bias": torch.randn(dim, generator=g, device=device),
        }
        row = {"shape": [batch, dim, length], "width": 4, "dtype": "bfloat16"}
        for backend in ("triton", "reference"):

            def run(backend=backend, **i):
                return causal_conv1d(**i, activation="silu", backend=backend)

            row[f"{backend}_forward_ms"] = cuda_ms(lambda run=run, i=inputs: run(**i))
            row[f"{backend}_backward_ms"] = timed_backward(run, inputs, ("x", "weight", "bias"))
        row["bytes_forward"] = 2 * 2 * batch * dim * length
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_norm(device) -> list[dict]:
    rows = []
    for tokens, hidden in [(8 * 2048, 768), (64 * 1569, 384)]:
        g = torch.Generator(device=device).manual_seed(0)
        inputs = {
            "x": torch.randn(tokens, hidden, generator=g, device=device).to(torch.bfloat16),
            "weight": torch.randn(hidden, generator=g, device=device),
            "residual": torch.randn(tokens, hidden, generator=g, device=device),
        }
        row = {"shape": [tokens, hidden], "x": "bfloat16", "residual": "float32", "prenorm": True}
        for backend in ("triton", "reference"):

            def run(backend=backend, **i):
                return rms_norm(**i, eps=1e-5, prenorm=True, residual_in_fp32=True, backend=backend)

            row[f"{backend}_forward_ms"] = cuda_ms(lambda run=run, i=inputs: run(**i))
            row[f"{backend}_backward_ms"] = timed_backward(run, inputs, ("x", "weight", "residual"))
        row["bytes_forward"] = tokens * hidden * (2 + 4 + 2 + 4)
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="time launch settings first and keep the fastest")
    args = parser.parse_args()
    device = torch.device("cuda")
    info = describe_device(device)
    info["triton"] = importlib.metadata.version("triton")
    copy_bw = copy_bandwidth(device)
    payload = {**info, "copy_bandwidth_bytes_per_s": copy_bw}
    if args.sweep:
        payload["sweep"] = sweep(device)
    payload["scan_config"] = copy.deepcopy(scan_kernels.CONFIG)
    payload["scan_config"]["lane"] = {
        "forward": scan_kernels.FORWARD_LANE,
        "backward": scan_kernels.BACKWARD_LANE,
        "min_channels_per_sm": scan_kernels.LANE_MIN_CHANNELS_PER_SM,
        "forward_warps_per_sm": scan_kernels.LANE_FORWARD_WARPS_PER_SM,
        "max_parts": scan_kernels.LANE_MAX_PARTS,
    }
    sections = {
        "selective_scan": lambda: bench_scan(device, copy_bw),
        "forward_kernels": lambda: bench_kernel_choice(device, "forward"),
        "backward_kernels": lambda: bench_kernel_choice(device, "backward"),
        "bidirectional": lambda: bench_bidirectional(device),
        "causal_conv1d": lambda: bench_conv(device),
        "rms_norm": lambda: bench_norm(device),
    }
    for name, section in sections.items():
        try:
            payload[name] = section()
        except Exception as error:  # keep what the other sections measured
            payload[name] = []
            payload.setdefault("errors", {})[name] = repr(error)
            print(f"{name} failed: {error!r}", flush=True)
    slug = re.sub(r"[^a-z0-9]+", "_", info["device"].lower()).strip("_")
    path = write_result(f"ssm_kernels_{slug}.json", payload)

    print(f"\ncopy bandwidth {copy_bw / 1e12:.2f} TB/s; scan config {payload['scan_config']}")
    print(
        "shape | fwd kernel ms (peer, x) | bwd kernel ms (peer, x) | fwd / bwd call ms | floor ms | fwd % copy bw"
        " | ref fwd ms | loop ms | peak/BDLN4"
    )
    for r in payload["selective_scan"]:
        fwd = f"{r['triton_forward_kernel_ms']:.3f} ({r['peer_forward_ms']}, {r['speedup_forward_vs_peer']:.2f}x)"
        bwd = f"{r['triton_backward_kernel_ms']:.3f} ({r['peer_backward_ms']}, {r['speedup_backward_vs_peer']:.2f}x)"
        fwd += f" | {r['triton_forward_ms']:.3f} / {r['triton_backward_ms']:.3f}"
        peak = r["triton_peak_extra_bytes_fwd_bwd"] / r["bytes_of_one_BDLN_float32"]
        print(
            f"{tuple(r['shape'])} | {fwd} | {bwd} | {r['floor_ms']:.3f} | {100 * r['forward_fraction_of_copy_bw']:.0f}%"
            f" | {r['reference_forward_ms']:.2f} | {r.get('loop_forward_ms', '-')} | {peak:.2f}"
        )
    for direction in ("forward", "backward"):
        for r in payload[f"{direction}_kernels"]:
            print(
                f"{direction} kernels {tuple(r['shape'])}, {r['channels_per_sm']:.0f} channels per SM: state"
                f" {r[f'state_{direction}_ms']:.3f} ms, lane {r[f'lane_{direction}_ms']:.3f} ms, segments"
                f" {r[f'segments_{direction}_ms']:.3f} ms; the rule takes {r['rule_takes']}"
            )
    for r in payload["bidirectional"]:
        print(
            f"bidirectional {tuple(r['shape'])}, kernel ms: fused fwd {r['fused_forward_kernel_ms']:.3f}"
            f" vs {r['two_calls_forward_kernel_ms']:.3f} ({r['speedup_forward']:.2f}x),"
            f" bwd {r['fused_backward_kernel_ms']:.3f} vs {r['two_calls_backward_kernel_ms']:.3f}"
            f" ({r['speedup_backward']:.2f}x); as calls {r['speedup_forward_call']:.2f}x"
            f" / {r['speedup_backward_call']:.2f}x"
        )
    for name in ("causal_conv1d", "rms_norm"):
        for r in payload[name]:
            print(
                f"{name} {tuple(r['shape'])}: triton fwd {r['triton_forward_ms']:.3f} bwd {r['triton_backward_ms']:.3f}"
                f" | reference fwd {r['reference_forward_ms']:.3f} bwd {r['reference_backward_ms']:.3f}"
            )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
