"""The selective scan's state kernels (:mod:`videostate.ssm.kernels.scan_state_kernels`) against the plain loop.

Forward and every gradient, with carried and fresh states, over several chunks of time (one-warp chunks of 32
steps), grouped and ungrouped B/C, and the bidirectional layout (output written reversed, accumulated, one shared
gate). The oracle is :func:`tests.ssm.oracles.selective_scan_loop` in float64, differentiated by autograd. On CUDA
these are ``gpu`` tests; with ``TRITON_INTERPRET=1`` and no GPU they run on CPU tensors through Triton's
interpreter. :mod:`tests.ssm.test_kernels_gpu` covers more shapes and half precision on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_targets import DEVICE, MARKS, RUNS, output_cotangents
from tests.ssm.oracles import selective_scan_loop

pytestmark = list(MARKS)
if RUNS:
    from videostate.ssm.kernels import selective_scan as scan

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.fixture(autouse=True, params=["stored", "recomputed"])
def short_chunks(request, monkeypatch):
    """Chunks of 32 steps, so that the shapes below span several and carry states between them, and the state
    kernels for every length (short sequences would otherwise run the step kernel forward). The backward either
    reads the states entering its chunks as the forward stored them (the forward walking the states in a loop) or,
    when the forward's chunks are longer than its own, computes them in its first pass (the forward's states
    unrolled)."""
    stored = request.param == "stored"
    forward = dict(scan.FORWARD_STATE, block_l=32 if stored else 64, block_d=2, state_loop=stored)
    monkeypatch.setitem(scan.CONFIG, "forward", forward)
    monkeypatch.setitem(scan.CONFIG, "backward", dict(scan.BACKWARD_STATE, block_l=32, block_d=2))
    monkeypatch.setattr(scan, "SHORT_LENGTH", 1)
    whole_sequences(monkeypatch)
    return request.param


def whole_sequences(monkeypatch) -> None:
    """No time-parallel segments: on CUDA the lane settings would cut the few channels' sequences of these tests
    into them (:mod:`tests.ssm.test_scan_segments` tests those)."""
    for setting in (scan.FORWARD_LANE, scan.BACKWARD_LANE):
        monkeypatch.setitem(setting, "segment_channels_per_sm", 0)


def spy_launches(monkeypatch, names, entry) -> list:
    """Every launch of the scan module's kernels ``names``, recorded as ``entry(kernel name, arguments,
    constexprs)``; the kernels still run."""
    seen = []

    class Spy:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(entry(self.kernel.__name__, args, kwargs))
                return self.kernel[grid](*args, **kwargs)

            return launch

    for name in names:
        monkeypatch.setattr(scan, name, Spy(getattr(scan, name)))
    return seen


@pytest.fixture
def launches(monkeypatch):
    """Every launch of the state kernels, as ``(kernel name, args[13], constexprs)``: ``args[13]`` is the forward
    kernel's L."""
    names = ("selective_scan_fwd_state_kernel", "selective_scan_bwd_state_kernel")
    return spy_launches(monkeypatch, names, lambda name, args, kwargs: (name, args[13], kwargs))


def test_checkpoint_buffer(short_chunks):
    """The forward stores the backward's checkpoints only with the backward's chunks: (batch, dim, chunks, N)."""
    u = torch.empty(2, 3, 70, device=DEVICE)
    buffer = scan.checkpoint_buffer(u, 5)
    if short_chunks == "stored":
        assert buffer.shape == (2, 3, 3, 5) and buffer.dtype == torch.float32
    else:
        assert buffer is None


def test_state_loop_rule():
    """A setting's own ``state_loop`` decides; otherwise only a CUDA grid with enough programs per SM and a length
    that is a multiple of 16 loops."""
    assert scan._state_loop({"state_loop": True}, 1, 45, torch.device("cpu"))
    assert not scan._state_loop({"state_loop": False}, 10**9, 64, torch.device("cpu"))
    assert not scan._state_loop({}, 10**9, 64, torch.device("cpu"))


def scan_inputs(batch, dim, length, n, groups, seed):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift

    bc_shape = (batch, n, length) if groups == 0 else (batch, groups, n, length)
    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length, scale=0.5),
        "A": -(torch.rand(dim, n, generator=g, dtype=torch.float64) * 2 + 0.1),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim),
        "z": randn(batch, dim, length),
        "delta_bias": randn(dim, scale=0.3, shift=-1.0),
        "initial_state": randn(batch, dim, n),
    }


