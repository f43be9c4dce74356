"""VLM² dual memory: a working memory (sliding window) and an episodic memory (similarity replacement).

Algorithm 1 of VLM², per frame ``t`` of one video, with ``H_t (tokens, dim)`` the frame's fused visual
tokens, ``W_t`` the working memory and ``E_t`` the episodic memory:

- L1  ``M^w_t = WorkingAttention(Q=H_t, KV=W_t)``
- L2  ``M^e_t = EpisodicAttention(Q=H_t, KV=E_t)``
- L5  ``γ_t = σ(MLP([M^w_t; M^e_t]))``
- L6-7 ``M_t = γ_t ⊙ M^w_t + (1 − γ_t) ⊙ M^e_t``
- L8-14 if ``|W_t| < L_w`` append ``H_t``; else drop the oldest entry, then append ``H_t``
- L15-24 if ``|E_t| < L_e`` append ``M_t``; else delete ``E_{i*}``, ``i* = argmax_i cos(M_t, E_i)``,
  then append ``M_t``
- return ``(M_t, W_{t+1}, E_{t+1})``

An entry of either memory is one frame: all its tokens ``(tokens, dim)``. Attention reads every token of
every stored frame (keys ``(entries · tokens, dim)``); cosine similarity compares whole frames (the
flattened ``tokens · dim`` vectors). A memory with no entries reads as exactly zero, so the first
frame of a video, read against empty memories, gets ``M_1 = 0`` and its features pass unchanged
through the residual ``H_t + M_t``.

Every operation is batched over videos: a :class:`MemoryBank` keeps ``(batch, capacity, tokens, dim)``
slots and a per-video entry count, so videos of a batch have separate memories that fill, slide and
reset independently, with no Python loop over videos. An entry never moves once written: a memory fills
its slots in turn, then the working memory overwrites its oldest entry (a ring buffer) and the episodic
memory writes ``M_t`` into the slot of the entry it deletes. A per-slot insertion stamp keeps the order, so
the memories are the lists of Algorithm 1 (``MemoryBank.entries`` lists them oldest first); attention does
not depend on the order of its keys, so reading needs no reordering. The memories of
:class:`DualMemoryModule` also keep each entry's key and value projections, computed once when it is stored
(reading a memory then costs one query projection and the attention itself), and the episodic memory keeps
each entry's norm for the cosine. Memory is bounded: ``L_w + L_e`` frames per video,
``3 · (L_w + L_e) · tokens · dim`` numbers with the caches.

:meth:`DualMemoryModule.forward_video` does at once, before its frame loop, everything that depends only on
the input frames: the query projections of both attentions, the working memory's key/value projections and
all its reads (frame ``t`` reads the ``L_w`` frames before it: overlapping windows of the chunk's timeline,
read in place, one attention call per video), and the working half of the gate's first layer. The loop keeps
what needs the previous frame's output: the episodic read, the gate, the episodic key/value projection and
the episodic write. Without autograd (grad disabled, or nothing requires it) the episodic memory is written
in place, one slot per frame (into a copy of a state passed in, which is never changed), and while no write
deletes an entry the episodic reads go in runs of :data:`RUN_FRAMES` frames: one attention call reads the
entries stored before the run for all its frames, and each frame adds its read of the entries written since
(the two merged by their log-sum-exps, :mod:`.partial_attention`); under autograd each frame reads the whole
bank in one call and each write is an out-of-place ``index_put`` of that slot (one copy of the bank). The
cosine similarity of lines 15-24 runs only on frames where a video's episodic memory can be full, which the
entry counts tell on the host, as one matrix product with the bank. The frame loop never reads the device.

Memory ablations (``memory_mode``, the "only working memory" / "only episodic memory" studies of VLM²):

- ``"dual"``: Algorithm 1 as above.
- ``"working_only"``: ``M_t = M^w_t``. Only lines 1 and 8-14 run: no episodic memory is kept or read
  and there is no gate MLP.
- ``"episodic_only"``: ``M_t = M^e_t``. Only lines 2 and 15-24 run: no working memory is kept or read
  and there is no gate MLP. The episodic memory still stores ``M_t`` (now ``M^e_t``), as lines 15-24
  say: the ablation removes a component and leaves the other one as Algorithm 1 defines it, so the
  comparison with ``"dual"`` isolates the working memory. A consequence: no stored entry is a frame's
  features. The first frame stores ``M_1 = 0``, and every later entry is a retrieval over earlier
  entries, so frames reach the memory through the attention queries (which stored entries each token
  reads), not through its values. With the zero biases ``nn.MultiheadAttention`` starts from, every
  ``M_t`` is exactly 0 until training moves those biases (at initialisation only the biases get a
  non-zero gradient).

A mode creates only the parameters it uses, and its state holds only the memories it keeps (the other
field of :class:`DualMemoryState` is ``None``); the empty-memory rule holds in every mode.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..ssm.state import StreamState
from .partial_attention import attention_with_lse, merge_attention

MEMORY_MODES = ("dual", "working_only", "episodic_only")
RUN_FRAMES = 8  # frames whose reads of the entries stored before them run as one attention call


@dataclasses.dataclass
class MemoryBank(StreamState):
    """A batch of fixed-capacity memories whose entries stay in the slot they were written to.

    Attributes:
        slots: ``(batch, capacity, tokens, dim)``; slot ``i < count[b]`` of video ``b`` holds an entry, the
            rest is zero. Slots fill in turn, so the valid ones come first; ``stamp`` orders them.
        count: ``(batch,)`` long, the number of valid entries of each video.
        stamp: ``(batch, capacity)`` long, 1 + the insertion index of the slot's entry (the number of entries
            the video's memory had received before it), 0 for an empty slot: ascending stamps run oldest
            first, and the largest is the number of entries ever written.
        keys, values: ``(batch, capacity, tokens, dim)`` the entries projected by the key and value
            weights of the attention that reads this memory, computed once when an entry is stored (the
            memories of :class:`DualMemoryModule`), or ``None`` (plain memories).
        norms: ``(batch, capacity)`` the L2 norm of each entry over the whole frame, computed once when it
            is stored (the episodic memory of :class:`DualMemoryModule`), or ``None``.
    """

    slots: torch.Tensor
    count: torch.Tensor
    stamp: torch.Tensor
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    norms: torch.Tensor | None = None

    @classmethod
    def empty(
        cls,
        batch_size: int,
        capacity: int,
        tokens: int,
        dim: int,
        *,
        device=None,
        dtype=None,
        cached: bool = False,
        normed: bool = False,
    ) -> MemoryBank:
        """An empty memory; ``cached`` adds the ``keys``/``values`` projections, ``normed`` the entry norms."""
        if capacity < 1:
            raise ValueError(f"memory capacity must be at least 1; got {capacity}")

        def zeros(*shape, dtype=dtype):
            return torch.zeros(batch_size, *shape, device=device, dtype=dtype)

        return cls(
            slots=zeros(capacity, tokens, dim),
            count=zeros(dtype=torch.long),
            stamp=zeros(capacity, dtype=torch.long),
            keys=zeros(capacity, tokens, dim) if cached else None,
            values=zeros(capacity, tokens, dim) if cached else None,
            norms=zeros(capacity) if normed else None,
        )

    @property
    def capacity(self) -> int:
        return self.slots.shape[1]

    def valid(self) -> torch.Tensor:
        """``(batch, capacity)`` bool: which slots hold an entry."""
        positions = torch.arange(self.capacity, device=self.slots.device)
        return positions[None, :] < self.count[:, None]

    def written(self) -> torch.Tensor:
        """``(batch,)`` long: how many entries each video's memory has received (kept or since dropped)."""
        return self.stamp.amax(dim=1)

    def order(self) -> torch.Tensor:
        """``(batch, capacity)`` long: the slots of the entries oldest first, then the empty slots."""
        return torch.where(self.valid(), self.stamp, torch.iinfo(self.stamp.dtype).max).argsort(dim=1)

    def entries(self, index: int) -> torch.Tensor:
        """The valid entries of video ``index``, oldest first: ``(count, tokens, dim)``."""
        return self.slots[index, self.order()[index, : int(self.count[index])]]


