"""Attention processors: reference ("bank") attention over diffusers' stock `Attention`, and backend choice.

Reference attention (spec §1.5): in every spatial transformer block of the denoising UNet, self-attention
attends to ``[own tokens; reference tokens]``. The reference tokens' keys and values do not change during a
stream, so they are projected once (`DenoisingUNet.bank_kv`) and cached; the processors here read that
cache instead of projecting ``concat(tokens, bank)`` with ``to_k`` / ``to_v`` on every frame of every pass
(diffusers' stock processors would, at about 0.1 TFLOP per output frame at 512²). Everything else
(queries, the block around it, the output projection) is diffusers' own `BasicTransformerBlock` /
`Attention`.

How the cached K/V reach the processor: the UNet block binds them to the `Attention` module
(``attn.reference_kv``, see `bind_reference_kv`) for the duration of one call of that transformer, and the
processor reads them from ``attn``. They cannot travel in ``cross_attention_kwargs``: the stock
`BasicTransformerBlock` passes those to its cross-attention too, whose stock processor would warn about the
unknown key on every call. Binding inside the (checkpointed) layer call also means a recomputation in the
backward pass sees the same K/V.

Backends: ``"sdpa"`` (default; `ReferenceAttnProcessor2_0` + diffusers' `AttnProcessor2_0`) or ``"xformers"``
(`XFormersReferenceAttnProcessor` + diffusers' `XFormersAttnProcessor`), chosen per model with
``set_attention_backend``; any other processor can be installed with diffusers' ``set_attn_processor``.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, XFormersAttnProcessor
from torch import nn

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionProcessorMixin",
    "ChunkCausalAttnProcessor",
    "ReferenceAttnProcessor2_0",
    "XFormersReferenceAttnProcessor",
    "bind_reference_kv",
    "check_attention_backend",
    "expand_reference_kv",
    "reads_reference_kv",
]

ATTENTION_BACKENDS = ("sdpa", "xformers")
# (K, V), each (n, L, C); or (K, V, valid) with valid (n, L) bool: a preallocated bank of fixed size
# whose unused slots are masked out (the static-shape stream step, `pipeline/keyframes.py`).
ReferenceKV = tuple[torch.Tensor, ...]


def check_attention_backend(name: str) -> str:
    """Return ``name`` if it is a usable backend; ValueError if unknown, RuntimeError if xformers is missing."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {ATTENTION_BACKENDS}")
    if name == "xformers" and importlib.util.find_spec("xformers") is None:
        raise RuntimeError(
            "attention backend 'xformers' was requested but xformers is not installed "
            "(pip install 'personalive[gpu]' or use the default 'sdpa')"
        )
    return name


def expand_reference_kv(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Reference K or V (n, L, C) -> (rows, L, C) for ``rows`` query rows ordered (b, f), frame fastest.

    n = 1: one reference for everything (a broadcast view, no copy). n = b: one reference per batch entry,
    repeated for its ``rows // b`` frames.
    """
    n = t.shape[0]
    if n == 1:
        return t.expand(rows, -1, -1)
    if rows % n:
        raise ValueError(f"reference K/V batch {n} does not divide the {rows} query rows")
    # expand + reshape, not repeat_interleave: the same rows without a data-dependent size (no host sync)
    return t[:, None].expand(n, rows // n, *t.shape[1:]).reshape(rows, *t.shape[1:])


@contextlib.contextmanager
def bind_reference_kv(attn: Attention, kv: ReferenceKV | None) -> Iterator[None]:
    """Make ``kv`` (K, V), each (1 or b, L, C), the cached reference keys/values of ``attn`` for a block."""
    attn.reference_kv = kv
    try:
        yield
    finally:
        attn.reference_kv = None


def _reference_qkv(attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                   attention_mask: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Projected q (B, Lq, C), k/v (B, Lk [+ L_ref], C): the stock projections plus the cached reference;
    and, for a masked bank, which keys may be attended to: (B, Lk + L_ref) bool (None: all of them)."""
    if encoder_hidden_states is None and getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)  # one matrix product (Attention.fuse_projections)
    elif getattr(attn, "fused_projections", False):
        q = attn.to_q(hidden_states)
        k, v = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)
    else:
        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(source), attn.to_v(source)
    kv = getattr(attn, "reference_kv", None)
    keep = None
    if kv is not None:
        if attention_mask is not None:
            raise ValueError("reference attention does not take an attention mask")
        rows = hidden_states.shape[0]
        if len(kv) == 3:  # own tokens always, bank tokens where their slot holds something
            own = torch.ones(rows, k.shape[1], dtype=torch.bool, device=k.device)
            keep = torch.cat([own, expand_reference_kv(kv[2][..., None], rows)[..., 0]], dim=1)
        k = torch.cat([k, expand_reference_kv(kv[0].to(k.dtype), rows)], dim=1)
        v = torch.cat([v, expand_reference_kv(kv[1].to(v.dtype), rows)], dim=1)
    return q, k, v, keep


