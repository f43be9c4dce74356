import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from tests.ssm.oracles import chunk_bounds, selective_scan_loop, ssd_loop
from videostate.ssm import Mamba, Mamba2, Mamba2State, MambaState


def randomize(module, seed):
    """Random weights everywhere (D, conv bias, norm weights too) so no term is trivially one or zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "A_log" in name or "A_b_log" in name:
                continue
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.dim() > 1 else 0.5))
    return module


def mamba_direction_oracle(x, z, conv, x_proj, dt_proj, A_log, D, d_state):
    """One direction, written out: depthwise conv (padded, truncated), projections, loop scan."""
    length = x.shape[-1]
    x = F.silu(F.conv1d(x, conv.weight, conv.bias, padding=conv.weight.shape[-1] - 1, groups=x.shape[1])[..., :length])
    x_dbl = torch.einsum("bdl,ed->bel", x, x_proj.weight)
    rank = dt_proj.weight.shape[1]
    dt, B, C = x_dbl[:, :rank], x_dbl[:, rank : rank + d_state], x_dbl[:, rank + d_state :]
    delta = F.softplus(torch.einsum("brl,dr->bdl", dt, dt_proj.weight) + dt_proj.bias[:, None])
    y, _ = selective_scan_loop(x, delta, -torch.exp(A_log), B, C, D, z)
    return y


def mamba_oracle(m, hidden):
    xz = torch.einsum("bld,ed->bel", hidden, m.in_proj.weight)
    x, z = xz.chunk(2, dim=1)
    y = mamba_direction_oracle(x, z, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D, m.d_state)
    if m.bimamba:
        y_b = mamba_direction_oracle(
            x.flip(-1), z.flip(-1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b, m.d_state
        )
        y = y + y_b.flip(-1)
    return torch.einsum("bdl,ed->ble", y, m.out_proj.weight)


def mamba2_oracle(m, hidden):
    zxbcdt = hidden @ m.in_proj.weight.T
    d_mlp = m.d_mlp
    z0, x0 = zxbcdt[..., :d_mlp], zxbcdt[..., d_mlp : 2 * d_mlp]
    z = zxbcdt[..., 2 * d_mlp : 2 * d_mlp + m.d_ssm]
    xBC = zxbcdt[..., 2 * d_mlp + m.d_ssm : -m.nheads]
    dt = zxbcdt[..., -m.nheads :]
    length = hidden.shape[1]
    xBC = F.silu(
        F.conv1d(xBC.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1, groups=m.conv_dim)[
            ..., :length
        ]
    ).transpose(1, 2)
    gn = m.ngroups * m.d_state
    x, B, C = xBC[..., : m.d_ssm], xBC[..., m.d_ssm : m.d_ssm + gn], xBC[..., m.d_ssm + gn :]
    b = hidden.shape[0]
    y, _ = ssd_loop(
        x.reshape(b, length, m.nheads, m.headdim),
        dt,
        -torch.exp(m.A_log),
        B.reshape(b, length, m.ngroups, m.d_state),
        C.reshape(b, length, m.ngroups, m.d_state),
        D=m.D.reshape(m.nheads, m.headdim) if m.D_has_hdim else m.D,
        dt_bias=m.dt_bias,
        dt_softplus=True,
    )
    y = y.reshape(b, length, m.d_ssm)
    # gated RMSNorm (norm after gate), statistics per group of d_ssm / ngroups channels
    y = y * F.silu(z)
    groups = y.reshape(b, length, m.ngroups, -1)
    y = (groups / torch.sqrt(groups.pow(2).mean(-1, keepdim=True) + 1e-5)).reshape(b, length, -1) * m.norm.weight
    if d_mlp:
        y = torch.cat([F.silu(z0) * x0, y], -1)
    return y @ m.out_proj.weight.T


MAMBA_CASES = [dict(bimamba=False), dict(bimamba=True), dict(bimamba=False, d_conv=2, expand=1, dt_rank=3)]
MAMBA2_CASES = [dict(), dict(ngroups=2, D_has_hdim=True), dict(d_ssm=16, chunk_size=4)]


def make_mamba(seed=0, **kw):
    torch.manual_seed(seed)
    return randomize(Mamba(12, d_state=5, **kw), seed).double()


def make_mamba2(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_state=6, headdim=4, chunk_size=8) | kw
    return randomize(Mamba2(12, **cfg), seed).double()


def sequence(length=19, batch=2, seed=0):
    return torch.randn(batch, length, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("cfg", MAMBA_CASES)
def test_mamba_matches_written_out_formula(cfg):
    m = make_mamba(**cfg)
    x = sequence()
    torch.testing.assert_close(m(x), mamba_oracle(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", MAMBA2_CASES)
def test_mamba2_matches_written_out_formula(cfg):
    m = make_mamba2(**cfg)
    x = sequence()
    torch.testing.assert_close(m(x), mamba2_oracle(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", MAMBA_CASES)
def test_mamba_gated_scan_is_the_layer_before_its_output_projection(cfg):
    """``gated_scan`` gives ``y (batch, L, d_inner)`` whose projection is the written formula; from a carried state
    it returns the next state that ``forward`` returns, and none without one."""
    m = make_mamba(**cfg)
    x = sequence()
    y, none = m.gated_scan(x)
    assert y.shape == (2, 19, m.d_inner) and none is None
    torch.testing.assert_close(m.out_proj(y), mamba_oracle(m, x), rtol=1e-10, atol=1e-10)
    state = m.init_state(2)
    state.ssm_state.normal_(generator=torch.Generator().manual_seed(5))
    y, next_state = m.gated_scan(x, state)
    out, expected_state = m(x, state)
    torch.testing.assert_close(m.out_proj(y), out, rtol=0, atol=0)
    torch.testing.assert_close(next_state.ssm_state, expected_state.ssm_state, rtol=0, atol=0)
    torch.testing.assert_close(next_state.conv_state, expected_state.conv_state, rtol=0, atol=0)


@pytest.mark.parametrize("cfg", [*MAMBA_CASES, dict(bimamba=True, bias=True)])
def test_mamba_padded_sequence_gives_the_unpadded_values(cfg, monkeypatch):
    """Where the scan kernels would pad a sequence, the layer pads its input itself with steps that leave the state
    unchanged (the reversed direction's before its sequence). Forced here on the reference scan: output, next
    states and every gradient equal those of the unpadded layer, offline and from a carried state."""
    x = sequence()
    cotangent = torch.randn(2, 19, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    results = []
    for pad in (0, 5):
        monkeypatch.setattr(Mamba, "_identity_pad", lambda self, length, device, pad=pad: pad)
        m = make_mamba(**cfg)
        state = m.init_state(2)
        state.ssm_state.normal_(generator=torch.Generator().manual_seed(5))
        state.conv_state.normal_(generator=torch.Generator().manual_seed(6))
        offline = m(x)
        (offline * cotangent).sum().backward()
        carried, next_state = m(x, state)
        results.append((offline, carried, next_state, [p.grad for p in m.parameters()]))
    (offline, carried, next_state, grads), (offline_p, carried_p, next_state_p, grads_p) = results
    if "bias" not in cfg:
        torch.testing.assert_close(offline, mamba_oracle(make_mamba(**cfg), x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(offline_p, offline, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(carried_p, carried, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(next_state_p.ssm_state, next_state.ssm_state, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(next_state_p.conv_state, next_state.conv_state, rtol=1e-10, atol=1e-10)
    for g_p, g in zip(grads_p, grads, strict=True):
        torch.testing.assert_close(g_p, g, rtol=1e-10, atol=1e-10)


def test_bimamba_uses_the_backward_parameters_with_fast_path_off():
    m = make_mamba(bimamba=True)
    m.use_fast_path = False
    x = sequence()
    before = m(x)
    with torch.no_grad():
        m.D_b.add_(1.0)
    assert (m(x) - before).abs().max() > 1e-3


def _chunks(model, x, cuts):
    length = x.shape[1]
    state, outs = model.init_state(x.shape[0]), []
    for start, end in chunk_bounds(length, cuts):
        y, state = model(x[:, start:end], state)
        outs.append(y)
    return torch.cat(outs, 1), state


@given(cuts=st.lists(st.integers(1, 18), min_size=1, max_size=5), case=st.sampled_from(range(3)))
def test_mamba_chunk_invariance(cuts, case):
    cfg = [dict(), dict(d_conv=2, expand=1), dict(d_conv=3)][case]
    m = make_mamba(**cfg)
    x = sequence()
    y, _ = _chunks(m, x, cuts)
    torch.testing.assert_close(y, m(x), rtol=1e-10, atol=1e-10)


@given(cuts=st.lists(st.integers(1, 18), min_size=1, max_size=5), case=st.sampled_from(range(3)))
def test_mamba2_chunk_invariance(cuts, case):
    m = make_mamba2(**MAMBA2_CASES[case])
    x = sequence()
    y, _ = _chunks(m, x, cuts)
    torch.testing.assert_close(y, m(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("factory", [make_mamba, make_mamba2])
def test_chunk_invariance_float32(factory):
    m = factory().float()
    x = sequence().float()
    y, _ = _chunks(m, x, [3, 4, 11])
    torch.testing.assert_close(y, m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("factory", "cfg"),
    [(make_mamba, {}), (make_mamba2, {}), (make_mamba2, MAMBA2_CASES[1]), (make_mamba2, MAMBA2_CASES[2])],
)
@pytest.mark.parametrize("token_shape", ["flat", "with_length_one"])
def test_step_token_by_token_equals_offline(factory, cfg, token_shape):
    m = factory(**cfg)
    x = sequence(length=9)
    state, outs = m.init_state(2), []
    for t in range(9):
        token = x[:, t] if token_shape == "flat" else x[:, t : t + 1]
        y, state = m.step(token, state)
        assert y.shape == token.shape
        outs.append(y.reshape(2, 12))
    torch.testing.assert_close(torch.stack(outs, 1), m(x), rtol=1e-10, atol=1e-10)
    _, chunk_state = m(x, m.init_state(2))
    for name, tensor in chunk_state.state_dict().items():
        torch.testing.assert_close(state.state_dict()[name], tensor, rtol=1e-10, atol=1e-10)


def test_bimamba_single_chunk_equals_offline_and_chunks_confine_the_backward_direction():
    m = make_mamba(bimamba=True)
    x = sequence()
    y, _ = m(x, m.init_state(2))
    torch.testing.assert_close(y, m(x), rtol=1e-12, atol=1e-12)
    # Two chunks: forward direction carried, backward direction restricted to each chunk.
    y_chunks, _ = _chunks(m, x, [8])
    xz = torch.einsum("bld,ed->bel", x, m.in_proj.weight)
    xs, zs = xz.chunk(2, dim=1)
    y_fwd = mamba_direction_oracle(xs, zs, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D, m.d_state)
    y_bwd = torch.cat(
        [
            mamba_direction_oracle(
                xs[..., s].flip(-1),
                zs[..., s].flip(-1),
                m.conv1d_b,
                m.x_proj_b,
                m.dt_proj_b,
                m.A_b_log,
                m.D_b,
                m.d_state,
            ).flip(-1)
            for s in (slice(0, 8), slice(8, 19))
        ],
        -1,
    )
    expected = torch.einsum("bdl,ed->ble", y_fwd + y_bwd, m.out_proj.weight)
    torch.testing.assert_close(y_chunks, expected, rtol=1e-10, atol=1e-10)


def test_bimamba_step_is_a_one_token_chunk():
    m = make_mamba(bimamba=True)
    x = sequence(length=5)
    state, outs = m.init_state(2), []
    for t in range(5):
        y, state = m.step(x[:, t], state)
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), _chunks(m, x, [1, 2, 3, 4])[0], rtol=1e-10, atol=1e-10)


def test_mamba_parameter_names_shapes_and_initialisation():
    torch.manual_seed(0)
    m = Mamba(192, bimamba=True)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (768, 192),
        "conv1d.weight": (384, 1, 4),
        "conv1d.bias": (384,),
        "x_proj.weight": (44, 384),
        "dt_proj.weight": (384, 12),
        "dt_proj.bias": (384,),
        "A_log": (384, 16),
        "D": (384,),
        "conv1d_b.weight": (384, 1, 4),
        "conv1d_b.bias": (384,),
        "x_proj_b.weight": (44, 384),
        "dt_proj_b.weight": (384, 12),
        "dt_proj_b.bias": (384,),
        "A_b_log": (384, 16),
        "D_b": (384,),
        "out_proj.weight": (192, 384),
    }
    expected_A = torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(384, 16)
    torch.testing.assert_close(m.A_log.data, expected_A)
    torch.testing.assert_close(m.A_b_log.data, expected_A)
    assert torch.equal(m.D.data, torch.ones(384)) and torch.equal(m.D_b.data, torch.ones(384))
    dt = F.softplus(m.dt_proj.bias.data)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    # log-uniform in [1e-3, 1e-1]: log10(dt) ~ U(-3, -1): mean -2, std 2/sqrt(12)
    assert abs(torch.log10(dt).mean().item() + 2) < 0.1
    assert abs(torch.log10(dt).std().item() - 2 / math.sqrt(12)) < 0.05
    bound = 12**-0.5
    w = m.dt_proj.weight.data
    assert w.abs().max() <= bound and abs(w.std().item() - bound / math.sqrt(3)) < 0.01
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit


def test_mamba_constant_dt_init_and_bad_dt_init():
    m = Mamba(32, dt_init="constant", dt_scale=2.0)
    torch.testing.assert_close(m.dt_proj.weight.data, torch.full((64, 2), 2 * 2**-0.5))
    with pytest.raises(ValueError, match="dt_init must be 'random' or 'constant'; got 'normal'"):
        Mamba(32, dt_init="normal")


def test_mamba2_parameter_names_shapes_and_initialisation():
    torch.manual_seed(0)
    m = Mamba2(256, d_state=64, headdim=32, ngroups=2)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    nheads, conv_dim = 16, 512 + 2 * 2 * 64
    assert shapes == {
        "in_proj.weight": (2 * 512 + 2 * 2 * 64 + nheads, 256),
        "conv1d.weight": (conv_dim, 1, 4),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (512,),
        "out_proj.weight": (256, 512),
    }
    A = torch.exp(m.A_log.data)
    assert A.min() >= 1 and A.max() <= 16
    dt = F.softplus(m.dt_bias.data)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert torch.equal(m.D.data, torch.ones(nheads))


def test_init_state_shapes_and_dtypes():
    m, m2 = Mamba(16, d_state=4), Mamba2(16, d_state=8, headdim=8)
    s = m.init_state(3, dtype=torch.bfloat16)
    assert isinstance(s, MambaState)
    assert s.conv_state.shape == (3, 32, 4) and s.conv_state.dtype == torch.bfloat16
    assert s.ssm_state.shape == (3, 32, 4) and s.ssm_state.dtype == torch.float32
    s2 = m2.init_state(3)
    assert isinstance(s2, Mamba2State)
    assert s2.conv_state.shape == (3, 32 + 16, 4) and s2.ssm_state.shape == (3, 4, 8, 8)


def test_bad_inputs_and_states_raise_clear_errors():
    m, m2 = Mamba(16, d_state=4), Mamba2(16, d_state=8, headdim=8)
    with pytest.raises(
        ValueError,
        match=r"hidden_states must have shape \(batch, L, d_model\)=\(\*, \*, 16\); got \(2, 5, 15\)",
    ):
        m(torch.randn(2, 5, 15))
    with pytest.raises(ValueError, match=r"state.conv_state must have shape \(batch, d_inner, d_conv\)=\(2, 32, 4\)"):
        m(torch.randn(2, 5, 16), m.init_state(3))
    with pytest.raises(TypeError, match="state must be a MambaState"):
        m(torch.randn(2, 5, 16), m2.init_state(2))
    with pytest.raises(TypeError, match="state must be a Mamba2State"):
        m2.step(torch.randn(2, 16), m.init_state(2))
    with pytest.raises(ValueError, match=r"hidden_states must have shape \(batch, 1, d_model\)"):
        m.step(torch.randn(2, 3, 16), m.init_state(2))
    with pytest.raises(ValueError, match="d_ssm=20 must be a multiple of headdim=8"):
        Mamba2(16, d_ssm=20, headdim=8)
    with pytest.raises(ValueError, match="nheads=4 must be a multiple of ngroups=3"):
        Mamba2(16, headdim=8, ngroups=3)


def test_gradients_flow_through_carried_state():
    m = make_mamba()
    x = sequence(length=6).requires_grad_()
    _, state = m(x[:, :3], m.init_state(2))
    y2, _ = m(x[:, 3:], state)
    y2.sum().backward()
    assert x.grad[:, :3].abs().sum() > 0  # the second chunk depends on the first through the state
    x.grad = None
    y2, _ = m(x[:, 3:], state.detach())
    y2.sum().backward()
    assert x.grad is None or x.grad[:, :3].abs().sum() == 0
