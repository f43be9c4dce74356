"""Entries that stay in their slots, in-place and out-of-place writes, the skipped cosine: against plain lists
and the per-video Algorithm 1 oracle (float64)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from videostate.vlm import DualMemoryModule
from videostate.vlm.memory import MemoryBank, fifo_update, frame_norms, similarity_replace_update

from .oracles import algorithm1_video, naive_cos

MODES = ["dual", "working_only", "episodic_only"]


def _frames(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _module(mode="dual", L_w=2, L_e=3, dim=8, heads=2, seed=0):
    """A float64 memory with random biases (with the zero biases of initialisation an episodic-only memory
    reads 0)."""
    torch.manual_seed(seed)
    module = DualMemoryModule(dim, heads, L_w=L_w, L_e=L_e, dropout=0.0, mode=mode).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


class OpNames(TorchDispatchMode):
    """Records the name of every aten op that runs."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _assert_entries(bank, b, expected: list):
    got = bank.entries(b)
    assert got.shape[0] == len(expected)
    if expected:
        torch.testing.assert_close(got, torch.stack(expected))


# ---------------------------------------------------------------- banks against Python lists


@settings(max_examples=15, deadline=None)
@given(
    capacity=st.integers(1, 4),
    flags=st.lists(st.tuples(st.booleans(), st.booleans()), max_size=14),
    seed=st.integers(0, 1000),
)
def test_fifo_ring_buffer_matches_list_oracle(capacity, flags, seed):
    bank = MemoryBank.empty(2, capacity, 2, 3, dtype=torch.float64)
    lists = [[], []]
    for k, flag in enumerate(flags):
        x, active = _frames(2, 2, 3, seed=1000 * seed + k), torch.tensor(flag)
        before = bank.slots.clone()
        bank = fifo_update(bank, x, active)
        # one slot of each active video changes, nothing else moves
        changed = (bank.slots != before).flatten(2).any(dim=2)
        assert changed.sum(dim=1).tolist() == [int(f) for f in flag]
        for b in range(2):
            if flag[b]:
                if len(lists[b]) >= capacity:
                    lists[b].pop(0)
                lists[b].append(x[b])
    for b in range(2):
        _assert_entries(bank, b, lists[b])
        received = sum(f[b] for f in flags)
        assert int(bank.written()[b]) == received and int(bank.count[b]) == min(received, capacity)
        # the entry with insertion index s sits in slot s mod capacity
        for slot in range(capacity):
            stamp = int(bank.stamp[b, slot])
            assert stamp == 0 if slot >= received else (stamp - 1) % capacity == slot
    torch.testing.assert_close(bank.slots[~bank.valid()], torch.zeros_like(bank.slots[~bank.valid()]))


@settings(max_examples=15, deadline=None)
@given(capacity=st.integers(1, 4), zero=st.lists(st.booleans(), max_size=12), seed=st.integers(0, 1000))
def test_similarity_replacement_matches_list_oracle(capacity, zero, seed):
    """Zero frames tie (cosine 0 with everything): the oldest of the most similar entries is deleted, as the
    first maximum of the list; the new entry takes the deleted entry's slot."""
    normed = MemoryBank.empty(3, capacity, 2, 5, dtype=torch.float64, normed=True)
    plain = MemoryBank.empty(3, capacity, 2, 5, dtype=torch.float64)
    lists = [[], [], []]
    for k, is_zero in enumerate(zero):
        x = _frames(3, 2, 5, seed=1000 * seed + k)
        x[0] *= 1 - int(is_zero)
        before = normed.slots.clone()
        normed, plain = similarity_replace_update(normed, x), similarity_replace_update(plain, x)
        for b in range(3):
            if len(lists[b]) >= capacity:
                sims = [naive_cos(x[b], e) for e in lists[b]]
                lists[b].pop(max(range(len(sims)), key=lambda i, s=sims: s[i]))
            lists[b].append(x[b])
            newest = int(normed.stamp[b].argmax())
            others = [s for s in range(capacity) if s != newest]
            torch.testing.assert_close(normed.slots[b, newest], x[b], rtol=0, atol=0)
            torch.testing.assert_close(normed.slots[b, others], before[b, others], rtol=0, atol=0)
    for b in range(3):
        _assert_entries(normed, b, lists[b])
        _assert_entries(plain, b, lists[b])
    torch.testing.assert_close(normed.norms, frame_norms(normed.slots))  # cached at write: the stored frames' norms


# ---------------------------------------------------------------- the dual memory against Algorithm 1


@pytest.mark.parametrize("grad", [False, True], ids=["in_place", "out_of_place"])
@pytest.mark.parametrize("mode", MODES)
def test_chunks_with_padding_match_the_oracle(mode, grad):
    """Three chunks with a carried state, videos padded differently in each (a video with no frame in a chunk
    included): outputs and memories (oldest first, across wrap-around) equal the oracle on each video's real
    frames, with the in-place writes (no grad) and the out-of-place ones (grad)."""
    module = _module(mode, L_w=2, L_e=3)
    chunks = [(4, [4, 2, 0]), (3, [3, 3, 1]), (5, [5, 0, 5])]
    state, real, got = None, [[], [], []], [[], [], []]
    with torch.set_grad_enabled(grad):
        for k, (frames, lengths) in enumerate(chunks):
            x = _frames(3, frames, 3, 8, seed=k)
            out, state = module.forward_video(x, state, num_frames=torch.tensor(lengths))
            assert out.requires_grad == grad
            for b, n in enumerate(lengths):
                real[b].append(x[b, :n])
                got[b].append(out[b, :n])
                torch.testing.assert_close(out[b, n:], x[b, n:], rtol=0, atol=0)
    for b in range(3):
        expected, working, episodic = algorithm1_video(module, torch.cat(real[b]), mode=mode)
        torch.testing.assert_close(torch.cat(got[b]), expected)
        for bank, oracle in ((state.working, working), (state.episodic, episodic)):
            if bank is not None:
                _assert_entries(bank, b, oracle)
                assert int(bank.written()[b]) == sum(len(chunk) for chunk in real[b])


