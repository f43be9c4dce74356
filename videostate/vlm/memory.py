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
reset independently, with no Python loop over videos. The memories of :class:`DualMemoryModule` also
keep each entry's key and value projections, computed once when it is stored (reading a memory then
costs one query projection and the attention itself). Memory is bounded: ``L_w + L_e`` frames per
video, ``3 · (L_w + L_e) · tokens · dim`` numbers with the caches.

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
from einops import rearrange
from torch import nn

from ..ssm.state import StreamState

MEMORY_MODES = ("dual", "working_only", "episodic_only")


@dataclasses.dataclass
class MemoryBank(StreamState):
    """A batch of fixed-capacity memories.

    Attributes:
        slots: ``(batch, capacity, tokens, dim)``; entry ``i < count[b]`` of video ``b`` is valid, in
            insertion order (oldest first), the rest is zero padding.
        count: ``(batch,)`` long, the number of valid entries of each video.
        keys, values: ``(batch, capacity, tokens, dim)`` the entries projected by the key and value
            weights of the attention that reads this memory, computed once when an entry is stored (the
            memories of :class:`DualMemoryModule`), or ``None`` (plain memories).
    """

    slots: torch.Tensor
    count: torch.Tensor
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None

    @classmethod
    def empty(
        cls, batch_size: int, capacity: int, tokens: int, dim: int, *, device=None, dtype=None, cached: bool = False
    ) -> MemoryBank:
        """An empty memory; ``cached`` adds the ``keys``/``values`` projections."""
        if capacity < 1:
            raise ValueError(f"memory capacity must be at least 1; got {capacity}")

        def zeros():
            return torch.zeros(batch_size, capacity, tokens, dim, device=device, dtype=dtype)

        count = torch.zeros(batch_size, dtype=torch.long, device=device)
        return cls(slots=zeros(), count=count, keys=zeros() if cached else None, values=zeros() if cached else None)

    @property
    def capacity(self) -> int:
        return self.slots.shape[1]

    def valid(self) -> torch.Tensor:
        """``(batch, capacity)`` bool: which slots hold an entry."""
        positions = torch.arange(self.capacity, device=self.slots.device)
        return positions[None, :] < self.count[:, None]

    def entries(self, index: int) -> torch.Tensor:
        """The valid entries of video ``index``, oldest first: ``(count, tokens, dim)``."""
        return self.slots[index, : int(self.count[index])]

    def per_slot(self) -> dict[str, torch.Tensor]:
        """The tensors indexed by slot (``slots`` and, when cached, ``keys`` and ``values``)."""
        return {name: t for name in ("slots", "keys", "values") if (t := getattr(self, name)) is not None}


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


def _append(
    fields: dict[str, torch.Tensor],
    count: torch.Tensor,
    x: torch.Tensor,
    cache: tuple[torch.Tensor, torch.Tensor] | None,
    active: torch.Tensor,
) -> MemoryBank:
    """Write ``x`` (and its cache) at position ``count`` of each active video (``count < capacity``)."""
    capacity = fields["slots"].shape[1]
    # a comparison, not F.one_hot: one_hot checks its indices on the host, a device sync on every frame
    slot = torch.arange(capacity, device=count.device) == count.clamp(max=capacity - 1)[:, None]
    write = (slot & active[:, None])[:, :, None, None]
    new = {"slots": x} if cache is None else {"slots": x, "keys": cache[0], "values": cache[1]}
    out = {name: torch.where(write, new[name][:, None], t) for name, t in fields.items()}
    return MemoryBank(count=count + active.long(), **out)