def check_scan_against_loop(shape, seed: int) -> None:
    """The Triton scan's output, final state and every gradient within 1e-5 of the float64 loop's, on
    :func:`scan_inputs` of ``shape`` (batch, dim, L, N, groups)."""
    exact = {k: v.requires_grad_() for k, v in scan_inputs(*shape, seed=seed).items()}
    fast = {k: v.detach().float().to(DEVICE).requires_grad_() for k, v in exact.items()}
    out_fast = scan.selective_scan_triton(**fast, delta_softplus=True, return_final_state=True)
    out_exact = selective_scan_loop(**exact, delta_softplus=True)
    cotangents = output_cotangents(out_fast, out_exact)
    grads_fast = gradients([o.double() for o in out_fast], [c.to(DEVICE) for c in cotangents], list(fast.values()))
    grads_exact = gradients(list(out_exact), cotangents, list(exact.values()))
    errors = {f"out{i}": rel_error(a.cpu(), b) for i, (a, b) in enumerate(zip(out_fast, out_exact, strict=True))}
    errors.update({f"d{k}": rel_error(a.cpu(), b) for k, a, b in zip(NAMES, grads_fast, grads_exact, strict=True)})
    assert max(errors.values()) < 1e-5, errors


def rel_error(actual, expected) -> float:
    return ((actual.double() - expected).norm() / expected.norm()).item()


def gradients(outputs, cotangents, leaves):
    return torch.autograd.grad(outputs, leaves, cotangents, allow_unused=True)


@pytest.mark.parametrize(
    "shape",
    [(2, 3, 1, 16, 0), (1, 4, 70, 16, 0), (1, 4, 64, 16, 0), (2, 6, 45, 5, 3)],
    ids=["L1", "three-chunks", "aligned-rows", "grouped-odd-N"],
)
def test_scan_against_loop(shape, short_chunks, launches):
    """L = 64 fills its rows exactly (the backward reads them with exact masks); the other lengths are read from
    rows padded to a multiple of 16. The forward walks the states in a loop where the setting says so."""
    check_scan_against_loop(shape, seed=0)
    forward = [kw for name, _, kw in launches if name == "selective_scan_fwd_state_kernel"]
    assert forward and all(kw["STATE_LOOP"] == (short_chunks == "stored") for kw in forward)


BIDIRECTIONAL = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "u_b", "delta_b", "A_b", "B_b", "C_b", "D_b",
                 "delta_bias_b")  # fmt: skip


