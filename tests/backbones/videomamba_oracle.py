"""An independent, straightforward VideoMamba forward written from the official formulas.

It reads a state dict only (no library module): patches by slicing, the causal convolution and the
selective scan as plain loops over tokens, norms from their formulas. ``segments`` confines the
backward scan direction to token ranges, which is what streaming with ``bimamba=True`` specifies.
"""

import torch
import torch.nn.functional as F


def silu(x):
    return x * torch.sigmoid(x)


def rms_norm(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def tokens(sd, x, patch, tubelet, temporal_offset=0, with_cls=True):
    """x (B, C, T, H, W) -> (B, L, D): cls first, then frame-major patches, row-major in a frame."""
    batch, _, frames, height, width = x.shape
    w, b = sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"]
    pos, temporal = sd["pos_embed"][0], sd["temporal_pos_embedding"][0]
    cols = width // patch
    seq = [(sd["cls_token"][0, 0] + pos[0]).expand(batch, -1)] if with_cls else []
    for t in range(frames // tubelet):
        for i in range(height // patch):
            for j in range(cols):
                cube = x[
                    :, :, t * tubelet : (t + 1) * tubelet, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch
                ]
                token = torch.einsum("bckhw,dckhw->bd", cube, w) + b
                seq.append(token + pos[1 + i * cols + j] + temporal[temporal_offset + t])
    return torch.stack(seq, dim=1)


def scan_direction(x, z, sd, prefix, suffix):
    """One direction over (B, L, Din) inputs: causal depthwise conv + SiLU, selective scan, gate."""
    conv_w = sd[f"{prefix}conv1d{suffix}.weight"][:, 0]  # (Din, W)
    conv_b = sd[f"{prefix}conv1d{suffix}.bias"]
    x_proj = sd[f"{prefix}x_proj{suffix}.weight"]
    dt_w, dt_b = sd[f"{prefix}dt_proj{suffix}.weight"], sd[f"{prefix}dt_proj{suffix}.bias"]
    A = -torch.exp(sd[prefix + ("A_log" if suffix == "" else "A_b_log")])
    D = sd[f"{prefix}D{suffix}"]
    width, rank, n = conv_w.shape[1], dt_w.shape[1], A.shape[1]
    batch, length, d_inner = x.shape
    h = torch.zeros(batch, d_inner, n, dtype=x.dtype)
    ys = []
    for t in range(length):
        acc = conv_b.expand(batch, -1).clone()
        for j in range(width):
            src = t - (width - 1) + j
            if src >= 0:
                acc = acc + conv_w[:, j] * x[:, src]
        u = silu(acc)
        proj = u @ x_proj.T
        dt, B, C = proj[:, :rank], proj[:, rank : rank + n], proj[:, rank + n :]
        delta = F.softplus(dt @ dt_w.T + dt_b)
        h = torch.exp(delta[:, :, None] * A) * h + delta[:, :, None] * B[:, None, :] * u[:, :, None]
        ys.append((h * C[:, None, :]).sum(-1) + D * u)
    return torch.stack(ys, dim=1) * silu(z)


def mixer(hidden, sd, prefix, bimamba, segments):
    xz = hidden @ sd[prefix + "in_proj.weight"].T
    x, z = xz.chunk(2, dim=-1)
    y = scan_direction(x, z, sd, prefix, "")
    if bimamba:
        parts = [scan_direction(x[:, s:e].flip(1), z[:, s:e].flip(1), sd, prefix, "_b").flip(1) for s, e in segments]
        y = y + torch.cat(parts, dim=1)
    return y @ sd[prefix + "out_proj.weight"].T


def norm(x, sd, name, eps, rms):
    if rms:
        return rms_norm(x, sd[f"{name}.weight"], eps)
    return layer_norm(x, sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def trunk(sd, seq, depth, final_norm, bimamba=True, rms=True, eps=1e-5, segments=None):
    """The residual stack: r = r + h; h = mixer(norm(r)); out = norm_final(r + h)."""
    segments = segments or [(0, seq.shape[1])]
    hidden, residual = seq, None
    for i in range(depth):
        residual = hidden if residual is None else residual + hidden
        hidden = mixer(norm(residual, sd, f"layers.{i}.norm", eps, rms), sd, f"layers.{i}.mixer.", bimamba, segments)
    return norm(residual + hidden, sd, final_norm, eps, rms)