def fifo_update(
    bank: MemoryBank,
    x: torch.Tensor,
    active: torch.Tensor | None = None,
    cache: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> MemoryBank:
    """Algorithm 1, lines 8-14: append ``x (batch, tokens, dim)``; a full memory first drops its oldest.

    ``active (batch,)`` bool leaves the memories of inactive videos untouched (their video has no frame
    at this step). ``cache``: the new entry's ``(keys, values)`` for a memory that caches them.
    """
    active = _check_update(bank, x, active, cache)
    full = ((bank.count >= bank.capacity) & active)[:, None, None, None]
    fields = {name: torch.where(full, t.roll(-1, dims=1), t) for name, t in bank.per_slot().items()}
    return _append(fields, bank.count - full.flatten().long(), x, cache, active)


def cosine_similarity(x: torch.Tensor, slots: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``cos(x_b, slots_{b,i})`` over whole frames: ``x (batch, tokens, dim)``, ``slots (batch, L, tokens, dim)``
    → ``(batch, L)``. A zero vector has similarity 0 with everything."""
    x_flat = rearrange(x, "b n d -> b 1 (n d)")
    s_flat = rearrange(slots, "b l n d -> b l (n d)")
    dot = (x_flat * s_flat).sum(-1)
    norms = x_flat.norm(dim=-1) * s_flat.norm(dim=-1)
    return dot / norms.clamp_min(eps)


def similarity_replace_update(
    bank: MemoryBank,
    x: torch.Tensor,
    active: torch.Tensor | None = None,
    cache: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> MemoryBank:
    """Algorithm 1, lines 15-24: append ``x``; a full memory first deletes the entry most similar to it.

    The deleted entry's successors move up one place, so entries stay in insertion order.
    """
    active = _check_update(bank, x, active, cache)
    full = (bank.count >= bank.capacity) & active
    capacity = bank.capacity
    most_similar = cosine_similarity(x, bank.slots).argmax(dim=1)  # (batch,): i* of lines 15-24
    # gather map that closes the gap at most_similar: position p reads p + (p >= i*), the last slot is freed
    positions = torch.arange(capacity, device=x.device)[None, :]
    source = (positions + (positions >= most_similar[:, None]).long()).clamp(max=capacity - 1)
    source = torch.where(full[:, None], source, positions)
    index = source[:, :, None, None].expand_as(bank.slots)
    fields = {name: t.gather(1, index) for name, t in bank.per_slot().items()}
    return _append(fields, bank.count - full.long(), x, cache, active)


class WorkingMemory:
    """Sliding-window memory of the ``L_w`` most recent frames (FIFO), for a batch of videos.

    ``update(H_t)`` appends ``H_t (batch, tokens, dim)``, dropping the oldest entry when full;
    ``get_buffer()`` returns ``(slots (batch, L_w, tokens, dim), valid (batch, L_w))``; ``clear()`` empties it.
    The memory takes its batch size, token count, dtype and device from the first update.
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
        return self.bank.slots, self.bank.valid()

    def clear(self) -> None:
        self.bank = None

    def __len__(self) -> int:
        """Entries of the fullest video (0 when empty)."""
        return 0 if self.bank is None else int(self.bank.count.max())


class EpisodicMemory(WorkingMemory):
    """Long-term memory of ``L_e`` frames with similarity-based replacement, for a batch of videos.

    ``update(M_t)`` appends ``M_t (batch, tokens, dim)``; when full it first deletes the stored entry with
    the highest cosine similarity to ``M_t`` (``_compute_similarity``), so the memory keeps diverse frames.
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
        """Empty memories for ``batch_size`` videos of ``tokens`` tokens per frame (with key/value caches);
        a memory the mode does not keep is ``None``."""

        def bank(capacity: int) -> MemoryBank | None:
            if not capacity:
                return None
            return MemoryBank.empty(batch_size, capacity, tokens, self.dim, device=device, dtype=dtype, cached=True)

        return DualMemoryState(working=bank(self.L_w), episodic=bank(self.L_e))

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

    def retrieve(
        self,
        attention: nn.MultiheadAttention,
        H_t: torch.Tensor,
        bank: MemoryBank,
        used: int | None = None,
        dense: bool = False,
    ) -> torch.Tensor:
        """``attention`` with queries ``H_t (batch, tokens, dim)`` over every token of the valid entries,
        reading the bank's cached keys and values.

        ``used``: a bound on every video's entry count (slots past it are empty), so the attention skips
        them; ``None`` reads all ``capacity`` slots. ``dense``: every video holds exactly ``used`` entries,
        so no mask is needed. Videos whose memory is empty read exactly zero.
        """
        if bank.keys is None:
            raise ValueError("DualMemoryModule reads memories with cached keys/values; make them with init_state")
        used = bank.capacity if used is None else max(1, min(used, bank.capacity))
        heads = attention.num_heads
        query = rearrange(self.project(attention, H_t, 0), "b n (h e) -> b h n e", h=heads)
        keys = rearrange(bank.keys[:, :used], "b l n (h e) -> b h (l n) e", h=heads)
        values = rearrange(bank.values[:, :used], "b l n (h e) -> b h (l n) e", h=heads)
        dropout = attention.dropout if self.training else 0.0
        if dense:
            out = F.scaled_dot_product_attention(query, keys, values, dropout_p=dropout)
            return attention.out_proj(rearrange(out, "b h n e -> b n (h e)"))
        valid = bank.valid()[:, :used]
        empty = ~valid.any(dim=1)
        # an all-masked row would give NaN (and NaN gradients through where); unmask one zero slot instead
        valid = valid | (empty[:, None] & (torch.arange(used, device=valid.device) == 0))
        mask = valid.repeat_interleave(bank.slots.shape[2], dim=1)[:, None, None, :]
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, dropout_p=dropout)
        out = attention.out_proj(rearrange(out, "b h n e -> b n (h e)"))
        return out.masked_fill(empty[:, None, None], 0.0)

    def forward(
        self,
        H_t: torch.Tensor,
        W_t: MemoryBank,
        E_t: MemoryBank,
        active: torch.Tensor | None = None,
        used: tuple[int, int] | None = None,
        dense: bool = False,
    ) -> tuple[torch.Tensor, MemoryBank, MemoryBank]:
        """One frame of Algorithm 1.

        Args:
            H_t: ``(batch, tokens, dim)`` features of frame ``t`` of each video.
            W_t, E_t: the memories before frame ``t`` (from :meth:`init_state` and earlier calls); ``None``
                for a memory the mode does not keep (returned as ``None``).
            active: ``(batch,)`` bool, videos that have a frame ``t`` (default all); the memories of the
                others are left as they are and their ``M_t`` is zero.
            used: bounds ``(working, episodic)`` on the entry counts, known to the caller without reading
                the device (:meth:`forward_video` tracks them); retrieval skips the slots past them.
            dense: every video holds exactly ``used`` entries in both memories (attention without a mask).

        Returns:
            ``(M_t (batch, tokens, dim), W_{t+1}, E_{t+1})``.
        """
        self.check_state(W_t, E_t)
        M_t, W_next, E_next, _ = self._step(H_t, W_t, E_t, active, used, dense)
        return M_t, W_next, E_next

    def _step(self, H_t, W_t, E_t, active, used, dense):
        """:meth:`forward` plus ``(γ_t, M^w_t, M^e_t)``, each ``None`` where the mode lacks it."""
        if H_t.dim() != 3 or H_t.shape[-1] != self.dim:
            raise ValueError(f"H_t must have shape (batch, tokens, {self.dim}); got {tuple(H_t.shape)}")
        used_w, used_e = (None, None) if used is None else used
        M_w = M_e = gamma = None
        if self.uses_working:
            dense_w = dense and used_w is not None and used_w > 0
            M_w = self.retrieve(self.working_attention, H_t, W_t, used_w, dense_w)
        if self.uses_episodic:
            dense_e = dense and used_e is not None and used_e > 0
            M_e = self.retrieve(self.episodic_attention, H_t, E_t, used_e, dense_e)
        if self.mode == "dual":
            gamma = torch.sigmoid(self.gate(torch.cat([M_w, M_e], dim=-1)))
            M_t = gamma * M_w + (1 - gamma) * M_e
        else:
            M_t = M_w if self.uses_working else M_e
        if active is not None:
            M_t = M_t.masked_fill(~active[:, None, None], 0.0)
        W_next = E_next = None
        if self.uses_working:
            W_next = fifo_update(W_t, H_t, active, self.cache(self.working_attention, H_t))
        if self.uses_episodic:
            E_next = similarity_replace_update(E_t, M_t, active, self.cache(self.episodic_attention, M_t))
        return M_t, W_next, E_next, (gamma, M_w, M_e)

    def forward_video(
        self,
        features: torch.Tensor,
        state: DualMemoryState | None = None,
        num_frames: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DualMemoryState]:
        """Run Algorithm 1 over the frames of a batch of videos and add the memory as a residual.

        Args:
            features: ``(batch, frames, tokens, dim)``.
            state: memories carried from earlier frames of the same videos; ``None`` starts empty.
            num_frames: ``(batch,)`` long, the real length of each video when shorter videos are padded
                at the end (default: all ``frames``). Padded frames are neither read nor stored, and
                their output equals their input.

        Returns:
            ``(features + M, next_state)``: enhanced features ``(batch, frames, tokens, dim)``, and the
            memories after the last frame. Running a video in chunks with the carried state gives the
            same output as one pass.
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

    def _run(self, features, state, num_frames, trace: bool):
        if features.dim() != 4 or features.shape[-1] != self.dim:
            raise ValueError(
                f"features must have shape (batch, frames, tokens, {self.dim}); got {tuple(features.shape)}"
            )
        b, t, n, _ = features.shape
        fresh = state is None
        if fresh:
            state = self.init_state(b, n, device=features.device, dtype=features.dtype)
        else:
            self.check_state(state.working, state.episodic)
            for bank in state.banks():
                if tuple(bank.slots.shape[::2]) != (b, n):
                    raise ValueError(
                        f"memory state is for (batch, tokens)={tuple(bank.slots.shape[::2])}; "
                        f"features have (batch, tokens)=({b}, {n})"
                    )
        if num_frames is not None:
            if num_frames.dtype != torch.long or tuple(num_frames.shape) != (b,):
                raise ValueError(
                    f"num_frames must be a long tensor of shape (batch,)=({b},); "
                    f"got dtype {num_frames.dtype}, shape {tuple(num_frames.shape)}"
                )
            if bool((num_frames < 0).any()) or bool((num_frames > t).any()):
                raise ValueError(f"num_frames must lie in [0, {t}]; got {num_frames.tolist()}")
        W, E = state.working, state.episodic
        episodic_before = torch.zeros(b, dtype=torch.long, device=features.device) if E is None else E.count.clone()
        # entries already stored: read once here, so the frame loop never waits on the device
        stored = 0 if fresh else int(max(bank.count.max() for bank in state.banks()))
        # fresh memories of videos without padding all hold min(i, capacity) entries at frame i
        dense = fresh and num_frames is None
        outputs, records = [], []
        for i in range(t):
            active = None if num_frames is None else num_frames > i
            used = (min(stored + i, self.L_w), min(stored + i, self.L_e))
            if trace:
                records.append(self._trace_frame(features[:, i], W, E, active))
            M_t, W, E, extras = self._step(features[:, i], W, E, active, used, dense)
            if trace:
                records[-1].update(memory=M_t, extras=extras)
            outputs.append(features[:, i] + M_t)
        enhanced = torch.stack(outputs, dim=1) if outputs else features
        next_state = DualMemoryState(working=W, episodic=E)
        if not trace:
            return enhanced, next_state, None
        return enhanced, next_state, self._collect_trace(records, features, episodic_before)

    @staticmethod
    def _trace_frame(H_t, W, E, active) -> dict:
        on = torch.ones(H_t.shape[0], dtype=torch.bool, device=H_t.device) if active is None else active
        held = torch.zeros_like(on)
        for bank in (W, E):
            if bank is not None:
                held = held | (bank.count > 0)
        return {"active": on, "read": on & held, "E": E}

    def _collect_trace(self, records: list[dict], features: torch.Tensor, episodic_before) -> MemoryTrace:
        b, _, n, d = features.shape
        if not records:
            empty = features.new_zeros(b, 0)
            return MemoryTrace(
                memory=features.new_zeros(b, 0, n, d),
                gate=empty,
                working_norm=empty,
                episodic_norm=empty,
                replaced=torch.zeros(b, 0, dtype=torch.long, device=features.device),
                replaced_similarity=empty,
                read=torch.zeros(b, 0, dtype=torch.bool, device=features.device),
                active=torch.zeros(b, 0, dtype=torch.bool, device=features.device),
                episodic_before=episodic_before,
                L_e=self.L_e,
                mode=self.mode,
            )

        def norm(M, active):
            if M is None:  # a memory the mode does not keep
                return torch.full(active.shape, float("nan"), dtype=features.dtype, device=features.device)
            return M.detach().norm(dim=-1).mean(dim=1).masked_fill(~active, 0.0)

        gate, w_norm, e_norm, replaced, similarity = [], [], [], [], []
        for r in records:
            gamma, M_w, M_e = r["extras"]
            active, E, M_t = r["active"], r["E"], r["memory"]
            if gamma is None:  # no gate: γ is 1 (working only) or 0 (episodic only)
                gate.append(active.to(features.dtype) * float(self.uses_working))
            else:
                gate.append(gamma.mean(dim=(1, 2)).masked_fill(~active, 0.0))
            w_norm.append(norm(M_w, active))
            e_norm.append(norm(M_e, active))
            if E is None:
                replaced.append(torch.full_like(active, -1, dtype=torch.long))
                similarity.append(torch.full(active.shape, float("nan"), dtype=features.dtype, device=active.device))
                continue
            sims = cosine_similarity(M_t.detach(), E.slots.detach())
            best, index = sims.max(dim=1)
            full = (E.count >= E.capacity) & active
            replaced.append(torch.where(full, index, -1))
            similarity.append(torch.where(full, best, float("nan")))
        return MemoryTrace(
            memory=torch.stack([r["memory"] for r in records], dim=1),
            gate=torch.stack(gate, dim=1),
            working_norm=torch.stack(w_norm, dim=1),
            episodic_norm=torch.stack(e_norm, dim=1),
            replaced=torch.stack(replaced, dim=1),
            replaced_similarity=torch.stack(similarity, dim=1),
            read=torch.stack([r["read"] for r in records], dim=1),
            active=torch.stack([r["active"] for r in records], dim=1),
            episodic_before=episodic_before,
            L_e=self.L_e,
            mode=self.mode,
        )