def bidirectional_inputs(batch, dim, length, n, softplus, seeds) -> dict:
    """Float64 inputs of a bidirectional scan (the keys of BIDIRECTIONAL and ``initial_state``), the second
    direction's from its own seed; without softplus the steps are positive, as discretised steps must be."""
    forward, backward = (scan_inputs(batch, dim, length, n, 0, seed=seed) for seed in seeds)
    if not softplus:
        for inputs in (forward, backward):
            inputs["delta"], inputs["delta_bias"] = inputs["delta"].abs(), inputs["delta_bias"].abs()
    return {**forward, **{f"{k}_b": backward[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")}}


def bidirectional_loops(e: dict, softplus: bool, initial_state=None) -> torch.Tensor:
    """The loops' output: the forward scan plus the reversed inputs' scan flipped back, under one gate."""
    y_fwd, _ = selective_scan_loop(e["u"], e["delta"], e["A"], e["B"], e["C"], e["D"], None, e["delta_bias"],
                                   softplus, initial_state)  # fmt: skip
    y_bwd, _ = selective_scan_loop(e["u_b"], e["delta_b"], e["A_b"], e["B_b"], e["C_b"], e["D_b"], None,
                                   e["delta_bias_b"], softplus)  # fmt: skip
    return (y_fwd + y_bwd.flip(-1)) * e["z"] * torch.sigmoid(e["z"])


def check_bidirectional_against_loops(length: int, softplus: bool, seeds: tuple[int, int]) -> None:
    """The fused scan's output and every gradient within 1e-5 of the float64 loops'."""
    exact = {k: v.requires_grad_() for k, v in bidirectional_inputs(2, 4, length, 8, softplus, seeds).items()}
    fast = {k: v.detach().float().to(DEVICE).requires_grad_() for k, v in exact.items()}
    y_fast, _ = scan.selective_scan_bidirectional_triton(
        *(fast[k] for k in BIDIRECTIONAL), delta_softplus=softplus, initial_state=fast["initial_state"],
        return_final_state=True,
    )  # fmt: skip
    check_output_and_gradients(y_fast, bidirectional_loops(exact, softplus, exact["initial_state"]), fast, exact)


def check_output_and_gradients(y_fast, y_exact, fast: dict, exact: dict) -> None:
    """``y_fast``, computed from the leaves ``fast``, and the gradient of each leaf within 1e-5 of the float64
    ``y_exact``'s from the same leaves ``exact``, under one seeded cotangent."""
    (cotangent,) = output_cotangents([y_fast], [y_exact])
    grads_fast = gradients(y_fast.double(), cotangent.to(DEVICE), list(fast.values()))
    grads_exact = gradients(y_exact, cotangent, list(exact.values()))
    assert rel_error(y_fast.cpu(), y_exact) < 1e-5
    for name, a, b in zip(exact, grads_fast, grads_exact, strict=True):
        assert rel_error(a.cpu(), b) < 1e-5, name


@pytest.mark.parametrize(
    "length, softplus", [(40, False), (40, True), (80, True)], ids=["element-wise", "padded", "flipped-tiles"]
)
def test_bidirectional_against_loops(length, softplus, launches):
    """One gate, the backward direction's inputs reversed in time and its output written back in order: element by
    element (a length that is not a multiple of 16, and no step to pad it with: a bias without softplus), or a chunk
    at a time in order, flipped in registers (a multiple of 16, or a length padded to one: the time-reversed inputs
    before their sequence, the others after it)."""
    assert scan._flips_output(True, length) == (length % 16 == 0)
    check_bidirectional_against_loops(length, softplus, seeds=(1, 2))
    reversed_launches = [(name, steps, kw) for name, steps, kw in launches if kw["REVERSE_OUT"]]
    assert len(reversed_launches) == 2  # the reversed direction's forward and backward
    padded = -(-length // 16) * 16 if softplus else length
    assert all(kw["FLIP_OUT"] == (padded % 16 == 0) for _, _, kw in reversed_launches)
    assert [steps for name, steps, _ in reversed_launches if name == "selective_scan_fwd_state_kernel"] == [padded]


def test_aligned_rows():
    """Rows the kernels load start at multiples of 16 elements and are readable up to the length rounded up to 16:
    a tensor laid out so is used as it is, one with an odd length is copied into padded rows, values unchanged;
    token-major rows (not contiguous) are left alone and then read only up to their length."""
    odd = torch.randn(2, 3, 45, device=DEVICE)
    rows = scan._aligned_rows(odd)
    assert rows.shape == odd.shape and rows.stride() == (3 * 48, 48, 1) and torch.equal(rows, odd)
    assert scan._aligned_rows(rows) is rows and scan._row_length(45, rows) == 48
    even = torch.randn(2, 3, 64, device=DEVICE)
    assert scan._aligned_rows(even) is even
    short_storage = torch.randn(2 * 3 * 48 - 3, device=DEVICE).as_strided((2, 3, 45), (3 * 48, 48, 1))
    assert scan._aligned_rows(short_storage) is not short_storage  # its last row cannot be read to 48
    token_major = torch.randn(2, 45, 3, device=DEVICE).transpose(1, 2)
    assert scan._aligned_rows(token_major) is token_major and scan._row_length(45, rows, token_major) == 45


@pytest.mark.parametrize(
    "softplus, bias, padded", [(True, True, True), (False, False, True), (False, True, False)],
    ids=["softplus", "no-bias", "bias-without-softplus"],
)  # fmt: skip
def test_odd_length_forward_over_padded_rows(softplus, bias, padded, launches):
    """An odd length runs the forward over rows padded to 16 with steps that leave the state unchanged, unless no
    delta discretises to 0 (a bias without softplus): outputs, final state and gradients equal the loop's."""
    exact = scan_inputs(2, 3, 45, 4, 0, seed=3)
    if not softplus:  # steps discretised without softplus must be positive
        exact["delta"], exact["delta_bias"] = exact["delta"].abs(), exact["delta_bias"].abs()
    if not bias:
        del exact["delta_bias"]
    exact = {k: v.requires_grad_() for k, v in exact.items()}
    fast = {k: v.detach().float().to(DEVICE).requires_grad_() for k, v in exact.items()}
    rows = scan._identity_padded(*(fast.get(k) for k in ("u", "delta", "z", "B", "C", "delta_bias")), softplus)
    assert (rows is not None) == padded
    if padded:
        assert all(t.shape[-1] == 48 for t in rows) and torch.equal(rows[0][..., :45], fast["u"])
    out_fast = scan.selective_scan_triton(**fast, delta_softplus=softplus, return_final_state=True)
    out_exact = selective_scan_loop(**exact, delta_softplus=softplus)
    cotangents = output_cotangents(out_fast, out_exact)
    grads_fast = gradients([o.double() for o in out_fast], [c.to(DEVICE) for c in cotangents], list(fast.values()))
    grads_exact = gradients(list(out_exact), cotangents, list(exact.values()))
    for name, a, b in zip(["y", "final_state"], out_fast, out_exact, strict=True):
        assert rel_error(a.cpu(), b) < 1e-5, name
    forward_lengths = [length for name, length, _ in launches if name == "selective_scan_fwd_state_kernel"]
    assert forward_lengths == [48 if padded else 45]
    for name, a, b in zip(exact, grads_fast, grads_exact, strict=True):
        assert rel_error(a.cpu(), b) < 1e-5, name
