"""The Stage II/III discriminator: StyleGAN2's "resnet" discriminator with PersonaLive's timestep input.

Architecture (StyleGAN2-ADA, Karras et al. 2020, as used by the official training code, training.md §6):

* one block per resolution R, R/2, ..., 8 (``b512`` ... ``b8`` at 512²); block ``b{r}`` maps
  ``ch(r)`` to ``ch(r/2)`` channels with ``ch(r) = min(channel_base // r, channel_max)``: a 1x1 ``fromrgb``
  (first block only), ``conv0`` (3x3), ``conv1`` (3x3, 2x down) and a residual ``skip`` (1x1, 2x down, no
  bias), the two paths each scaled by sqrt(1/2);
* the 4x4 epilogue ``b4``: minibatch standard deviation (group 4, 1 channel), ``conv`` (3x3), ``fc`` to
  ``ch(4)`` and ``out`` to one logit; no class conditioning;
* equalised learning rate everywhere: weights are stored N(0, 1) and scaled by 1/sqrt(fan_in) on use;
  leaky ReLU (0.2) multiplied by sqrt(2) after every convolution except ``skip``; downsampling low-passes
  with the FIR filter [1, 3, 3, 1] (outer product, normalised);
* timestep conditioning (the official code's addition, not in the paper): sinusoidal embedding of t
  (``temb_channels``, cos first) -> ``time_embedding`` MLP -> SiLU -> per block a zero-initialised linear
  ``time_emb_proj[i]`` to the block's output channels, added to its output. At initialisation D(x, t)
  therefore does not depend on t at all; the projections learn from the first step on.

Everything is plain PyTorch (the NVlabs CUDA kernels have exact reference equivalents), fp32, and runs on
the CPU. State-dict keys follow NVlabs' ``training/networks.py`` (``b512.fromrgb.weight``,
``b512.conv1.resample_filter``, ..., ``b4.out.bias``) plus ``time_embedding.linear_{1,2}.*`` and
``time_emb_proj.{i}.*``, so the official ``stylegan2_discriminator_ffhq512.pth`` loads (`load_discriminator`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from personalive_cli.errors import UserError
from personalive_cli.models.modeling_utils import (
    CheckpointedModule,
    PersonaLiveModelMixin,
    accepts_config_dataclass,
)

__all__ = ["Discriminator", "DiscriminatorConfig", "load_discriminator"]

logger = logging.getLogger(__name__)

FFHQ_FILENAME = "stylegan2_discriminator_ffhq512.pth"
RESAMPLE_TAPS = (1.0, 3.0, 3.0, 1.0)
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
RESIDUAL_GAIN = math.sqrt(0.5)  # both residual paths, so their sum keeps unit variance
TIMESTEP_PREFIXES = ("time_embedding.", "time_emb_proj.")
SAVED_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # save_pretrained's


@dataclass(frozen=True)
class DiscriminatorConfig:
    """The discriminator's architecture. Defaults: the official one (FFHQ-512: 28,982,849 StyleGAN2
    parameters plus 2,035,584 in the timestep layers)."""

    resolution: int = 512  # input images are (n, img_channels, resolution, resolution)
    img_channels: int = 3
    channel_base: int = 32768  # width at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    temb_channels: int = 512  # sinusoidal timestep embedding width (and its MLP's)
    mbstd_group_size: int = 4  # images per minibatch-stddev group (the batch must divide into groups)
    mbstd_num_channels: int = 1  # 0 disables the layer
    conv_clamp: float | None = None  # clamp conv outputs to +-conv_clamp; the official D uses none

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.resolution & (self.resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {self.resolution}")
        if min(self.img_channels, self.channel_base, self.channel_max, self.temb_channels,
               self.mbstd_group_size) < 1 or self.mbstd_num_channels < 0:
            raise ValueError(f"invalid discriminator config {self}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        """Resolutions of the blocks before the 4x4 epilogue: R, R/2, ..., 8."""
        return tuple(2 ** i for i in range(int(math.log2(self.resolution)), 2, -1))

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    @classmethod
    def tiny(cls) -> DiscriminatorConfig:
        """64², widths 8..32, a 32-d timestep embedding: the same code path for tests."""
        return cls(resolution=64, channel_base=512, channel_max=32, temb_channels=32)


# ------------------------------------------------------------------------------------------------ ops


def _resample_filter() -> torch.Tensor:
    """The 4x4 low-pass filter: outer product of [1, 3, 3, 1], summing to 1 (NVlabs' ``setup_filter``)."""
    taps = torch.tensor(RESAMPLE_TAPS, dtype=torch.float32)
    f = torch.outer(taps, taps)
    return f / f.sum()


def _fir(x: torch.Tensor, f: torch.Tensor, pad: int, down: int = 1) -> torch.Tensor:
    """Zero-pad by ``pad``, convolve every channel with ``f``, keep every ``down``-th pixel.

    A true convolution (the filter is flipped), like NVlabs' ``upfirdn2d``; the strided depthwise conv2d
    equals filtering then subsampling.
    """
    c = x.shape[1]
    w = f.flip((0, 1)).to(x.dtype)[None, None].expand(c, 1, *f.shape)
    return F.conv2d(F.pad(x, (pad, pad, pad, pad)), w, stride=down, groups=c)


def _bias_act(x: torch.Tensor, bias: torch.Tensor | None, activation: str, gain: float,
              clamp: float | None) -> torch.Tensor:
    """Bias, then the activation, then the gain, then the clamp, in NVlabs' ``bias_act`` order."""
    if bias is not None:
        x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class _Conv(nn.Module):
    """Equalised-lr conv (NVlabs' ``Conv2dLayer``), optionally 2x down through the FIR filter.

    Keys: ``weight`` (out, in, k, k), ``bias`` (out) when ``bias``, ``resample_filter`` (4, 4).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", _resample_filter())
        self.kernel_size = kernel_size
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        f = self.resample_filter
        k = self.kernel_size
        if self.down == 1:
            x = F.conv2d(x, w, padding=k // 2)
        elif k == 1:
            # 1x1: filter-and-subsample first (cheaper), then the pointwise conv. The padding keeps
            # the output at exactly H/down for the 4-tap filter.
            x = F.conv2d(_fir(x, f, pad=(f.shape[0] - self.down + 1) // 2, down=self.down), w)
        else:
            # kxk: filter once with the conv's own padding folded in, then a strided conv.
            x = F.conv2d(_fir(x, f, pad=k // 2 + (f.shape[0] - self.down + 1) // 2), w, stride=self.down)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return _bias_act(x, self.bias, self.activation, self.act_gain * gain, clamp)


class _Linear(nn.Module):
    """Equalised-lr fully connected layer (NVlabs' ``FullyConnectedLayer``, lr multiplier 1)."""

    def __init__(self, in_features: int, out_features: int, activation: str = "linear") -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_gain = 1.0 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain)
        gain = LRELU_GAIN if self.activation == "lrelu" else 1.0
        return _bias_act(x, self.bias, self.activation, gain, None)


class _Block(CheckpointedModule):
    """``b{res}``: (n, ch_in, res, res) -> (n, ch_out, res/2, res/2), residual. The first block takes the
    image through ``fromrgb`` instead."""

    def __init__(self, in_channels: int, out_channels: int, img_channels: int, first: bool,
                 conv_clamp: float | None) -> None:
        super().__init__()
        # Unused by the resnet layout, but a key of NVlabs' state dict (its 'skip' layout downsamples
        # the image with it).
        self.register_buffer("resample_filter", _resample_filter())
        if first:
            self.fromrgb = _Conv(img_channels, in_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = _Conv(in_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = _Conv(in_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = _Conv(in_channels, out_channels, 1, bias=False, down=2)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "fromrgb"):
            x = self.fromrgb(x)
        y = self.skip(x, gain=RESIDUAL_GAIN)
        x = self.conv1(self.conv0(x), gain=RESIDUAL_GAIN)
        return y + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.checkpointed(self._forward, x)


class _MinibatchStd(nn.Module):
    """Appends the mean (over channels and pixels) standard deviation across a group of images as extra
    channels: a discriminator can then see a lack of variety in a batch.

    Group members are images i, i + n/G, i + 2n/G, ... (a reshape of the batch into (G, n/G)).
    """

    def __init__(self, group_size: int, num_channels: int) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g:
            raise ValueError(f"the discriminator's minibatch-stddev layer needs a batch divisible by {g} "
                             f"(group size {self.group_size}), got {n} images")
        nf = self.num_channels
        y = x.reshape(g, -1, nf, c // nf, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # (n/g, nf)
        y = y.reshape(-1, nf, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class _Epilogue(nn.Module):
    """``b4``: (n, ch, 4, 4) -> (n, 1) logits."""

    def __init__(self, channels: int, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        nf = cfg.mbstd_num_channels
        self.mbstd = _MinibatchStd(cfg.mbstd_group_size, nf) if nf > 0 else None
        self.conv = _Conv(channels + nf, channels, 3, activation="lrelu", conv_clamp=cfg.conv_clamp)
        self.fc = _Linear(channels * 4 * 4, channels, activation="lrelu")
        self.out = _Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        return self.out(self.fc(self.conv(x).flatten(1)))


# ------------------------------------------------------------------------------------------------ model


class Discriminator(PersonaLiveModelMixin, ModelMixin, ConfigMixin):
    """``D(images, timesteps) -> logits``; arguments: the fields of `DiscriminatorConfig`.

    ``images``: (n, c, R, R) in [-1, 1] with ``timesteps`` (n,) (per image, e.g. the per-frame timesteps of
    a Stage III window flattened to n = b*f frames) or a scalar; or (b, c, f, R, R) with timesteps (b,),
    (b, f) or a scalar. Returns (n,) or (b, f) logits (real > 0 > fake).

    Runs in the parameters' dtype (fp32); under a caller's autocast (the official trainer's accelerate fp16
    run) the convolutions run in half precision, as there.
    """

    @accepts_config_dataclass(DiscriminatorConfig)
    @register_to_config
    def __init__(
        self,
        resolution: int = 512,
        img_channels: int = 3,
        channel_base: int = 32768,
        channel_max: int = 512,
        temb_channels: int = 512,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        cfg = DiscriminatorConfig(resolution, img_channels, channel_base, channel_max, temb_channels,
                                  mbstd_group_size, mbstd_num_channels, conv_clamp)
        self.block_resolutions = cfg.block_resolutions
        self.time_emb_proj = nn.ModuleList()
        for i, res in enumerate(self.block_resolutions):
            block = _Block(cfg.channels(res), cfg.channels(res // 2), img_channels, first=i == 0,
                           conv_clamp=conv_clamp)
            setattr(self, f"b{res}", block)
            proj = nn.Linear(temb_channels, cfg.channels(res // 2))
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
            self.time_emb_proj.append(proj)
        self.b4 = _Epilogue(cfg.channels(4), cfg)
        self.time_proj = Timesteps(temb_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(temb_channels, temb_channels)

    def _frame_timesteps(self, timesteps: torch.Tensor | int, n: int, frames: int | None) -> torch.Tensor:
        t = torch.as_tensor(timesteps, device=self.b4.out.weight.device)
        if t.ndim == 0:
            return t.expand(n)
        if frames is not None and t.shape == (n // frames,):
            return t.repeat_interleave(frames)
        if frames is not None and t.shape == (n // frames, frames):
            return t.reshape(n)
        if t.shape == (n,):
            return t
        raise ValueError(f"timesteps of shape {tuple(t.shape)} do not fit {n} images"
                         + (f" ({n // frames} x {frames} frames)" if frames is not None else ""))

    def forward(self, images: torch.Tensor, timesteps: torch.Tensor | int) -> torch.Tensor:
        video = images.ndim == 5
        frames = None
        if video:
            b, c, frames, h, w = images.shape
            images = images.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w)
        cfg = self.config
        if images.ndim != 4 or tuple(images.shape[1:]) != (cfg.img_channels, cfg.resolution, cfg.resolution):
            raise ValueError(f"the discriminator expects (n, {cfg.img_channels}, {cfg.resolution}, "
                             f"{cfg.resolution}) images, got shape {tuple(images.shape)}")
        n = images.shape[0]
        dtype = self.b4.out.weight.dtype
        x = images.to(dtype)
        t = self._frame_timesteps(timesteps, n, frames)
        temb = self.time_embedding(self.time_proj(t).to(dtype))
        temb = F.silu(temb)
        for proj, res in zip(self.time_emb_proj, self.block_resolutions, strict=True):
            x = getattr(self, f"b{res}")(x)
            x = x + proj(temb)[:, :, None, None]
        logits = self.b4(x).squeeze(1)
        return logits.reshape(-1, frames) if video else logits


# ------------------------------------------------------------------------------------------------ loading


def _missing_file_message(path: Path) -> str:
    return (f"discriminator weights {path} not found: this is the FFHQ-512 StyleGAN2 discriminator "
            f"({FFHQ_FILENAME}, converted from NVlabs' ffhq-res512-mirror-stylegan2-noaug.pkl, NVIDIA "
            "non-commercial licence, distributed by the PersonaLive authors); give its correct path, or start "
            "training without it (a randomly initialised discriminator)")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read discriminator weights {path}: {str(e).splitlines()[0] if str(e) else e!r}"
                        ) from e
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"discriminator weights {path} are not a state dict (a mapping of names to tensors)")
    return dict(sd)


def _summary(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _modules(keys: list[str]) -> str:
    """The layers the keys belong to ('time_emb_proj.0.weight' -> 'time_emb_proj.0'), in order, once each."""
    return _summary(list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys)), limit=12)


def load_discriminator(path: str | Path | None, config: DiscriminatorConfig | None = None,
                       strict: bool = False) -> Discriminator:
    """A `Discriminator` of ``config`` (default: the official 512² one), with weights from ``path``.

    ``path=None``: random initialisation. Otherwise a state dict file (``.pth``/``.bin`` or
    ``.safetensors``), e.g. the FFHQ-512 ``stylegan2_discriminator_ffhq512.pth`` (Stage II starts from it,
    loaded non-strictly: it has no timestep layers), or a Stage II checkpoint (Stage III, strict): such a
    file or a `Discriminator.save_pretrained` folder (its weights file is read; the architecture is
    ``config``'s).

    Keys absent from the file keep their initialisation and keys the model does not have are ignored; both
    are logged. ``strict=True`` makes either a UserError. A tensor whose shape does not fit, an unreadable
    file, or a file that is not a state dict is always a UserError naming the file.
    """
    cfg = config or DiscriminatorConfig()
    model = Discriminator(cfg)
    if path is None:
        logger.info("discriminator: random initialisation (no weights file given)")
        return model
    path = Path(path).expanduser()
    if path.is_dir():
        inside = [path / SAVED_WEIGHTS[0], path / SAVED_WEIGHTS[1]]
        if not any(p.is_file() for p in inside):
            raise UserError(f"discriminator folder {path} has no {' or '.join(SAVED_WEIGHTS)} "
                            "(a Discriminator.save_pretrained folder)")
        path = next(p for p in inside if p.is_file())
    if not path.is_file():
        raise UserError(_missing_file_message(path))
    sd = _read_state_dict(path)
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} in the file vs {tuple(own[k].shape)}" for k, v in sd.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise UserError(f"discriminator weights {path} do not fit the configured discriminator "
                        f"(resolution {cfg.resolution}, channel_base {cfg.channel_base}, channel_max "
                        f"{cfg.channel_max}, temb_channels {cfg.temb_channels}): {_summary(bad, 3)}")
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    if strict and (missing or unexpected):
        parts = ([f"missing {_summary(missing)}"] if missing else []) + (
            [f"unexpected {_summary(unexpected)}"] if unexpected else [])
        raise UserError(f"discriminator weights {path} do not match the discriminator exactly: {'; '.join(parts)}")
    model.load_state_dict(sd, strict=False)
    new_layers = [k for k in missing if k.startswith(TIMESTEP_PREFIXES)]
    other = [k for k in missing if not k.startswith(TIMESTEP_PREFIXES)]
    if new_layers:
        logger.info("discriminator: %d timestep-layer tensors are not in %s and keep their initialisation "
                    "(zero projections, so D starts independent of t): %s", len(new_layers), path,
                    _modules(new_layers))
    if other:
        logger.warning("discriminator: %d tensors missing from %s keep their random initialisation: %s",
                       len(other), path, _modules(other))
    if unexpected:
        logger.warning("discriminator: %d tensors in %s are not part of the discriminator and are ignored: %s",
                       len(unexpected), path, _modules(unexpected))
    logger.info("discriminator: loaded %d tensors from %s", len(sd) - len(unexpected), path)
    return model
