"""Compile every Triton kernel of :mod:`videostate.ssm.kernels` for Hopper (sm_90) without a GPU.

CI has no GPU, so the kernels only ever run there through Triton's CPU interpreter, which does not type-check: a
front-end error such as "Loop-carried variable ... re-assigned to ... in loop" once reached the main branch. Here
each kernel goes through ``triton.compile`` (Triton's front-end, its GPU passes, and ptxas) for an sm_90 target,
specialised as its launcher specialises it by default for one representative shape, with the optional inputs on
(``HAS_Z``, ``HAS_D``, ...) so that their code is compiled too. A kernel added to the package without an entry
in ``CASES`` fails :func:`test_every_kernel_has_a_case`.
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
from dataclasses import dataclass

import pytest

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402
from triton.backends import backends  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, CompilationError  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from videostate.ssm import kernels  # noqa: E402
from videostate.ssm.kernels import (  # noqa: E402
    block_tail,
    causal_conv,
    conv_epilogue,
    conv_kernels,
    depthwise_tokens,
    layer_norm,
    mamba_tokens,
    mlp,
    norm,
    norm_kernels,
    padded_rows,
    scan_chunk_kernels,
    scan_lane_backward_kernels,
    scan_lane_kernels,
    scan_state_kernels,
    scan_step_kernels,
    selective_scan,
    ssd,
    ssd_kernels,
    state_change,
    state_update,
    token_readout,
    window_attention,
)

pytestmark = [
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1: no JIT kernels"),
    pytest.mark.skipif("nvidia" not in backends, reason="triton's nvidia backend is not installed"),
]

HOPPER = GPUTarget("cuda", 90, 32)
# the kernels' float arguments; other scalars: i32
FLOAT_SCALARS = frozenset({"eps", "scale", "dt_min", "dt_max", "scale_h", "scale_w", "value"})


@dataclass(frozen=True)
class Case:
    """A kernel, the constexprs and warps its launcher gives it, and its pointer arguments (without ``_ptr``)
    that take bfloat16 tensors (the others take float32)."""

    kernel: JITFunction
    constexprs: dict
    num_warps: int = 4
    half: tuple[str, ...] = ()


# Mamba-1 scans: N = 16 (d_state of the depth model's Mamba), long sequences.
SCAN_N = 16
SCAN = {"N": SCAN_N, "HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True, "HAS_H0": True,
        "REVERSE_OUT": True}  # fmt: skip
SCAN_FWD = {**SCAN, "ACCUMULATE": True}
SCAN_BWD = {**SCAN, "HAS_DHT": True, "ACCUMULATE_DZ": True}
SCAN_FWD_HALF = ("u", "dt", "B", "C", "z", "y")
SCAN_BWD_HALF = ("u", "dt", "B", "C", "z", "dy", "du", "ddt", "dz")
# Mamba-2 SSD as in the interpolation model: headdim 16, d_state 64, chunk_size 256; a sequence of 64 chunks.
P, SSD_N, CHUNK = 16, 64, ssd.kernel_chunk(256)
BLOCK_P, BLOCK_N = ssd._blocks(P, SSD_N)
SPLIT_N = min(BLOCK_N, ssd.CONFIG["block_n"])
SSD_CHUNK = {"P": P, "N": SSD_N, "CHUNK": CHUNK, "BLOCK_P": BLOCK_P, "PRECISION": "tf32", "HAS_Z": True}
STATE_BLOCK, STATE_TILE = ssd._state_tiles(P * SSD_N, 64)
STATE_PASSING = {"CHUNK": CHUNK, "TILE": STATE_TILE, "BLOCK": STATE_BLOCK}
# The convolution at d_conv = 4; the norms at Mamba-2's gated width there (128 channels, one group); the
# interpolation model's second stage: 64 channels, 4 heads, windows of 8, an MLP 4x as wide.
WIDTH, HIDDEN, CHANNELS, HEADS, WINDOW = 4, 128, 64, 4, 8
CONV = {"W": WIDTH, "BLOCK_D": causal_conv.CONFIG["block_d"], "BLOCK_L": causal_conv.CONFIG["block_l"],
        "HAS_BIAS": True, "HAS_STATE": True, "SILU": True, "REVERSE": False}  # fmt: skip
CONV_REVERSED = {**CONV, "HAS_STATE": False, "REVERSE": True}
NORM = {"HAS_RES": True, "HAS_Z": True, "GATE_AFTER": False, "HAS_BIAS": True}
NORM_LAUNCH = norm._launch_shape(1 << 20, 1, HIDDEN)  # the backward's; its "meta" are the forward's too
LAYER_NORM = layer_norm.launch_shape(1 << 20, CHANNELS)

CASES = [
    *(
        Case(scan_step_kernels.selective_scan_fwd_kernel,
             {**SCAN_FWD, "SPLIT": step["split"], "BLOCK_D": 32 * step["num_warps"] // step["split"],
              "UNROLL": step["unroll"]},
             step["num_warps"], SCAN_FWD_HALF)
        for step in (selective_scan.FORWARD_STEP, selective_scan.FORWARD_SHORT)
    ),
    *(
        Case(kernel, {**flags, "BLOCK_D": config["block_d"], "BLOCK_L": config["block_l"]}, config["num_warps"], half)
        for kernel, flags, config, half in (
            *((scan_state_kernels.selective_scan_fwd_state_kernel,
               {**SCAN_FWD, "STORE_CKPT": True, "FLIP_OUT": True, "STATE_LOOP": loop}, selective_scan.FORWARD_STATE,
               SCAN_FWD_HALF) for loop in (False, True)),
            *((scan_state_kernels.selective_scan_bwd_state_kernel,
               {**SCAN_BWD, "HAS_CKPT": has_ckpt, "FLIP_OUT": has_ckpt, "ROWS_PADDED": not has_ckpt},
               selective_scan.BACKWARD_STATE, SCAN_BWD_HALF) for has_ckpt in (True, False)),
        )
    ),
    *(
        Case(scan_lane_kernels.selective_scan_fwd_lane_kernel,
             {**SCAN_FWD, **selective_scan._lane_split(SCAN_N, parts),
              "CKPT_L": selective_scan.BACKWARD_STATE["block_l"], "STORE_CKPT": not segmented,
              "SEGMENTED": segmented, "REVERSE_OUT": parts > 1, "FAST_MATH": True},
             1, SCAN_FWD_HALF)
        for parts, segmented in ((1, False), (2, True), (4, False), (8, True))  # a lane's own steps: 8, 4, 2, 1
    ),
    *(
        Case(scan_lane_backward_kernels.selective_scan_bwd_lane_kernel,
             {**SCAN_BWD, **selective_scan._lane_split(SCAN_N, selective_scan.BACKWARD_LANE["parts"]),
              "CKPT_L": selective_scan.BACKWARD_STATE["block_l"], "SEGMENTED": segmented, "FAST_MATH": True},
             1, SCAN_BWD_HALF)
        for segmented in (False, True)
    ),
    *(
        Case(scan_chunk_kernels.selective_scan_chunk_sums_kernel,
             {"N": SCAN_N, "BLOCK_D": selective_scan.CHUNK_SUMS["block_d"],
              "CKPT_L": selective_scan.BACKWARD_STATE["block_l"], "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True,
              "ADJOINT": adjoint, "REVERSE_OUT": adjoint, "FLIP_OUT": adjoint},
             selective_scan.CHUNK_SUMS["num_warps"], ("u", "dt", "BC", "z", "dy"))
        for adjoint in (False, True)
    ),
    *(
        Case(scan_chunk_kernels.selective_scan_chunk_states_kernel,
             {"N": SCAN_N, "NP": SCAN_N, "BLOCK_C": selective_scan.CHUNK_STATES["block_c"], "HAS_START": True,
              "ADJOINT": adjoint},
             selective_scan.CHUNK_STATES["num_warps"])
        for adjoint in (False, True)
    ),
    Case(ssd_kernels.chunk_state_kernel, {**SSD_CHUNK, "BLOCK_N": SPLIT_N, "FORWARD": False},
         ssd.CONFIG["num_warps"], ("X", "Y", "z")),
    Case(ssd_kernels.state_passing_fwd_kernel, {**STATE_PASSING, "HAS_H0": True}),
    Case(ssd_kernels.state_passing_bwd_kernel, {**STATE_PASSING, "HAS_DFINAL": True, "HAS_DH0": True}),
    Case(ssd_kernels.chunk_scan_fwd_kernel, {**SSD_CHUNK, "BLOCK_N": BLOCK_N, "HAS_D": True},
         ssd.CONFIG["fwd_num_warps"], ("x", "B", "C", "z", "y", "gate_in")),
    Case(ssd_kernels.chunk_scan_bwd_dx_kernel, {**SSD_CHUNK, "BLOCK_N": BLOCK_N, "HAS_D": True},
         ssd.CONFIG["num_warps"], ("x", "B", "C", "z", "gate_in", "dy", "dx", "dz")),
    Case(ssd_kernels.chunk_scan_bwd_dbc_kernel, {**SSD_CHUNK, "BLOCK_N": SPLIT_N},
         ssd.CONFIG["dbc_num_warps"], ("x", "B", "C", "z", "dy")),
    Case(conv_kernels.causal_conv1d_fwd_kernel, CONV, causal_conv.CONFIG["num_warps"], ("x", "state", "y")),
    Case(conv_kernels.causal_conv1d_fwd_kernel,  # token-major rows of 32 steps, wider than TOKENS_WIDTH taps
         {**CONV, "BLOCK_D": causal_conv.TOKENS_TILE // 32, "BLOCK_L": 32}, causal_conv.CONFIG["num_warps"],
         ("x", "state", "y")),
    *(Case(conv_kernels.causal_conv1d_tokens_kernel,
           {"W": width, "BLOCK_B": causal_conv.TOKENS_SEQUENCES, "BLOCK_D": causal_conv.TOKENS_CHANNELS,
            "HAS_BIAS": True, "HAS_STATE": True},
           causal_conv.TOKENS_WARPS, ("x", "w", "bias", "state", "y"))
      for width in (2, causal_conv.TOKENS_WIDTH)),
    Case(conv_kernels.causal_conv1d_fwd_kernel, CONV_REVERSED, causal_conv.CONFIG["num_warps"], ("x", "y")),
    *(Case(conv_kernels.causal_conv1d_bwd_gate_kernel,
           {**conv, "BLOCK_D": causal_conv.BACKWARD["block_d"], "BLOCK_L": causal_conv.BACKWARD["block_l"]},
           causal_conv.BACKWARD["num_warps"], ("x", "state", "dy"))
      for conv in (CONV, CONV_REVERSED)),
    *(Case(conv_kernels.causal_conv1d_bwd_input_kernel,
           {"W": WIDTH, "BLOCK_D": causal_conv.BACKWARD["block_d"], "BLOCK_L": causal_conv.BACKWARD["block_l"],
            "BLOCK_W": WIDTH, "HAS_STATE": not reverse, "REVERSE": reverse},
           causal_conv.BACKWARD["num_warps"], ("dx",))
      for reverse in (False, True)),
    Case(conv_kernels.causal_conv1d_update_kernel,
         {"W": WIDTH, "BLOCK_D": 64, "BLOCK_W": WIDTH, "HAS_BIAS": True, "SILU": True},
         half=("x", "state", "y", "next")),
    Case(norm_kernels.rms_norm_fwd_kernel,
         {**NORM_LAUNCH["meta"], **NORM, "ROWS": norm.TILE_ELEMENTS // HIDDEN, "STORE_RES": True},
         half=("x", "z", "out")),
    Case(norm_kernels.rms_norm_bwd_kernel, {**NORM_LAUNCH["meta"], **NORM, "HAS_DRES_OUT": True},
         NORM_LAUNCH["num_warps"], ("x", "z", "dout", "dx", "dz")),
    Case(layer_norm.layer_norm_fwd_kernel,
         {**LAYER_NORM["meta"], "HAS_RES": True, "HAS_WEIGHT": True, "HAS_BIAS": True},
         LAYER_NORM["num_warps"], ("x", "res", "out", "sum")),
    Case(state_update.state_update_kernel,
         {"N": SSD_N, "BLOCK_N": SSD_N, "BLOCK_C": 4096 // SSD_N, "HAS_D": True, "HAS_Z": True, "HAS_BIAS": True,
          "SOFTPLUS": True, "HAS_LIMIT": True},
         half=("x", "B", "C", "z", "y")),
    Case(window_attention.window_attention_fwd_kernel,
         {"DIM": CHANNELS, "HEADS": HEADS, "HEAD_DIM": CHANNELS // HEADS, "BLOCK_D": 16, "WINDOW": WINDOW,
          "BLOCK_T": WINDOW * WINDOW, "SHIFTED": True, "HEADWISE_GATE": True, "PRECISION": "tf32"},
         half=("qkvg", "out")),
    Case(depthwise_tokens.depthwise_tokens_kernel,
         {"ROWS": depthwise_tokens.ROWS, "BLOCK_C": depthwise_tokens.BLOCK_C, "BLOCK_X": depthwise_tokens.BLOCK_X,
          "HAS_BIAS": True},
         depthwise_tokens.NUM_WARPS, ("f", "w", "bias", "pe", "out")),
    *(Case(mamba_tokens.scan_tokens_kernel,
           {"N": 16, "BLOCK_D": mamba_tokens.BLOCK_D, "PACKED": True, "HAS_H0": True, "STORE_HT": True,
            "FAST_MATH": fast},
           1, ("u", "dt", "z", "B", "C", "y"))
      for fast in (False, True)),
    Case(token_readout.token_readout_kernel,
         {"BLOCK_P": token_readout.BLOCK_P, "BLOCK_CO": token_readout.BLOCK_CO, "BLOCK_K": token_readout.BLOCK_K,
          "HAS_BASE": True, "PRECISION": "tf32"},
         token_readout.NUM_WARPS, ("y", "w", "bias", "base", "out")),
    *(Case(mlp.mlp_fwd_kernel,
           {"C": CHANNELS, "HIDDEN": 4 * CHANNELS, "BLOCK_C": CHANNELS, "BLOCK_M": mlp.BLOCK_M,
            "BLOCK_H": mlp.BLOCK_H, "HAS_RES": True, "SILU": silu, "PRECISION": "tf32"},
           half=("x", "w1", "w2"))
      for silu in (False, True)),
    *(Case(conv_epilogue.conv_epilogue_kernel,
           {"BLOCK_R": 64, "BLOCK_C": 64, "RESIDUALS": 2, "RELU": True, "RELU_COPY": not project, "PROJECT": project},
           4, ("y", "bias", "res1", "res2", "out", "relu_out", "proj", "proj_bias"))
      for project in (False, True)),
    Case(state_change.state_change_kernel, {"BLOCK": state_change.BLOCK}, 4, ("new", "old")),
    Case(padded_rows.padded_rows_kernel, {"BLOCK": padded_rows.BLOCK}, 4, ("src", "dst")),
    Case(conv_epilogue.resize_bilinear_kernel, {"BLOCK_P": 32, "BLOCK_C": conv_epilogue.RESIZE_BLOCK_C}, 4,
         ("x", "bias", "out")),
    *(Case(block_tail.block_tail_kernel,
           {"C": channels, "D_INNER": 2 * channels, "HIDDEN": 2 * channels, "BLOCK_C": channels,
            "BLOCK_K": block_tail.BLOCK_K, "BLOCK_M": block_tail.BLOCK_M,
            "BLOCK_H": block_tail.hidden_step(channels), "HAS_OUT_BIAS": True, "SILU": True, "PRECISION": "tf32"},
           4, ("y", "wo", "x", "w1", "w2", "out"))
      for channels in (64, block_tail.MAX_CHANNELS)),
]  # fmt: skip


def signature(kernel: JITFunction, half: tuple[str, ...]) -> tuple[dict, dict]:
    """Triton's type of every argument, and the 16-byte alignment the JIT finds in freshly allocated tensors."""
    types, attrs = {}, {}
    for i, param in enumerate(kernel.params):
        name = param.name
        if param.is_constexpr:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = "*bf16" if name.removesuffix("_ptr") in half else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            types[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    return types, attrs


def compile_for_hopper(kernel: JITFunction, constexprs: dict, num_warps: int = 4, half: tuple[str, ...] = ()):
    """``kernel`` through every stage of Triton's compiler, down to an sm_90 cubin."""
    types, attrs = signature(kernel, half)
    src = ASTSource(fn=kernel, signature=types, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=HOPPER, options={"num_warps": num_warps})


def package_jit_functions() -> dict[str, JITFunction]:
    """Every ``@triton.jit`` function defined in the kernels package, by qualified name."""
    found = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, JITFunction) and value.__module__ == module.__name__:
                found[f"{info.name}.{value.__name__}"] = value
    return found