def _check_update(
    bank: MemoryBank, x: torch.Tensor, active: torch.Tensor | None, cache: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    expected = (bank.slots.shape[0], *bank.slots.shape[2:])
    if tuple(x.shape) != expected:
        raise ValueError(f"memory entry must have shape (batch, tokens, dim)={expected}; got {tuple(x.shape)}")
    if (bank.keys is None) != (cache is None):
        raise ValueError(
            "a memory with cached keys/values needs the new entry's (keys, values), and only such a memory; "
            f"got a bank {'with' if bank.keys is not None else 'without'} cache and cache={cache is not None}"
        )
    if active is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    if active.dtype != torch.bool or tuple(active.shape) != (x.shape[0],):
        raise ValueError(
            f"active must be a bool tensor of shape (batch,)=({x.shape[0]},); "
            f"got dtype {active.dtype}, shape {tuple(active.shape)}"
        )
    return active


def write_slot(
    fields: dict[str, torch.Tensor],
    rows: torch.Tensor,
    slot: torch.Tensor,
    new: dict[str, torch.Tensor],
    active: torch.Tensor | None,
    in_place: bool,
) -> dict[str, torch.Tensor]:
    """Write ``new[name] (batch, ...)`` into slot ``slot (batch,)`` of ``fields[name] (batch, capacity, ...)`` for
    each active video (an inactive one writes its slot's own content back), touching one slot per video;
    ``rows``: ``arange(batch)``.

    ``in_place`` writes the tensors of ``fields``; otherwise (for autograd) each field is copied once, and its
    gradient is one copy too. Returns the written fields.
    """
    written = {}
    for name, value in new.items():
        field = fields[name]
        value = value.to(field.dtype)  # under autocast the entry may be bf16; the memory keeps its own dtype
        if active is not None:
            value = torch.where(active.reshape(-1, *[1] * (value.dim() - 1)), value, field[rows, slot])
        written[name] = field.index_put_((rows, slot), value) if in_place else field.index_put((rows, slot), value)
    return written


def _updated(bank: MemoryBank, slot: torch.Tensor, new: dict[str, torch.Tensor], active: torch.Tensor) -> MemoryBank:
    rows = torch.arange(slot.shape[0], device=slot.device)
    written = write_slot({name: getattr(bank, name) for name in new}, rows, slot, new, active, in_place=False)
    return dataclasses.replace(bank, count=(bank.count + active.long()).clamp(max=bank.capacity), **written)


def _cached(cache: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    return {} if cache is None else {"keys": cache[0], "values": cache[1]}


def fifo_update(
    bank: MemoryBank,
    x: torch.Tensor,
    active: torch.Tensor | None = None,
    cache: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> MemoryBank:
    """Algorithm 1, lines 8-14: append ``x (batch, tokens, dim)``; a full memory first drops its oldest.

    A ring buffer: the entry with insertion index ``s`` goes to slot ``s mod capacity``, which in a full memory
    holds the oldest entry. ``active (batch,)`` bool leaves the memories of inactive videos untouched (their
    video has no frame at this step). ``cache``: the new entry's ``(keys, values)`` for a memory that caches
    them.
    """
    active = _check_update(bank, x, active, cache)
    written = bank.written()
    return _updated(bank, written % bank.capacity, {"slots": x, "stamp": written + 1, **_cached(cache)}, active)


def frame_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norms of whole frames: ``(..., tokens, dim)`` → ``(...)``."""
    return torch.linalg.vector_norm(x, dim=(-2, -1))


def frame_cosine(
    x: torch.Tensor, x_norms: torch.Tensor, slots: torch.Tensor, slot_norms: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """``cos(x_b, slots_{b,i})`` over whole frames from given norms: ``x (batch, tokens, dim)``, ``x_norms
    (batch,)``, ``slots (batch, L, tokens, dim)``, ``slot_norms (batch, L)`` → ``(batch, L)``; the dot
    products are one batched matrix product. A zero vector has similarity 0 with everything."""
    dot = rearrange(slots, "b l n d -> b l (n d)") @ rearrange(x, "b n d -> b (n d) 1")
    return rearrange(dot, "b l 1 -> b l") / (x_norms[:, None] * slot_norms).clamp_min(eps)


def cosine_similarity(x: torch.Tensor, slots: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``cos(x_b, slots_{b,i})`` over whole frames: ``x (batch, tokens, dim)``, ``slots (batch, L, tokens, dim)``
    → ``(batch, L)``. A zero vector has similarity 0 with everything."""
    return frame_cosine(x, frame_norms(x), slots, frame_norms(slots), eps)


def oldest_most_similar(similarity: torch.Tensor, stamp: torch.Tensor) -> torch.Tensor:
    """The slot with the highest ``similarity (batch, L)`` of each video, the oldest (smallest ``stamp``) among
    equals, as deleting the first maximum of a list in insertion order: ``(batch,)`` long."""
    best = similarity.amax(dim=1, keepdim=True)
    return torch.where(similarity == best, stamp, torch.iinfo(stamp.dtype).max).argmin(dim=1)


def similarity_replace_update(
    bank: MemoryBank,
    x: torch.Tensor,
    active: torch.Tensor | None = None,
    cache: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> MemoryBank:
    """Algorithm 1, lines 15-24: append ``x``; a full memory first deletes the entry most similar to it.

    ``x`` takes the deleted entry's slot and the newest stamp, so the other entries neither move nor change
    order. Among equally similar entries the oldest is deleted. A memory with ``norms`` reads the stored
    entries' norms from there (and stores ``x``'s).
    """
    active = _check_update(bank, x, active, cache)
    with torch.no_grad():  # the choice of a slot has no gradient
        x_norms = frame_norms(x)
        slot_norms = frame_norms(bank.slots) if bank.norms is None else bank.norms
        most_similar = oldest_most_similar(frame_cosine(x, x_norms, bank.slots, slot_norms), bank.stamp)
    slot = torch.where(bank.count >= bank.capacity, most_similar, bank.count)  # i* of lines 15-24, or a free slot
    new = {"slots": x, "stamp": bank.written() + 1, **_cached(cache)}
    if bank.norms is not None:
        new["norms"] = x_norms
    return _updated(bank, slot, new, active)


@dataclasses.dataclass
class EpisodicRun:
    """The episodic reads of a run of frames over the entries stored before it (see
    :meth:`DualMemoryModule._run_reads`): the run starts at frame ``first`` with ``stored`` entries per video;
    ``out (batch, heads, frames · tokens, head_dim)`` and ``lse (batch, heads, frames · tokens)`` are each
    frame's attention output and log-sum-exp over those entries, before the output projection."""

    first: int
    stored: int
    out: torch.Tensor
    lse: torch.Tensor


def entry_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Projected memory entries ``(batch, entries, tokens, heads · head_dim)`` as attention keys or values over
    every token of every entry: ``(batch, heads, entries · tokens, head_dim)``, a view where the entries are
    contiguous."""
    return rearrange(x, "b l n (h e) -> b h (l n) e", h=heads)


class WorkingMemory:
    """Sliding-window memory of the ``L_w`` most recent frames (FIFO), for a batch of videos.

    ``update(H_t)`` appends ``H_t (batch, tokens, dim)``, dropping the oldest entry when full;
    ``get_buffer()`` returns ``(entries (batch, L_w, tokens, dim) oldest first, valid (batch, L_w))``;
    ``clear()`` empties it. The memory takes its batch size, token count, dtype and device from the first
    update.
    """

    def __init__(self, L_w: int = 8):
        if L_w < 1:
            raise ValueError(f"L_w must be at least 1; got {L_w}")
        self.capacity = L_w
        self.bank: MemoryBank | None = None

    def _ensure(self, x: torch.Tensor) -> MemoryBank:
        if x.dim() != 3:
            raise ValueError(f"memory entry must have shape (batch, tokens, dim); got {tuple(x.shape)}")
        if self.bank is None:
            b, n, d = x.shape
            self.bank = MemoryBank.empty(b, self.capacity, n, d, device=x.device, dtype=x.dtype)
        return self.bank

    def update(self, H_t: torch.Tensor, active: torch.Tensor | None = None) -> None:
        self.bank = fifo_update(self._ensure(H_t), H_t, active)

    def get_buffer(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bank is None:
            raise RuntimeError("the memory has not been updated yet, so it has no batch size or shape")
        order = self.bank.order()
        rows = torch.arange(order.shape[0], device=order.device)[:, None]
        return self.bank.slots[rows, order], self.bank.valid()

    def clear(self) -> None:
        self.bank = None

    def __len__(self) -> int:
        """Entries of the fullest video (0 when empty)."""
        return 0 if self.bank is None else int(self.bank.count.max())


class EpisodicMemory(WorkingMemory):
    """Long-term memory of ``L_e`` frames with similarity-based replacement, for a batch of videos.

    ``update(M_t)`` appends ``M_t (batch, tokens, dim)``; when full it first deletes the stored entry with
    the highest cosine similarity to ``M_t`` (``_compute_similarity``; the update computes the same cosine from
    the bank's cached entry norms), so the memory keeps diverse frames.
    """

    def __init__(self, L_e: int = 32):
        super().__init__(L_e)

    @staticmethod
    def _compute_similarity(M_t: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of ``M_t (batch, tokens, dim)`` with each entry of ``E (batch, L, tokens, dim)``
        → ``(batch, L)``."""
        return cosine_similarity(M_t, E)

    def update(self, M_t: torch.Tensor, active: torch.Tensor | None = None) -> None:
        self.bank = similarity_replace_update(self._ensure(M_t), M_t, active)


@dataclasses.dataclass
class DualMemoryState(StreamState):
    """The memories of a batch of videos: ``working`` (capacity L_w) and ``episodic`` (capacity L_e);
    ``None`` for a memory the module's ``memory_mode`` does not keep."""

    working: MemoryBank | None
    episodic: MemoryBank | None

    def banks(self) -> list[MemoryBank]:
        """The memories kept (one or two)."""
        return [bank for bank in (self.working, self.episodic) if bank is not None]

    @classmethod
    def cat(cls, states: list[DualMemoryState]) -> DualMemoryState:
        """The states of several batches of videos as one batch, in order."""
        if not states:
            raise ValueError("cat needs at least one state; got an empty list")

        def bank(name: str) -> MemoryBank | None:
            banks = [getattr(s, name) for s in states]
            if any(b is None for b in banks):
                if not all(b is None for b in banks):
                    raise ValueError(f"{name} memory is kept in some states and not in others")
                return None
            fields = {}
            for f in dataclasses.fields(MemoryBank):
                values = [getattr(b, f.name) for b in banks]
                if any(v is None for v in values) and not all(v is None for v in values):
                    raise ValueError(f"{name}.{f.name} is cached in some states and not in others")
                fields[f.name] = None if values[0] is None else torch.cat(values)
            return MemoryBank(**fields)

        return cls(working=bank("working"), episodic=bank("episodic"))


@dataclasses.dataclass
class MemoryTrace:
    """What the dual memory did on each frame of a batch of videos (from :meth:`DualMemoryModule.trace_video`).

    All fields are ``(batch, frames)`` unless noted; entries of frames a video does not have (``active``
    false) are 0, -1 or NaN as stated.

    Attributes:
        memory: ``(batch, frames, tokens, dim)`` the memory output ``M_t`` (differentiable; 0 when inactive).
        gate: mean of ``γ_t`` over tokens and channels: 1 reads the working memory only, 0 the episodic
            one (differentiable; 0 when inactive). Without a gate (``mode`` ``"working_only"`` or
            ``"episodic_only"``) it is the constant 1 or 0 on active frames.
        working_norm, episodic_norm: mean per-token L2 norm of ``M^w_t`` and ``M^e_t``; NaN for a
            memory the mode does not keep.
        replaced: position (oldest first) of the episodic entry deleted at frame ``t`` (lines 15-24), -1
            when none was (the memory was not full, or the video has no frame ``t``).
        replaced_similarity: cosine of ``M_t`` with the deleted entry, NaN when none was deleted.
        read: the video has frame ``t`` and its memories held at least one entry before it.
        active: the video has frame ``t``.
        episodic_before: ``(batch,)`` entries the episodic memory held before the first frame.
        L_e: the episodic capacity (0 when the mode keeps no episodic memory).
        mode: the ``memory_mode`` of the module that made the trace.
    """

    memory: torch.Tensor
    gate: torch.Tensor
    working_norm: torch.Tensor
    episodic_norm: torch.Tensor
    replaced: torch.Tensor
    replaced_similarity: torch.Tensor
    read: torch.Tensor
    active: torch.Tensor
    episodic_before: torch.Tensor
    L_e: int
    mode: str = "dual"

    def episodic_frames(self) -> torch.Tensor:
        """``(batch, frames, L_e)`` long: after frame ``t``, the frame (index into this trace) whose ``M``
        each episodic slot holds, oldest first; -1 marks an empty slot, -2 an entry stored before the trace
        (``(batch, frames, 0)`` without an episodic memory)."""
        batch, frames = self.replaced.shape
        out = torch.full((batch, frames, self.L_e), -1, dtype=torch.long)
        if self.L_e == 0:
            return out
        replaced, active = self.replaced.cpu().tolist(), self.active.cpu().tolist()
        for b in range(batch):
            slots = [-2] * int(self.episodic_before[b])
            for t in range(frames):
                if active[b][t]:
                    if replaced[b][t] >= 0:
                        slots.pop(replaced[b][t])
                    slots.append(t)
                out[b, t, : len(slots)] = torch.tensor(slots, dtype=torch.long)
        return out

    def summary(self) -> list[dict]:
        """Per video: frames, frames that read memory, mean gate over them, episodic replacements and
        their rate per frame, mean similarity of the replaced entries."""
        rows = []
        for b in range(self.gate.shape[0]):
            read, active = self.read[b], self.active[b]
            replaced = (self.replaced[b] >= 0) & active
            frames = int(active.sum())
            rows.append(
                {
                    "frames": frames,
                    "frames_reading_memory": int(read.sum()),
                    "mean_gate": float(self.gate[b][read].mean()) if read.any() else float("nan"),
                    "episodic_replacements": int(replaced.sum()),
                    "replacement_rate": int(replaced.sum()) / frames if frames else float("nan"),
                    "mean_replaced_similarity": float(self.replaced_similarity[b][replaced].mean())
                    if replaced.any()
                    else float("nan"),
                }
            )
        return rows


class DualMemoryModule(nn.Module):
    """Algorithm 1: attention retrieval from both memories, gated fusion, memory updates.

    Args:
        dim: feature width of the tokens (the vision tower's hidden size, e.g. 1152 for SigLIP).
        num_heads: heads of each retrieval attention.
        L_w: working memory capacity in frames.
        L_e: episodic memory capacity in frames.
        dropout: attention dropout of the retrievals.
        mode: ``"dual"`` (Algorithm 1), ``"working_only"`` or ``"episodic_only"`` (the ablations of the
            module docstring). Only the parameters of the mode exist: ``working_attention`` unless
            ``"episodic_only"``, ``episodic_attention`` unless ``"working_only"``, ``gate`` for ``"dual"``.

    Attributes ``L_w`` and ``L_e`` are the capacities of the memories the mode keeps, 0 for one it does
    not keep.
    """

    def __init__(
        self, dim: int, num_heads: int = 8, L_w: int = 8, L_e: int = 32, dropout: float = 0.1, mode: str = "dual"
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads; got dim={dim}, num_heads={num_heads}")
        if L_w < 1 or L_e < 1:
            raise ValueError(f"memory capacities must be at least 1; got L_w={L_w}, L_e={L_e}")
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {MEMORY_MODES}; got {mode!r}")
        self.mode = mode
        self.uses_working, self.uses_episodic = mode != "episodic_only", mode != "working_only"
        self.dim = dim
        self.L_w, self.L_e = (L_w if self.uses_working else 0), (L_e if self.uses_episodic else 0)
        if self.uses_working:
            self.working_attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        if self.uses_episodic:
            self.episodic_attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        if mode == "dual":
            self.gate = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, L_w={self.L_w}, L_e={self.L_e}"

    def init_state(self, batch_size: int, tokens: int, *, device=None, dtype=None) -> DualMemoryState:
        """Empty memories for ``batch_size`` videos of ``tokens`` tokens per frame (with key/value caches, and
        entry norms for the episodic memory); a memory the mode does not keep is ``None``."""

        def bank(capacity: int, normed: bool) -> MemoryBank | None:
            if not capacity:
                return None
            return MemoryBank.empty(
                batch_size, capacity, tokens, self.dim, device=device, dtype=dtype, cached=True, normed=normed
            )

        return DualMemoryState(working=bank(self.L_w, False), episodic=bank(self.L_e, True))

    def check_state(self, working: MemoryBank | None, episodic: MemoryBank | None) -> None:
        """Raise unless exactly the memories of the mode are given."""
        given = (working is not None, episodic is not None)
        if given != (self.uses_working, self.uses_episodic):

            def names(flags):
                return [n for n, f in zip(("working", "episodic"), flags, strict=True) if f]

            raise ValueError(
                f"a {self.mode!r} memory keeps the memories {names((self.uses_working, self.uses_episodic))}; "
                f"got a state with {names(given)}"
            )

    @staticmethod
    def project(attention: nn.MultiheadAttention, x: torch.Tensor, which: int) -> torch.Tensor:
        """``x`` through the query (0), key (1) or value (2) projection of ``attention``."""
        d = attention.embed_dim
        part = slice(which * d, (which + 1) * d)
        return F.linear(x, attention.in_proj_weight[part], attention.in_proj_bias[part])

    def cache(self, attention: nn.MultiheadAttention, entry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(keys, values)`` a memory read by ``attention`` stores with ``entry``."""
        return self.project(attention, entry, 1), self.project(attention, entry, 2)

    def attend(
        self,
        attention: nn.MultiheadAttention,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The heads and output projection of ``attention`` for projected ``query (batch, tokens, dim)`` over
        every token of projected ``keys``/``values (batch, entries, tokens, dim)``.

        ``valid (batch, entries)`` bool: the entries to read (``None``: all). A video with no valid entry reads
        exactly zero.
        """
        heads = attention.num_heads
        q = rearrange(query, "b n (h e) -> b h n e", h=heads)
        k, v = entry_heads(keys, heads), entry_heads(values, heads)
        dropout = attention.dropout if self.training else 0.0
        if valid is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
            return attention.out_proj(rearrange(out, "b h n e -> b n (h e)"))
        empty = ~valid.any(dim=1)
        # an all-masked row would give NaN (and NaN gradients through where); unmask one zero slot instead
        valid = valid | (empty[:, None] & (torch.arange(valid.shape[1], device=valid.device) == 0))
        mask = repeat(valid, "b l -> b 1 1 (l n)", n=keys.shape[2])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = attention.out_proj(rearrange(out, "b h n e -> b n (h e)"))
        return out.masked_fill(empty[:, None, None], 0.0)

    def retrieve(
        self,
        attention: nn.MultiheadAttention,
        H_t: torch.Tensor,
        bank: MemoryBank,
    ) -> torch.Tensor:
        """``attention`` with queries ``H_t (batch, tokens, dim)`` over every token of the valid entries,
        reading the bank's cached keys and values. Videos whose memory is empty read exactly zero.
        """
        if bank.keys is None:
            raise ValueError("DualMemoryModule reads memories with cached keys/values; make them with init_state")
        query = self.project(attention, H_t, 0)
        return self.attend(attention, query, bank.keys, bank.values, bank.valid())

    def gate_working_part(self, M_w: torch.Tensor) -> torch.Tensor:
        """The working half of the gate's first layer with its bias: ``W_1[:, :dim] M^w + b_1`` for
        ``M^w (..., tokens, dim)``."""
        first = self.gate[0]
        return F.linear(M_w, first.weight[:, : self.dim], first.bias)

    def fuse(
        self, working_part: torch.Tensor, M_w: torch.Tensor, M_e: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lines 5-7 for ``(batch, tokens, dim)`` retrievals, given :meth:`gate_working_part` of ``M_w``:
        ``γ = σ(MLP([M^w; M^e]))`` and ``M = γ ⊙ M^w + (1 − γ) ⊙ M^e``. Returns ``(M, γ)``."""
        first, activation, second = self.gate
        hidden = torch.addmm(working_part.flatten(0, 1), M_e.flatten(0, 1), first.weight[:, self.dim :].T)
        gamma = torch.sigmoid(second(activation(hidden))).view_as(M_e)
        return torch.lerp(M_e, M_w, gamma), gamma

    def forward(
        self,
        H_t: torch.Tensor,
        W_t: MemoryBank,
        E_t: MemoryBank,
        active: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MemoryBank, MemoryBank]:
        """One frame of Algorithm 1; the memories passed in are not changed.

        Args:
            H_t: ``(batch, tokens, dim)`` features of frame ``t`` of each video.
            W_t, E_t: the memories before frame ``t`` (from :meth:`init_state` and earlier calls); ``None``
                for a memory the mode does not keep (returned as ``None``).
            active: ``(batch,)`` bool, videos that have a frame ``t`` (default all); the memories of the
                others are left as they are and their ``M_t`` is zero.

        Returns:
            ``(M_t (batch, tokens, dim), W_{t+1}, E_{t+1})``.
        """
        self.check_state(W_t, E_t)
        if H_t.dim() != 3 or H_t.shape[-1] != self.dim:
            raise ValueError(f"H_t must have shape (batch, tokens, {self.dim}); got {tuple(H_t.shape)}")
        M_w = M_e = None
        if self.uses_working:
            M_w = self.retrieve(self.working_attention, H_t, W_t)
        if self.uses_episodic:
            M_e = self.retrieve(self.episodic_attention, H_t, E_t)
        if self.mode == "dual":
            M_t, _ = self.fuse(self.gate_working_part(M_w), M_w, M_e)
        else:
            M_t = M_w if self.uses_working else M_e
        if active is not None:
            M_t = M_t.masked_fill(~active[:, None, None], 0.0)
        W_next = E_next = None
        if self.uses_working:
            W_next = fifo_update(W_t, H_t, active, self.cache(self.working_attention, H_t))
        if self.uses_episodic:
            E_next = similarity_replace_update(E_t, M_t, active, self.cache(self.episodic_attention, M_t))
        return M_t, W_next, E_next

    def forward_video(
        self,
        features: torch.Tensor,
        state: DualMemoryState | None = None,
        num_frames: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DualMemoryState]:
        """Run Algorithm 1 over the frames of a batch of videos and add the memory as a residual.

        Args:
            features: ``(batch, frames, tokens, dim)``.
            state: memories carried from earlier frames of the same videos; ``None`` starts empty. It is not
                changed: the memories after the last frame are new tensors (when no video has a frame, the
                given memories are returned as they are).
            num_frames: ``(batch,)`` long, the real length of each video when shorter videos are padded
                at the end (default: all ``frames``). Padded frames are neither read nor stored, and
                their output equals their input.

        Returns:
            ``(features + M, next_state)``: enhanced features ``(batch, frames, tokens, dim)``, and the
            memories after the last frame. Running a video in chunks with the carried state gives the
            same output as one pass, up to float rounding (a chunk's frames are projected together).
        """
        enhanced, state, _ = self._run(features, state, num_frames, trace=False)
        return enhanced, state

    def trace_video(
        self,
        features: torch.Tensor,
        state: DualMemoryState | None = None,
        num_frames: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DualMemoryState, MemoryTrace]:
        """:meth:`forward_video` (same outputs) plus a :class:`MemoryTrace` of gates, retrieval norms and
        episodic replacements per frame (a few extra reductions per frame)."""
        return self._run(features, state, num_frames, trace=True)

    def _check_inputs(self, features, state, num_frames) -> list[int] | None:
        """Raise on inputs that do not fit; returns the video lengths on the host (``None``: all full)."""
        if features.dim() != 4 or features.shape[-1] != self.dim:
            raise ValueError(
                f"features must have shape (batch, frames, tokens, {self.dim}); got {tuple(features.shape)}"
            )
        b, t, n, _ = features.shape
        if state is not None:
            self.check_state(state.working, state.episodic)
            for bank in state.banks():
                if tuple(bank.slots.shape[::2]) != (b, n):
                    raise ValueError(
                        f"memory state is for (batch, tokens)={tuple(bank.slots.shape[::2])}; "
                        f"features have (batch, tokens)=({b}, {n})"
                    )
        if num_frames is None:
            return None
        if num_frames.dtype != torch.long or tuple(num_frames.shape) != (b,):
            raise ValueError(
                f"num_frames must be a long tensor of shape (batch,)=({b},); "
                f"got dtype {num_frames.dtype}, shape {tuple(num_frames.shape)}"
            )
        lengths = num_frames.tolist()
        if any(not 0 <= length <= t for length in lengths):
            raise ValueError(f"num_frames must lie in [0, {t}]; got {lengths}")
        return lengths

    def _run(self, features, state, num_frames, trace: bool):
        lengths = self._check_inputs(features, state, num_frames)
        b, t, n, _ = features.shape
        owned = state is None  # memories made here
        if owned:
            state = self.init_state(b, n, device=features.device, dtype=features.dtype)
        # entries each video holds at the start, on the host (one read of a carried state), so that the frame
        # loop knows without waiting on the device how many slots to read and whether a memory can be full
        start = [[0] * b] * 2 if owned else torch.stack([bank.count for bank in state.banks()]).tolist()
        live = t if lengths is None else max(lengths, default=0)  # frames that some video has
        if lengths is not None and min(lengths) == live:
            lengths = None  # every video has every frame that runs
        steps = torch.arange(live + 1, device=features.device)[:, None].expand(live + 1, b)
        if lengths is not None:
            steps = steps.minimum(num_frames.to(features.device)[None])
        # steps[i]: the frames each video has stored after i frames; active[i]: the video has frame i
        active = None if lengths is None else steps[1:] > steps[:-1]
        in_place = not (
            torch.is_grad_enabled()
            and (
                features.requires_grad
                or any(p.requires_grad for p in self.parameters())
                or any(s.requires_grad for s in state.tensors().values())
            )
        )
        W_next, E_next, M_w, records = state.working, state.episodic, None, []
        if live:
            # contiguous: a strided input would make the projections round differently with and without grad
            frames = rearrange(features[:, :live], "b t n d -> t b n d").contiguous()
            projected = self._input_projections(frames)
            if self.uses_working:
                M_w, W_next = self._working_reads(frames, *projected[:3], state.working, start[0], steps[-1])
            memory = M_w
            if self.uses_episodic:
                E = state.episodic.clone() if in_place and not owned else state.episodic  # never write the caller's
                memory, E_next, records = self._episodic_frames(
                    projected[-1], M_w, E, start[-1], steps, active, lengths, in_place, trace
                )
            if active is not None:
                memory = memory.masked_fill(~active[..., None, None], 0.0)
            enhanced = features[:, :live] + rearrange(memory, "t b n d -> b t n d")
            if live < t:  # frames no video has pass unchanged
                enhanced = torch.cat([enhanced, features[:, live:]], dim=1)
        else:
            memory, enhanced = features.new_zeros(0, b, n, self.dim), features.clone()
        next_state = DualMemoryState(working=W_next, episodic=E_next)
        if not trace:
            return enhanced, next_state, None
        return enhanced, next_state, self._collect_trace(features, state, memory, M_w, records, steps, active)

    def _input_projections(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Everything the frame loop needs from the input frames ``(frames, batch, tokens, dim)``, in one matrix
        product: the working memory's query, key and value projections (its entries are the frames) and the
        episodic query projection, each ``(frames, batch, tokens, dim)``, for the memories the mode keeps."""
        weights, biases = [], []
        if self.uses_working:
            weights.append(self.working_attention.in_proj_weight)
            biases.append(self.working_attention.in_proj_bias)
        if self.uses_episodic:
            weights.append(self.episodic_attention.in_proj_weight[: self.dim])
            biases.append(self.episodic_attention.in_proj_bias[: self.dim])
        return list(F.linear(frames, torch.cat(weights), torch.cat(biases)).split(self.dim, dim=-1))

    def _working_reads(self, frames, query, keys, values, W: MemoryBank, start: list[int], stored: torch.Tensor):
        """Lines 1 and 8-14 for all frames at once: ``M^w`` of every frame ``(frames, batch, tokens, dim)``
        and the working memory after the chunk.

        The carried entries (oldest first) followed by the chunk's frames form a timeline of ``L_w + frames``
        entries per video, and frame ``i``'s working memory is the window of the ``L_w`` timeline entries before
        it. A window is read where it lies: the windows of a video are overlapping views of its timeline, so no
        window is copied. Per video, one attention call reads the frames whose window still holds empty slots
        (the first ``L_w`` frames of a fresh memory), masked, and one reads every other frame.

        Args:
            frames, query, keys, values: ``(frames, batch, tokens, dim)``, the chunk's features and their
                projections by ``working_attention``.
            W: the working memory at the start; ``start``: its entry counts on the host.
            stored: ``(batch,)`` long, the frames each video stores (its length within the chunk).
        """
        capacity, (live, b) = self.L_w, frames.shape[:2]
        device = frames.device
        rows = torch.arange(b, device=device)
        # the carried entries after the empty slots (stamp 0), oldest first: they end the first frame's window
        order = W.stamp.argsort(dim=1)

        def timeline(carried, new):
            """``(batch, L_w + frames, ...)``: the carried entries oldest first, then ``new (frames, batch, ...)``."""
            return torch.cat([carried[rows[:, None], order], rearrange(new, "f b ... -> b f ...")], dim=1)

        keys, values = timeline(W.keys, keys), timeline(W.values, values)
        window = torch.arange(capacity, device=device)
        partial = min(live, max(0, capacity - min(start)))  # frames whose window holds an empty slot
        filled = timeline(W.stamp > 0, torch.ones(live, b, dtype=torch.bool, device=device))  # (batch, L_w + frames)

        def windows(x: torch.Tensor) -> torch.Tensor:
            """``x (L_w + frames, ...)`` of one video → every frame's window ``(frames, L_w, ...)``, a view."""
            return x.as_strided((live, capacity, *x.shape[1:]), (x.stride(0), *x.stride()))

        reads = []
        for video in range(b):
            k, v, valid = windows(keys[video]), windows(values[video]), windows(filled[video])
            q, read = query[:, video], []
            if partial:
                read.append(self.attend(self.working_attention, q[:partial], k[:partial], v[:partial], valid[:partial]))
            if partial < live:
                read.append(self.attend(self.working_attention, q[partial:], k[partial:], v[partial:]))
            reads.append(torch.cat(read))
        # the ring buffer after the chunk: slot q holds the entry whose insertion index is q mod L_w among the
        # last L_w received (none where that index is negative)
        written = W.written()[:, None]
        total = written + stored[:, None]
        inserted = total - capacity + (window - total) % capacity  # (batch, L_w)
        take = (rows[:, None], inserted - written + capacity)  # timeline positions
        W_next = MemoryBank(
            slots=timeline(W.slots, frames)[take],
            count=rearrange(total.clamp(max=capacity), "b 1 -> b"),
            stamp=(inserted + 1).clamp(min=0),
            keys=keys[take],
            values=values[take],
        )
        return torch.stack(reads, dim=1), W_next

    def _episodic_frames(self, query, M_w, E: MemoryBank, start, steps, active, lengths, in_place, trace):
        """The frame loop: lines 2, 5-7 and 15-24, frame by frame.

        Args:
            query: ``(frames, batch, tokens, dim)`` the episodic query projections of the frames.
            M_w: ``(frames, batch, tokens, dim)`` the working reads (``"dual"``), else ``None``.
            E: the episodic memory at the start; ``start``: its entry counts on the host.
            steps: ``(frames + 1, batch)`` long, the frames each video has stored after ``i`` frames.
            active: ``(frames, batch)`` bool, or ``None`` with ``lengths`` when every video has every frame;
                ``lengths``: the video lengths on the host.
            in_place: write ``E``'s tensors in place (no autograd; ``E`` belongs to this call), else write
                out of place.
            trace: also return per-frame records for :class:`MemoryTrace`.

        Returns:
            ``(M (frames, batch, tokens, dim), E after the chunk, records)``.
        """
        capacity, attention = self.L_e, self.episodic_attention
        live, b = query.shape[:2]
        rows = torch.arange(b, device=query.device)
        fields = {name: getattr(E, name) for name in ("slots", "keys", "values", "norms", "stamp")}
        counts = (E.count[None] + steps).clamp(max=capacity)  # (frames + 1, batch): entries before frame i
        free = counts.clamp(max=capacity - 1)  # the slot that a memory which is not full writes next
        full = counts >= capacity
        stamps = E.written()[None] + steps[1:]  # the stamp of the entry that frame i stores
        working_part = None if M_w is None else self.gate_working_part(M_w)
        kv_weight, kv_bias = attention.in_proj_weight[self.dim :], attention.in_proj_bias[self.dim :]
        fused_reads = in_place and not (self.training and attention.dropout > 0)
        outputs, records, run = [], [], None
        for i in range(live):
            on = range(b) if lengths is None else [v for v in range(b) if lengths[v] > i]
            held = [min(start[v] + i, capacity) for v in on]  # the entries of the videos that have frame i
            used = max(held)
            if fused_reads and i % RUN_FRAMES == 0:
                run = self._run_reads(query, fields, i, held, lengths)
            if run is not None:
                M_e = self._read_in_run(query[i], fields, run, i)
            else:
                valid = None  # every video holds `used` entries: no mask
                if not used or min(held) < used:
                    valid = torch.arange(max(used, 1), device=rows.device) < counts[i][:, None]
                slots = slice(0, max(used, 1))
                M_e = self.attend(attention, query[i], fields["keys"][:, slots], fields["values"][:, slots], valid)
            gamma = None
            if working_part is None:
                M_t = M_e
            else:
                M_t, gamma = self.fuse(working_part[i], M_w[i], M_e)
            keys, values = F.linear(M_t, kv_weight, kv_bias).chunk(2, dim=-1)
            with torch.no_grad():  # norms only rank entries
                norms = frame_norms(M_t)
            frame_active = None if len(on) == b else active[i]
            record = {}
            slot = free[i]
            if used >= capacity:  # lines 15-24: a full memory deletes its entry most similar to M_t
                with torch.no_grad():  # the choice of a slot has no gradient
                    similarity = frame_cosine(M_t, norms, fields["slots"], fields["norms"])
                    most_similar = oldest_most_similar(similarity, fields["stamp"])
                slot = most_similar if min(held) >= capacity else torch.where(full[i], most_similar, slot)
                if trace:
                    replaced = full[i] if frame_active is None else full[i] & frame_active
                    chosen = most_similar[:, None]
                    position = (fields["stamp"] < fields["stamp"].gather(1, chosen)).sum(dim=1)  # oldest first
                    record["replaced"] = torch.where(replaced, position, -1)
                    record["similarity"] = torch.where(replaced, similarity.gather(1, chosen)[:, 0], float("nan"))
            new = {"slots": M_t, "keys": keys, "values": values, "norms": norms, "stamp": stamps[i]}
            if in_place and frame_active is None and min(held) == used < capacity:
                for name, value in new.items():  # every video writes its next free slot, `used`: no index
                    fields[name][:, used] = value
            else:
                fields = {**fields, **write_slot(fields, rows, slot, new, frame_active, in_place)}
            outputs.append(M_t)
            if trace:
                record["episodic_norm"] = M_e.detach().norm(dim=-1).mean(dim=1)
                if gamma is not None:
                    record["gate"] = gamma.mean(dim=(1, 2))
                records.append(record)
        return torch.stack(outputs), MemoryBank(count=counts[-1], **fields), records

    def _run_reads(self, query, fields, first: int, held: list[int], lengths) -> EpisodicRun | None:
        """The reads of the entries stored before frame ``first`` by every frame of the run that starts there
        (up to :data:`RUN_FRAMES` frames), in one attention call; ``None`` where a run cannot be formed.

        A run needs every video to have all its frames and to hold the same, non-zero number of entries at its
        start, and no write inside it to delete an entry (the memories are not full): then each frame's
        episodic memory is the run's starting entries, read here, plus the entries the run's earlier frames
        wrote (slots ``held … held + k − 1`` for the run's ``k``-th frame), read frame by frame.
        """
        live, b = query.shape[:2]
        last = min(first + RUN_FRAMES, live)
        used = held[0] if len(held) == b else 0
        complete = lengths is None or min(lengths) >= last
        if not (complete and used and min(held) == used and used + last - first - 2 < self.L_e):
            return None
        heads = self.episodic_attention.num_heads
        out, lse = attention_with_lse(
            rearrange(query[first:last], "f b n (h e) -> b h (f n) e", h=heads),
            entry_heads(fields["keys"][:, :used], heads),
            entry_heads(fields["values"][:, :used], heads),
        )
        return EpisodicRun(first=first, stored=used, out=out, lse=lse)

    def _read_in_run(self, query: torch.Tensor, fields: dict, run: EpisodicRun, i: int) -> torch.Tensor:
        """Line 2 for frame ``i`` of ``run``: its read of the run's starting entries merged with its read of the
        entries written since the run began. ``query (batch, tokens, dim)`` → ``M^e (batch, tokens, dim)``."""
        tokens, heads = query.shape[1], self.episodic_attention.num_heads
        frame = slice((i - run.first) * tokens, (i - run.first + 1) * tokens)
        out, lse = run.out[:, :, frame], run.lse[:, :, frame]
        if i > run.first:
            since = slice(run.stored, run.stored + i - run.first)
            recent = attention_with_lse(
                rearrange(query, "b n (h e) -> b h n e", h=heads),
                entry_heads(fields["keys"][:, since], heads),
                entry_heads(fields["values"][:, since], heads),
            )
            out = merge_attention((out, lse), recent)
        return self.episodic_attention.out_proj(rearrange(out, "b h n e -> b n (h e)"))

    def _collect_trace(self, features, state, memory, M_w, records, steps, active) -> MemoryTrace:
        """The :class:`MemoryTrace` of a run from the memory outputs ``(live, batch, tokens, dim)`` of the frames
        that ran (the first ``live``; no video has a later frame), the working reads and the loop's records."""
        b, t, n, d = features.shape
        live, device = memory.shape[0], features.device
        on = torch.ones(live, b, dtype=torch.bool, device=device) if active is None else active

        def stacked(name: str, fill: float, dtype: torch.dtype) -> torch.Tensor:
            """``(live, batch)``: the records' values, ``fill`` where a record has none."""
            if not records:
                return torch.full((live, b), fill, dtype=dtype, device=device)
            default = torch.full((b,), fill, dtype=dtype, device=device)
            return torch.stack([r.get(name, default) for r in records])

        def per_video(values: torch.Tensor, fill: float) -> torch.Tensor:
            """``(live, batch)`` → ``(batch, frames)``, ``fill`` for the frames that did not run."""
            return rearrange(torch.cat([values, values.new_full((t - live, b), fill)]), "t b -> b t")

        def read_norms(values: torch.Tensor, kept: bool) -> torch.Tensor:
            """Mean per-token norms ``(live, batch)`` of a memory's reads; NaN for a memory the mode lacks."""
            if not kept:
                return torch.full((b, t), float("nan"), dtype=features.dtype, device=device)
            return per_video(values.masked_fill(~on, 0.0), 0.0)

        working = features.new_zeros(live, b) if M_w is None else M_w.detach().norm(dim=-1).mean(dim=-1)
        if self.mode == "dual":
            gate = stacked("gate", 0.0, features.dtype).masked_fill(~on, 0.0)
        else:  # no gate: γ is 1 (working only) or 0 (episodic only)
            gate = on.to(features.dtype) * float(self.uses_working)
        before = torch.stack([bank.count for bank in state.banks()]).amax(dim=0)
        held = (before[None] + steps[:-1]) > 0  # the video's memories hold an entry before frame i
        return MemoryTrace(
            memory=torch.cat([rearrange(memory, "t b n d -> b t n d"), features.new_zeros(b, t - live, n, d)], 1),
            gate=per_video(gate, 0.0),
            working_norm=read_norms(working, self.uses_working),
            episodic_norm=read_norms(stacked("episodic_norm", 0.0, features.dtype), self.uses_episodic),
            replaced=per_video(stacked("replaced", -1, torch.long), -1),
            replaced_similarity=per_video(stacked("similarity", float("nan"), features.dtype), float("nan")),
            read=per_video(on & held, False),
            active=per_video(on, False),
            episodic_before=torch.zeros(b, dtype=torch.long, device=device)
            if state.episodic is None
            else state.episodic.count.clone(),
            L_e=self.L_e,
            mode=self.mode,
        )
