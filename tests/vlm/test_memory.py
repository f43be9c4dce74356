import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videostate.vlm import DualMemoryModule, EpisodicMemory, WorkingMemory
from videostate.vlm.memory import MemoryBank, fifo_update, similarity_replace_update

from .oracles import algorithm1_video, naive_cos, naive_mha


def _frames(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _module(L_w=3, L_e=4, dim=8, heads=2, seed=0):
    torch.manual_seed(seed)
    return DualMemoryModule(dim, heads, L_w=L_w, L_e=L_e, dropout=0.0).double().eval()


# ---------------------------------------------------------------- working memory (FIFO)


@settings(max_examples=10)
@given(capacity=st.integers(1, 5), length=st.integers(0, 12))
def test_working_memory_fifo_keeps_the_last_frames_in_order(capacity, length):
    frames = _frames(length, 2, 3, 4)  # (T, batch, tokens, dim)
    memory = WorkingMemory(L_w=capacity)
    for f in frames:
        memory.update(f)
    if length == 0:
        assert len(memory) == 0
        return
    slots, valid = memory.get_buffer()
    kept = frames[max(0, length - capacity) :]
    assert valid.sum(dim=1).tolist() == [len(kept)] * 2
    for b in range(2):
        torch.testing.assert_close(slots[b, : len(kept)], kept[:, b], rtol=0, atol=0)
        assert bool((slots[b, len(kept) :] == 0).all())


def test_working_memory_clear_and_errors():
    memory = WorkingMemory(L_w=2)
    with pytest.raises(RuntimeError, match="not been updated"):
        memory.get_buffer()
    memory.update(_frames(1, 3, 4))
    assert len(memory) == 1
    memory.clear()
    assert len(memory) == 0
    with pytest.raises(ValueError, match="L_w must be at least 1"):
        WorkingMemory(L_w=0)
    memory.update(_frames(1, 3, 4))
    with pytest.raises(ValueError, match=r"\(batch, tokens, dim\)=\(1, 3, 4\); got \(1, 5, 4\)"):
        memory.update(_frames(1, 5, 4))


def test_inactive_videos_keep_their_memory():
    bank = MemoryBank.empty(2, 2, 1, 3, dtype=torch.float64)
    x = _frames(2, 1, 3)
    bank = fifo_update(bank, x, torch.tensor([True, False]))
    assert bank.count.tolist() == [1, 0]
    torch.testing.assert_close(bank.entries(0), x[:1])
    with pytest.raises(ValueError, match="active must be a bool tensor"):
        fifo_update(bank, x, torch.tensor([1, 0]))


# ---------------------------------------------------------------- episodic memory (similarity replacement)


def test_episodic_similarity_is_cosine_over_whole_frames():
    m, e = _frames(2, 3, 4, seed=1), _frames(2, 5, 3, 4, seed=2)
    sims = EpisodicMemory._compute_similarity(m, e)
    expected = torch.tensor([[naive_cos(m[b], e[b, i]) for i in range(5)] for b in range(2)], dtype=torch.float64)
    torch.testing.assert_close(sims, expected)
    assert EpisodicMemory._compute_similarity(torch.zeros(1, 3, 4), e[:1].float()).abs().max() == 0


def test_episodic_replaces_the_most_similar_entry():
    base = torch.eye(4, dtype=torch.float64)[:, None, :]  # four orthogonal one-token entries
    memory = EpisodicMemory(L_e=4)
    for entry in base:
        memory.update(entry[None])
    new = (base[2] + 0.1 * base[0])[None]  # closest to entry 2
    memory.update(new)
    slots, valid = memory.get_buffer()
    assert valid.all()
    expected = torch.stack([base[0], base[1], base[3], new[0]])
    torch.testing.assert_close(slots[0], expected, rtol=0, atol=0)


@settings(max_examples=10)
@given(capacity=st.integers(1, 4), length=st.integers(0, 10), seed=st.integers(0, 1000))
def test_episodic_memory_matches_list_oracle(capacity, length, seed):
    frames = _frames(length, 3, 2, 5, seed=seed)
    memory = EpisodicMemory(L_e=capacity)
    lists = [[] for _ in range(3)]
    for f in frames:
        memory.update(f)
        for b in range(3):
            if len(lists[b]) >= capacity:
                sims = [naive_cos(f[b], e) for e in lists[b]]
                lists[b].pop(max(range(len(sims)), key=lambda i: sims[i]))
            lists[b].append(f[b])
    if length == 0:
        return
    for b in range(3):
        torch.testing.assert_close(memory.bank.entries(b), torch.stack(lists[b]), rtol=0, atol=0)


def test_similarity_replacement_batched_rows_independent():
    bank = MemoryBank.empty(2, 2, 1, 2, dtype=torch.float64)
    a = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    b = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]], dtype=torch.float64)
    bank = similarity_replace_update(similarity_replace_update(bank, a), b)
    new = torch.tensor([[[1.0, 0.1]], [[1.0, 0.1]]], dtype=torch.float64)  # closest to [1, 0] in both
    bank = similarity_replace_update(bank, new)
    torch.testing.assert_close(bank.entries(0), torch.stack([b[0], new[0]]))
    torch.testing.assert_close(bank.entries(1), torch.stack([a[1], new[1]]))