def callees(fn: JITFunction) -> set[JITFunction]:
    """The ``@triton.jit`` functions that ``fn`` calls by a global name."""
    names = {node.id for node in ast.walk(fn.parse()) if isinstance(node, ast.Name)}
    return {fn.__globals__[name] for name in names if isinstance(fn.__globals__.get(name), JITFunction)}


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """A cache of its own for each test, so that every kernel is compiled, not fetched from an earlier run."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))


@pytest.mark.parametrize("case", CASES, ids=[case.kernel.__name__ for case in CASES])
def test_kernel_compiles_for_sm90(case: Case):
    """The kernel compiles to a cubin; the case names exactly the kernel's constexprs."""
    constexprs = {p.name for p in case.kernel.params if p.is_constexpr}
    pointers = {p.name.removesuffix("_ptr") for p in case.kernel.params if p.name.endswith("_ptr")}
    assert set(case.constexprs) == constexprs, "the case must give every constexpr of the kernel, and only those"
    assert set(case.half) <= pointers, f"not pointer arguments: {set(case.half) - pointers}"
    compiled = compile_for_hopper(case.kernel, case.constexprs, case.num_warps, case.half)
    assert compiled.asm["cubin"]


def test_every_kernel_has_a_case():
    """Every jit function of the package is a kernel with a case or is called by one (and so compiled with it)."""
    functions = package_jit_functions()
    called = set().union(*(callees(fn) for fn in functions.values()))
    entry_points = {name for name, fn in functions.items() if fn not in called}
    covered = {f"{case.kernel.__module__.rsplit('.', 1)[1]}.{case.kernel.__name__}" for case in CASES}
    assert entry_points <= covered, f"kernels without a case in CASES: {sorted(entry_points - covered)}"
    assert covered <= entry_points, f"cases of functions that are no kernels: {sorted(covered - entry_points)}"