class ReferenceAttnProcessor2_0:
    """Scaled-dot-product attention whose keys/values are extended by the reference K/V bound to ``attn``.

    Without bound K/V it is plain (self- or cross-) attention, numerically the same as diffusers'
    `AttnProcessor2_0` for our blocks (no masks, group norm or residual inside the attention module).
    """

    reads_reference_kv = True

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (B, Lq, C) -> (B, Lq, C)."""
        q, k, v, keep = _reference_qkv(attn, hidden_states, encoder_hidden_states, attention_mask)
        batch, lq, inner = q.shape
        heads = attn.heads
        d = inner // heads
        mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, Lk): broadcast over heads, queries
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, k.shape[1], batch).view(batch, heads, -1, k.shape[1])
        out = F.scaled_dot_product_attention(
            q.view(batch, lq, heads, d).transpose(1, 2),
            k.view(batch, -1, heads, d).transpose(1, 2),
            v.view(batch, -1, heads, d).transpose(1, 2),
            attn_mask=mask,
            dropout_p=0.0,
            is_causal=False,
        )
        out = out.transpose(1, 2).reshape(batch, lq, inner).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class XFormersReferenceAttnProcessor:
    """`ReferenceAttnProcessor2_0` with xformers' memory-efficient attention (CUDA)."""

    reads_reference_kv = True

    def __init__(self, attention_op: object | None = None) -> None:
        self.attention_op = attention_op

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        import xformers.ops as xops

        if attention_mask is not None:
            raise ValueError("XFormersReferenceAttnProcessor does not take an attention mask")
        q, k, v, keep = _reference_qkv(attn, hidden_states, encoder_hidden_states, None)
        if keep is not None:
            raise ValueError("a masked (static-shape) reference bank needs the sdpa attention backend")
        batch, lq, inner = q.shape
        heads = attn.heads
        d = inner // heads
        out = xops.memory_efficient_attention(
            q.reshape(batch, lq, heads, d).contiguous(),
            k.reshape(batch, -1, heads, d).contiguous(),
            v.reshape(batch, -1, heads, d).contiguous(),
            op=self.attention_op,
            scale=attn.scale,
        ).reshape(batch, lq, inner).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class ChunkCausalAttnProcessor:
    """Temporal self-attention where a frame attends only to the frames of its own chunk and of older chunks
    (the window runs oldest, cleanest chunk first): the paper's "chunk-causal attention" ablation (Table 2;
    PersonaLive itself attends bidirectionally within the window).

    hidden_states (B, f, C) with f the window's frames; ``chunk`` frames per chunk. Scaled dot-product
    attention with a boolean (f, f) mask, otherwise diffusers' `AttnProcessor2_0` (no norms, no residual:
    the temporal attention layers have neither).
    """

    def __init__(self, chunk: int = 4) -> None:
        self.chunk = chunk

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("chunk-causal attention is temporal self-attention: no encoder states, no other mask")
        b, f, _ = hidden_states.shape
        chunks = torch.arange(f, device=hidden_states.device) // self.chunk
        allowed = chunks[None, :] <= chunks[:, None]  # (query frame, key frame)
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k, v = (x.view(b, f, attn.heads, -1).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = out.transpose(1, 2).reshape(b, f, -1).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


class AttentionProcessorMixin:
    """diffusers' ``attn_processors`` / ``set_attn_processor`` (written here: diffusers >= 0.27 only has them
    on its own model classes), plus ``set_attention_backend``.

    A model lists the attention layers that read reference K/V in ``reference_attention_names()``; those
    get the reference processors by default, every other `Attention` diffusers' stock ones.
    """

    attention_backend: str = "sdpa"

    def reference_attention_names(self) -> list[str]:
        """Module paths of the `Attention` layers that read cached reference K/V (none by default)."""
        return []

    def _attention_layers(self) -> dict[str, Attention]:
        return {name: m for name, m in self.named_modules() if isinstance(m, Attention)}

    @property
    def attn_processors(self) -> dict[str, object]:
        """{"<module path>.processor": processor} for every `Attention` layer, in module order."""
        return {f"{name}.processor": m.processor for name, m in self._attention_layers().items()}

    def set_attn_processor(self, processor: object | dict[str, object]) -> None:
        """One processor for every `Attention` layer, or a dict keyed like ``attn_processors`` (all keys)."""
        layers = self._attention_layers()
        if isinstance(processor, dict):
            keys = {f"{name}.processor" for name in layers}
            if set(processor) != keys:
                missing, extra = sorted(keys - set(processor)), sorted(set(processor) - keys)
                raise ValueError(f"processor dict must name every attention layer (missing {missing[:3]}, "
                                 f"unknown {extra[:3]})")
            for name, m in layers.items():
                m.set_processor(processor[f"{name}.processor"])
        else:
            for m in layers.values():
                m.set_processor(processor)

    def set_attention_backend(self, name: str) -> None:
        """"sdpa" (default, any device) or "xformers" (CUDA; RuntimeError if it is not installed): the
        reference processors on ``reference_attention_names()``, diffusers' stock ones elsewhere."""
        check_attention_backend(name)
        reference = set(self.reference_attention_names())
        if name == "xformers":
            ref_proc, plain_proc = XFormersReferenceAttnProcessor(), XFormersAttnProcessor()
        else:
            ref_proc, plain_proc = ReferenceAttnProcessor2_0(), AttnProcessor2_0()
        self.set_attn_processor({f"{n}.processor": ref_proc if n in reference else plain_proc
                                 for n in self._attention_layers()})
        self.attention_backend = name

    def set_default_attn_processor(self) -> None:
        """The SDPA backend (diffusers' name for "back to the defaults")."""
        self.set_attention_backend("sdpa")


def reads_reference_kv(module: nn.Module) -> bool:
    """Whether ``module`` (an `Attention`) has a processor that uses bound reference K/V."""
    return bool(getattr(getattr(module, "processor", None), "reads_reference_kv", False))