@pytest.mark.parametrize("mode", MODES)
def test_in_place_and_out_of_place_writes_agree(mode):
    """Without autograd the episodic memory is written in place, under autograd out of place: the same
    outputs and memories, bit for bit, through a carried state and padding."""
    module = _module(mode, L_w=2, L_e=3)
    first, second = _frames(2, 5, 3, 8, seed=1), _frames(2, 4, 3, 8, seed=2)
    lengths = torch.tensor([4, 2])
    runs = {}
    for grad in (False, True):
        with torch.set_grad_enabled(grad), OpNames() as ops:
            out, state = module.forward_video(first)
            more, state = module.forward_video(second, state, num_frames=lengths)
        runs[grad] = (torch.cat([out, more], dim=1).detach(), state.detach().state_dict(), set(ops.names))
    if mode != "working_only":  # the paths differ only in the episodic write
        assert "index_put_" in runs[False][2] and "index_put_" not in runs[True][2]
    torch.testing.assert_close(runs[False][0], runs[True][0], rtol=0, atol=0)
    assert runs[False][1].keys() == runs[True][1].keys()
    for name, tensor in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], tensor, rtol=0, atol=0)


def test_a_state_passed_in_is_not_changed():
    module = _module(L_w=2, L_e=3)
    x = _frames(2, 6, 3, 8, seed=3)
    _, state = module.forward_video(x[:, :4])  # both memories full
    saved = state.state_dict()
    with torch.no_grad():
        module.forward_video(x[:, 4:], state)
        module.forward_video(x[:, 4:], state, num_frames=torch.tensor([2, 1]))
        module.trace_video(x[:, 4:], state)
        module(x[:, 4], state.working, state.episodic)
    module.forward_video(x[:, 4:], state)
    for name, tensor in state.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)


def test_skipping_the_cosine_while_no_memory_is_full_changes_nothing():
    """forward() computes the cosine on every frame (similarity_replace_update); forward_video only on frames
    where a video's episodic memory can be full, as one matrix product: same outputs and memories."""
    module = _module(L_w=2, L_e=3)
    x = _frames(2, 7, 4, 8, seed=4)
    W, E = module.init_state(2, 4, dtype=torch.float64).banks()
    outputs = []
    for i in range(7):
        M, W, E = module(x[:, i], W, E)
        outputs.append(x[:, i] + M)
    out, state = module.forward_video(x)
    torch.testing.assert_close(out, torch.stack(outputs, dim=1))
    for got, want in ((state.working, W), (state.episodic, E)):
        assert got.state_dict().keys() == want.state_dict().keys()
        for name, tensor in want.state_dict().items():
            torch.testing.assert_close(got.state_dict()[name], tensor)
    for frames in (3, 7):  # a memory of L_e=3 is full from frame 3 on
        with OpNames() as ops:
            module.forward_video(x[:, :frames])
        assert ops.names.count("bmm") == max(0, frames - 3)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_the_oracle(mode):
    """Gradients for the frames and every parameter through the out-of-place writes, padding and a carried
    (not detached) state equal those of the per-video oracle on the whole videos."""
    module = _module(mode, L_w=2, L_e=3)
    x = _frames(2, 7, 3, 8, seed=5).requires_grad_()
    lengths = [7, 5]
    cotangent = _frames(2, 7, 3, 8, seed=6)
    head, state = module.forward_video(x[:, :4])
    tail, _ = module.forward_video(x[:, 4:], state, num_frames=torch.tensor([n - 4 for n in lengths]))
    loss = (torch.cat([head, tail], dim=1) * cotangent).sum()
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, [x, *params])

    oracle_x = x.detach().clone().requires_grad_()
    oracle_loss = 0.0
    for b, n in enumerate(lengths):
        expected, _, _ = algorithm1_video(module, oracle_x[b, :n], mode=mode)
        oracle_loss = oracle_loss + (expected * cotangent[b, :n]).sum() + (oracle_x[b, n:] * cotangent[b, n:]).sum()
    oracle = torch.autograd.grad(oracle_loss, [oracle_x, *params])
    for name, got, want in zip(["frames"] + [n for n, _ in module.named_parameters()], grads, oracle, strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"{name}: {m}")
    assert grads[0][1, 5:].eq(cotangent[1, 5:]).all()  # padded frames pass through


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("grad", [False, True])
def test_float32_memory_under_bf16_autocast(mode, grad):
    """The trainer's bf16 autocast on float32 features: entries are written in the memory's own dtype, over
    wrap-around and a carried state, and the output stays within bf16 rounding of the float32 run."""
    module = _module(mode).float()
    features = _frames(2, 7, 3, 8, seed=5).float().requires_grad_(grad)
    exact, exact_state = module.forward_video(features[:, :4])
    exact_rest, _ = module.forward_video(features[:, 4:], exact_state)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        first, state = module.forward_video(features[:, :4])
        rest, _ = module.forward_video(features[:, 4:], state)
    assert all(bank.slots.dtype == bank.keys.dtype == bank.values.dtype == torch.float32 for bank in state.banks())
    for got, want in ((first, exact), (rest, exact_rest)):
        torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
    if grad:
        (first.float().sum() + rest.float().sum()).backward()
        assert torch.isfinite(features.grad).all()