def specialised_ptx(kernel: JITFunction, constexprs: dict, half: tuple[str, ...], ones: tuple[str, ...]) -> str:
    """``kernel``'s PTX for sm_90 as the JIT specialises a launch on aligned rows: the integers ``ones`` equal to 1
    (steps at stride 1), the other sizes and strides multiples of 16 (the sequence's length too), save the counts
    of chunks, segments and groups."""
    types, attrs = signature(kernel, half)
    for i, param in enumerate(kernel.params):
        if param.name in ones:
            types[param.name] = "constexpr"
        elif types[param.name] == "i32" and param.name not in ("n_chunks", "n_segments", "segment_chunks", "G"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=kernel, signature=types, constexprs={**constexprs, **dict.fromkeys(ones, 1)}, attrs=attrs)
    return triton.compile(src, target=HOPPER, options={"num_warps": 1}).asm["ptx"]


LANE_READS = [
    pytest.param(
        scan_lane_kernels.selective_scan_fwd_lane_kernel,
        {**SCAN_FWD, "CKPT_L": selective_scan.BACKWARD_STATE["block_l"], "STORE_CKPT": True, "SEGMENTED": False,
         "FAST_MATH": True},
        SCAN_FWD_HALF, ("sB_l", "sC_l"), id="forward",
    ),
    pytest.param(
        scan_lane_backward_kernels.selective_scan_bwd_lane_kernel,
        {**SCAN_BWD, "CKPT_L": selective_scan.BACKWARD_STATE["block_l"], "SEGMENTED": False, "FAST_MATH": True},
        SCAN_BWD_HALF, (), id="backward",
    ),
]  # fmt: skip


