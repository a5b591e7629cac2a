"""``x-portrait``: X-Portrait (bytedance/X-Portrait) run through its own ``core/test_xportrait.py``.

Input conversion: the reference is written as a PNG and the driving clip as an mp4 (the upstream treats
a path containing ``.mp4`` as a video). ``best_frame`` -1 lets the upstream pick the driving frame whose
head pose is closest to the source and affine-align the driving video to the source face box (its own
face_alignment landmarks); an integer picks that frame; ``align=False`` passes -2 (no alignment).
``--out_frames 0`` renders every driving frame (the upstream slices ``driving[start:start + out_frames]``
for any other value, so its README's -1 leaves out the last frame). The upstream keeps only the first
512 columns of its panel, the result, and writes that as the video which is read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from baselines.external import Clip, ExternalMethod, ExternalOptions, Invocation, write_video
from personalive_cli.errors import UserError
from personalive_cli.registry import option

MODEL_CONFIG = "config/cldm_v15_appearance_pose_local_mm.yaml"
ALL_FRAMES = 0  # --out_frames value for "every driving frame"


@dataclass
class XPortraitOptions(ExternalOptions):
    best_frame: int = option(-1, "driving frame aligned to the reference (-1: let it choose)")
    align: bool = option(True, "align the driving motion to the reference's pose")
    uc_scale: float = option(5.0, "unconditional guidance scale")
    num_mix: int = option(4, "prompt-mixing steps")
    ddim_steps: int = option(30, "DDIM steps")
    model_config: str = option(MODEL_CONFIG, "its model config, relative to the checkout")


class XPortrait(ExternalMethod):
    Options = XPortraitOptions
    description = "X-Portrait (SIGGRAPH 2024): SD1.5 ControlNets + motion module, upstream code in its own env"
    upstream_url = "https://github.com/bytedance/X-Portrait"
    entry_point = "core/test_xportrait.py"
    weights_required = True
    weights_help = "the checkpoint file checkpoint/model_state-415001.th from the Google Drive folder in its README"
    setup_steps = (
        "git clone https://github.com/bytedance/X-Portrait REPO",
        "create its environment (Python 3.9, CUDA 11.8): conda create -n xportrait python=3.9 && "
        "conda activate xportrait && pip install -r REPO/requirements.txt",
        "download model_state-415001.th from the Google Drive folder linked in its README",
    )

    def __init__(self, *args, best_frame: int = -1, align: bool = True, uc_scale: float = 5, num_mix: int = 4,
                 ddim_steps: int = 30, model_config: str = MODEL_CONFIG, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.config.weights:
            raise UserError("x-portrait is configured without --weights (the model_state-415001.th checkpoint)")
        self.best_frame = int(best_frame) if align else -2
        self.uc_scale, self.num_mix, self.ddim_steps = uc_scale, int(num_mix), int(ddim_steps)
        self.model_config = model_config

    def invocation(self, clip: Clip, work: Path) -> Invocation:
        from PIL import Image as PILImage

        source = work / "reference.png"
        PILImage.fromarray(clip.reference).save(source)
        driving = write_video(work / "driving.mp4", clip.frames, clip.fps)
        out = work / "out"
        out.mkdir()
        uc = int(self.uc_scale) if float(self.uc_scale).is_integer() else self.uc_scale
        cmd = [self.config.python, self.entry_point, "--model_config", self.model_config, "--output_dir", str(out),
               "--resume_dir", self.config.weights, "--seed", str(self.seed if self.seed is not None else 999),
               "--uc_scale", str(uc), "--source_image", str(source), "--driving_video", str(driving),
               "--best_frame", str(self.best_frame), "--out_frames", str(ALL_FRAMES), "--num_mix", str(self.num_mix),
               "--ddim_steps", str(self.ddim_steps)]
        return Invocation(command=cmd, cwd=Path(self.config.repo), output=out)