# ---------------------------------------------------------------- dual memory (Algorithm 1)


def test_retrieval_equals_naive_attention_over_valid_entries():
    module = _module()
    attn = module.working_attention
    bank = MemoryBank.empty(2, 3, 4, 8, dtype=torch.float64, cached=True)
    first, second = _frames(2, 4, 8, seed=1), _frames(2, 4, 8, seed=2)
    bank = fifo_update(bank, first, cache=module.cache(attn, first))
    bank = fifo_update(bank, second, torch.tensor([True, False]), cache=module.cache(attn, second))
    H = _frames(2, 4, 8, seed=3)
    out = module.retrieve(attn, H, bank)
    for b in range(2):
        expected = naive_mha(attn, H[b], bank.entries(b).flatten(0, 1))
        torch.testing.assert_close(out[b], expected)
    with pytest.raises(ValueError, match="cached keys/values"):
        module.retrieve(attn, H, MemoryBank.empty(2, 3, 4, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs the new entry's"):
        fifo_update(bank, first)


def test_empty_memory_reads_zero_and_leaves_first_frame_unchanged():
    module = _module()
    frames = _frames(2, 1, 4, 8)
    enhanced, state = module.forward_video(frames)
    torch.testing.assert_close(enhanced, frames, rtol=0, atol=0)
    assert state.working.count.tolist() == [1, 1]
    assert state.episodic.count.tolist() == [1, 1]


def test_gated_fusion_formula():
    module = _module()
    state = module.init_state(2, 4, dtype=torch.float64)
    w_entry, e_entry = _frames(2, 4, 8, seed=1), _frames(2, 4, 8, seed=2)
    W = fifo_update(state.working, w_entry, cache=module.cache(module.working_attention, w_entry))
    E = similarity_replace_update(state.episodic, e_entry, cache=module.cache(module.episodic_attention, e_entry))
    H = _frames(2, 4, 8, seed=3)
    M, W_next, E_next = module(H, W, E)
    M_w = module.retrieve(module.working_attention, H, W)
    M_e = module.retrieve(module.episodic_attention, H, E)
    gamma = torch.sigmoid(module.gate(torch.cat([M_w, M_e], -1)))
    torch.testing.assert_close(M, gamma * M_w + (1 - gamma) * M_e)
    assert not torch.allclose(M, M_w) and not torch.allclose(M, M_e)
    torch.testing.assert_close(W_next.entries(0)[-1], H[0], rtol=0, atol=0)  # working stores H_t
    torch.testing.assert_close(E_next.entries(1)[-1], M[1], rtol=0, atol=0)  # episodic stores M_t


@pytest.mark.parametrize("length", [2, 4, 8])  # shorter than L_w, between L_w and L_e, longer than L_e
def test_algorithm1_matches_per_video_oracle(length):
    module = _module(L_w=3, L_e=5)
    frames = _frames(2, length, 4, 8, seed=length)
    enhanced, state = module.forward_video(frames)
    for b in range(2):
        expected, working, episodic = algorithm1_video(module, frames[b])
        torch.testing.assert_close(enhanced[b], expected)
        torch.testing.assert_close(state.working.entries(b), torch.stack(working))
        torch.testing.assert_close(state.episodic.entries(b), torch.stack(episodic))
    assert state.working.count.tolist() == [min(length, 3)] * 2
    assert state.episodic.count.tolist() == [min(length, 5)] * 2


def test_videos_of_different_lengths_in_one_batch():
    module = _module(L_w=2, L_e=3)
    frames = _frames(3, 6, 4, 8, seed=7)
    num_frames = torch.tensor([6, 0, 1])  # a full video, an empty one and a single frame
    enhanced, state = module.forward_video(frames, num_frames=num_frames)
    for b, n in enumerate(num_frames.tolist()):
        expected, working, episodic = algorithm1_video(module, frames[b, :n])
        torch.testing.assert_close(enhanced[b, :n], expected)
        torch.testing.assert_close(enhanced[b, n:], frames[b, n:], rtol=0, atol=0)
        assert state.working.count[b] == len(working) and state.episodic.count[b] == len(episodic)


def test_videos_in_a_batch_are_isolated():
    module = _module()
    frames = _frames(2, 6, 4, 8, seed=3)
    other = frames.clone()
    other[1] = _frames(6, 4, 8, seed=99)
    out_a, _ = module.forward_video(frames)
    out_b, _ = module.forward_video(other)
    torch.testing.assert_close(out_a[0], out_b[0], rtol=0, atol=0)
    assert not torch.allclose(out_a[1], out_b[1])


@settings(max_examples=6)
@given(cuts=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_chunked_streaming_equals_one_pass(cuts):
    module = _module(L_w=2, L_e=3)
    frames = _frames(2, 9, 3, 8, seed=11)
    offline, final = module.forward_video(frames)
    state, outs, start = None, [], 0
    for size in [*cuts, 9]:
        if start >= 9:
            break
        out, state = module.forward_video(frames[:, start : start + size], state)
        outs.append(out)
        start += size
    # equal up to rounding: the chunks' frames are projected by one matrix product per chunk
    torch.testing.assert_close(torch.cat(outs, dim=1), offline, rtol=1e-12, atol=1e-12)
    for name, tensor in final.state_dict().items():
        torch.testing.assert_close(state.state_dict()[name], tensor, rtol=1e-12, atol=1e-12)


def test_state_reset_and_index_select():
    module = _module()
    frames = _frames(2, 4, 3, 8, seed=5)
    _, state = module.forward_video(frames)
    reset = state.reset(torch.tensor([True, False]))
    assert reset.working.count.tolist() == [0, 3] and reset.episodic.count.tolist() == [0, 4]
    fresh, _ = module.forward_video(frames[:1])
    out, _ = module.forward_video(frames, reset)
    torch.testing.assert_close(out[0], fresh[0])
    swapped = state.index_select(torch.tensor([1, 0]))
    torch.testing.assert_close(swapped.working.slots[0], state.working.slots[1])


def test_memory_is_bounded():
    module = _module(L_w=2, L_e=3)
    _, state = module.forward_video(_frames(1, 20, 3, 8))
    assert state.working.slots.shape == (1, 2, 3, 8) and state.episodic.slots.shape == (1, 3, 3, 8)


def test_forward_video_errors():
    module = _module()
    with pytest.raises(ValueError, match=r"\(batch, frames, tokens, 8\); got \(2, 3, 8\)"):
        module.forward_video(_frames(2, 3, 8))
    with pytest.raises(ValueError, match=r"num_frames must lie in \[0, 3\]"):
        module.forward_video(_frames(2, 3, 4, 8), num_frames=torch.tensor([1, 4]))
    _, state = module.forward_video(_frames(2, 3, 4, 8))
    with pytest.raises(ValueError, match=r"memory state is for \(batch, tokens\)=\(2, 4\)"):
        module.forward_video(_frames(2, 3, 5, 8), state)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DualMemoryModule(10, 3)


def test_episodic_consolidation_keeps_every_distinct_scene():
    g = torch.Generator().manual_seed(4)
    centres = torch.linalg.qr(torch.randn(12, 3, generator=g, dtype=torch.float64))[0].T.reshape(3, 3, 4)
    labels = [0, 1, 2, 0, *torch.randint(0, 3, (30,), generator=g).tolist()]
    memory = EpisodicMemory(L_e=4)
    for label in labels:
        frame = centres[label] + 0.05 * torch.randn(3, 4, generator=g, dtype=torch.float64)
        memory.update(frame[None])
    stored = memory.bank.entries(0)
    kept = {max(range(3), key=lambda c, e=e: naive_cos(e, centres[c])) for e in stored}
    assert kept == {0, 1, 2}  # a new frame replaces its own scene's entry, never another scene's
    assert naive_cos(stored[-1], centres[labels[-1]]) > 0.9


def test_bfloat16_memory_runs():
    module = DualMemoryModule(8, 2, L_w=2, L_e=2, dropout=0.0).to(torch.bfloat16)
    out, state = module.forward_video(torch.randn(1, 4, 3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and state.episodic.slots.dtype == torch.bfloat16 and torch.isfinite(out).all()