@pytest.mark.parametrize("kernel, constexprs, half, ones", LANE_READS)
def test_lane_kernels_read_float32_rows_without_shuffles(kernel, constexprs, half, ones):
    """A lane reads its states' float32 B and C at a block's eight steps as two vectors of four, not as one tile
    that spans two lanes' vectors and is split into steps by shuffles: compiled with float32 B and C, the lane
    kernels shuffle as often as with bfloat16 ones (the split tile cost the forward 64 more shuffles a block: 0.64
    against 0.29 ms on (8, 1536, 2048) on an H100). Four lanes a channel, as the backward and that forward run."""
    constexprs = {**constexprs, **selective_scan._lane_split(SCAN_N, 4)}
    float32_rows = tuple(name for name in half if name not in ("B", "C"))
    shuffles = [specialised_ptx(kernel, constexprs, h, ones).count("shfl.sync") for h in (half, float32_rows)]
    assert shuffles[1] == shuffles[0]


@triton.jit
def loop_carried_reshape_kernel(out_ptr, BLOCK: tl.constexpr):
    """Invalid on purpose: ``acc`` enters the loop as a vector and leaves it as a matrix."""
    acc = tl.zeros((BLOCK,), tl.float32)
    for _ in range(4):
        acc = tl.zeros((BLOCK, BLOCK), tl.float32)
    tl.store(out_ptr + tl.arange(0, BLOCK), tl.sum(acc, axis=1))


def test_compile_reports_front_end_errors():
    """The compile path reaches Triton's type checks, which the CPU interpreter skips."""
    with pytest.raises(CompilationError, match="Loop-carried variable"):
        compile_for_hopper(loop_carried_reshape_kernel, {"BLOCK": 16})
