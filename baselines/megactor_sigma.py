"""``megactor-sigma``: MegActor-Σ (megvii-research/megactor) run through its own ``eval_audio.py``.

Input conversion: the upstream reads the driving mp4 with torchvision, including its audio track (it
fails on a video without one). With the driving clip's audio (``audio=`` option, e.g. the driving file)
the clip is written with that audio cut to the clip, and both modalities drive; without it a silent
track is muxed and ``--no-audio`` is passed (visual-only driving). ``--limit`` (2.5 s by default
upstream) is raised to the whole clip. With ``--weights DIR`` (the ``weights/`` folder of
HVSiniX/RawVideoDriven) the inference config is rewritten to read the weights from there.

Output conversion: the upstream saves a row of four panels per frame, source | cropped driving | pose
view | result, each ``size`` square, laid out by ``torchvision.utils.make_grid`` (2-pixel gaps, also
around the row), and leaves out the first frame (``samples[:, :, 1:]``). :func:`result_panel` cuts the
result out, and the first result is repeated so that output frame i belongs to driving frame i.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from baselines.external import Clip, ExternalMethod, ExternalOptions, Invocation, has_audio, write_video
from baselines.upstream_config import dump_config, load_config, repoint, weights_prefix
from personalive_cli.errors import UserError
from personalive_cli.registry import option

CONFIG = "configs/inference/megactor-sigma/inference.yaml"
AUDIO_RATE = 16000
PANELS, RESULT_PANEL, GAP = 4, 3, 2  # make_grid's default padding


def result_panel(frame: np.ndarray) -> np.ndarray:
    """The result (4th) panel of one upstream output frame: a row of 4 panels of width W with 2-pixel
    gaps, i.e. 4 * (W + 2) + 2 wide and H + 4 high, panel k starting at column k * (W + 2) + 2."""
    h, w = frame.shape[:2]
    panel_w, rest = divmod(w - GAP, PANELS)
    panel_w -= GAP
    if rest or panel_w < 1 or h <= 2 * GAP:
        raise UserError(f"megactor-sigma wrote a {w}x{h} video, not the row of {PANELS} panels its "
                        "eval_audio.py saves")
    x0 = RESULT_PANEL * (panel_w + GAP) + GAP
    return np.ascontiguousarray(frame[GAP:h - GAP, x0:x0 + panel_w])


@dataclass
class MegActorSigmaOptions(ExternalOptions):
    num_steps: int = option(25, "denoising steps")
    guidance_scale: float = option(2.0, "classifier-free guidance scale")
    use_audio: bool | None = option(None, "drive with the clip's audio (default: when it has audio)")
    use_visual: bool = option(True, "drive with the visual stream")
    config_file: str = option(CONFIG, "its inference config, relative to the checkout")


class MegActorSigma(ExternalMethod):
    Options = MegActorSigmaOptions
    description = "MegActor-Σ (2024): mixed-modal (audio + visual) SD1.5 diffusion, upstream code in its own env"
    upstream_url = "https://github.com/megvii-research/megactor"
    entry_point = "eval_audio.py"
    weights_help = "the weights/ folder of https://huggingface.co/HVSiniX/RawVideoDriven (default: REPO/weights)"
    setup_steps = (
        "git clone https://github.com/megvii-research/megactor REPO",
        "create its environment: conda env create -f REPO/env_sigma.yml (then the mmcv/detectron2 steps of its README)",
        "git clone https://huggingface.co/HVSiniX/RawVideoDriven && ln -s RawVideoDriven/weights REPO/weights",
    )

    def __init__(self, *args, num_steps: int = 25, guidance_scale: float = 2.0, use_audio: bool | None = None,
                 use_visual: bool = True, config_file: str = CONFIG, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_steps, self.guidance_scale = int(num_steps), float(guidance_scale)
        self.use_audio, self.use_visual = use_audio, use_visual
        self.config_file = config_file

    def audio_plan(self, clip: Clip) -> bool:
        """Whether the clip's own audio drives (else a silent track and --no-audio)."""
        available = clip.audio is not None and has_audio(clip.audio)
        return available if self.use_audio is None else (self.use_audio and available)

    def limit_seconds(self, clip: Clip) -> float:
        """The upstream keeps int(fps * limit) frames: cover the whole clip, with one frame to spare."""
        return (len(clip.frames) + 1) / float(clip.fps)

    def invocation(self, clip: Clip, work: Path) -> Invocation:
        from PIL import Image as PILImage

        repo = Path(self.config.repo)
        source = work / "reference.png"
        PILImage.fromarray(clip.reference).save(source)
        with_audio = self.audio_plan(clip)
        driving = write_video(work / "driving.mp4", clip.frames, clip.fps,
                              audio=clip.audio if with_audio else None, audio_start=clip.audio_start,
                              silent_audio_rate=None if with_audio else AUDIO_RATE)
        config = repo / self.config_file
        if self.config.weights:
            data = load_config(config.read_text(), config)
            data = repoint(data, "./weights/", weights_prefix(self.config.weights))
            config = work / "inference.yaml"
            config.write_text(dump_config(data))
        out = work / "out" / "result.mp4"
        out.parent.mkdir()
        cmd = [self.config.python, self.entry_point, "--config", str(config), "--output-path", str(out),
               "--num-steps", str(self.num_steps), "--guidance-scale", str(self.guidance_scale),
               "--source", str(source), "--driver", str(driving), "--limit", f"{self.limit_seconds(clip):.4f}",
               "--seed", str(self.seed if self.seed is not None else 42)]
        if not with_audio:
            cmd.append("--no-audio")
        if not self.use_visual:
            cmd.append("--no-visual")
        # the saved video starts at driving frame 1: repeat its first result for frame 0
        return Invocation(command=cmd, cwd=repo, output=out, select=result_panel, repeat_leading=1)
