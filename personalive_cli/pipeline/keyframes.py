"""The Historical Keyframe Mechanism's state: the motion bank and the attention K/V of the reference and
its keyframes, kept in buffers of their final size.

Slot 0 of every buffer holds the reference, slots 1.. the keyframes in the order they were added. Two
ways to use the same buffers:

* **static** (``static=True``): every tensor keeps its shape for the whole stream. The attention reads
  all slots, with a mask of the filled ones; the keyframe test and the write of a new keyframe happen on
  the device (``torch.where`` on the verdict), so a stream step never waits for the device: what CUDA
  graphs and several streams batched into one pass need.
* **dynamic**: the verdict is read on the host and attention reads only the filled slots (no masked
  work, the cheaper choice on the CPU, where reading a value costs nothing). Only this mode can grow past
  its capacity, which the official code's sticky keyframe flag and unbounded motion bank need.

Both give the same keyframes and the same attention (masked slots get exactly zero weight).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

KV = tuple[torch.Tensor, torch.Tensor]


class KeyframeBank:
    """Reference + keyframe attention K/V and the motion bank of ``b`` streams.

    reference_kv: {block: (K, V)}, each (b, L, C), from `DenoisingUNet.bank_kv`. ``capacity``: keyframes
    kept at most (the static buffers hold exactly that many; the dynamic ones grow when asked to).
    """

    def __init__(self, reference_kv: Mapping[str, KV], capacity: int, static: bool):
        k0 = next(iter(reference_kv.values()))[0]
        self.batch = k0.shape[0]
        self.tokens = {name: k.shape[1] for name, (k, _) in reference_kv.items()}  # L of each block
        self.capacity, self.static = capacity, static
        slots = 1 + capacity
        self.kv = {}
        for name, (k, v) in reference_kv.items():
            kbuf = k.new_zeros(k.shape[0], slots * k.shape[1], k.shape[2])
            vbuf = v.new_zeros(v.shape[0], slots * v.shape[1], v.shape[2])
            kbuf[:, : k.shape[1]], vbuf[:, : v.shape[1]] = k, v
            self.kv[name] = (kbuf, vbuf)
        device = k0.device
        self.filled = torch.zeros(self.batch, slots, dtype=torch.bool, device=device)  # (b, 1 + capacity)
        self.filled[:, 0] = True
        self.count = torch.zeros(self.batch, dtype=torch.long, device=device)        # keyframes per stream
        self.motions: torch.Tensor | None = None       # (b, 1 + m, D) float32, set by start_motions
        self.motion_filled: torch.Tensor | None = None  # (b, 1 + m) bool
        self.motion_count: torch.Tensor | None = None   # (b,) long
        self.num_keyframes = 0  # dynamic mode: the host's count (b = 1)
        self.num_motions = 1

    @classmethod
    def stack(cls, banks: list[KeyframeBank]) -> KeyframeBank:
        """One bank of all of ``banks``' streams (static ones, motions started), batch entries in order."""
        if not all(b.static and b.motions is not None for b in banks):
            raise ValueError("only static banks whose motion bank has started can be stacked")
        out = cls.__new__(cls)
        out.__dict__.update(banks[0].__dict__)
        out.batch = sum(b.batch for b in banks)
        out.kv = {name: tuple(torch.cat([b.kv[name][i] for b in banks]) for i in range(2)) for name in banks[0].kv}
        for attr in ("filled", "count", "motions", "motion_filled", "motion_count"):
            setattr(out, attr, torch.cat([getattr(b, attr) for b in banks]))
        return out

    # -------------------------------------------------------------------------------------------------
    # motion bank

    def start_motions(self, reference_motion: torch.Tensor) -> None:
        """The bank's first entry: the reference's motion tokens, flattened (b, D)."""
        m = reference_motion.float()
        self.motions = m.new_zeros(self.batch, 1 + self.capacity, m.shape[-1])
        self.motions[:, 0] = m
        self.motion_filled = torch.zeros(self.batch, 1 + self.capacity, dtype=torch.bool, device=m.device)
        self.motion_filled[:, 0] = True
        self.motion_count = torch.zeros(self.batch, dtype=torch.long, device=m.device)

    def distance(self, candidate: torch.Tensor) -> torch.Tensor:
        """L2 distance of each stream's candidate (b, D) to the nearest motion in its bank: (b,)."""
        if self.static:
            d = torch.cdist(candidate.float()[:, None], self.motions)[:, 0]  # (b, 1 + m)
            return d.masked_fill(~self.motion_filled, float("inf")).amin(dim=1)
        return torch.cdist(candidate.float()[:, None], self.motions[:, : self.num_motions])[:, 0].amin(dim=1)

    def has_room(self) -> torch.Tensor:
        """(b,) bool: room for another keyframe."""
        return self.count < self.capacity

    # -------------------------------------------------------------------------------------------------
    # adding a keyframe

    def add_motion(self, candidate: torch.Tensor, verdict: torch.Tensor | bool) -> None:
        """Append the candidate motion (b, D) where ``verdict`` (b,) says so (dynamic: a host bool)."""
        if self.static:
            slot = (self.motion_count + 1).clamp(max=self.capacity)
            write = verdict & (self.motion_count < self.capacity)
            _write_slot(self.motions, slot, 1, candidate.float(), write)
            self.motion_filled |= _one_hot(slot, 1 + self.capacity) & write[:, None]
            self.motion_count += write.long()
        elif verdict:
            if self.num_motions == self.motions.shape[1]:
                self.motions = torch.cat([self.motions, torch.zeros_like(self.motions)], dim=1)
            self.motions[:, self.num_motions] = candidate.float()
            self.num_motions += 1

    def add_keyframe(self, kv: Mapping[str, KV], verdict: torch.Tensor | bool) -> None:
        """Store a keyframe's K/V ({block: (K, V)}, each (b, L, C)) in the next slot where ``verdict`` (b,)
        says so and there is room (dynamic: a host bool; the buffers grow when full)."""
        if self.static:
            slot = (self.count + 1).clamp(max=self.capacity)
            write = verdict & self.has_room()
            for name, (k, v) in kv.items():
                kbuf, vbuf = self.kv[name]
                _write_slot(kbuf, slot, self.tokens[name], k, write)
                _write_slot(vbuf, slot, self.tokens[name], v, write)
            self.filled |= _one_hot(slot, 1 + self.capacity) & write[:, None]
            self.count += write.long()
            return
        if not verdict:
            return
        for name, (k, v) in kv.items():
            kbuf, vbuf = self.kv[name]
            used = (1 + self.num_keyframes) * self.tokens[name]
            if used == kbuf.shape[1]:  # past the capacity: only the official sticky flag gets here
                kbuf, vbuf = torch.cat([kbuf, torch.zeros_like(kbuf)], 1), torch.cat([vbuf, torch.zeros_like(vbuf)], 1)
                self.kv[name] = (kbuf, vbuf)
            kbuf[:, used: used + k.shape[1]] = k
            vbuf[:, used: used + v.shape[1]] = v
        self.num_keyframes += 1
        self.count += 1

    # -------------------------------------------------------------------------------------------------
    # reading

    def attention_kv(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """What the denoising UNet's reference attention reads: static: {block: (K, V, valid)} with every
        slot and valid (b, slots * L) bool; dynamic: {block: (K, V)} of the filled slots only."""
        if self.static:
            b, slots = self.filled.shape  # each slot's flag for its L tokens (expand: no data-dependent size)
            valid = {n: self.filled[:, :, None].expand(b, slots, n).reshape(b, slots * n)
                     for n in set(self.tokens.values())}
            return {name: (k, v, valid[self.tokens[name]]) for name, (k, v) in self.kv.items()}
        used = 1 + self.num_keyframes
        return {name: (k[:, : used * self.tokens[name]], v[:, : used * self.tokens[name]])
                for name, (k, v) in self.kv.items()}

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the state (for measuring its size)."""
        out = [t for pair in self.kv.values() for t in pair] + [self.filled, self.count]
        if self.motions is not None:
            out += [self.motions, self.motion_filled, self.motion_count]
        return out


def _write_slot(buffer: torch.Tensor, slot: torch.Tensor, width: int, value: torch.Tensor,
                write: torch.Tensor) -> None:
    """buffer (b, slots * width, ...)[:, slot * width: (slot + 1) * width] = value (b, width, ...) for the rows
    where ``write`` (b,) holds, on the device (no host sync): gather the old rows, choose, scatter back."""
    b = buffer.shape[0]
    index = (slot[:, None] * width + torch.arange(width, device=buffer.device)[None])  # (b, width)
    index = index.view(b, width, *([1] * (buffer.ndim - 2))).expand(b, width, *buffer.shape[2:])
    value = value.to(buffer.dtype).reshape(b, width, *buffer.shape[2:])
    old = buffer.gather(1, index)
    keep = write.view(b, *([1] * (buffer.ndim - 1)))
    buffer.scatter_(1, index, torch.where(keep, value, old))


def _one_hot(index: torch.Tensor, n: int) -> torch.Tensor:
    """(b,) -> (b, n) bool; `F.one_hot` would check the indices' range on the host."""
    return torch.arange(n, device=index.device)[None] == index[:, None]
