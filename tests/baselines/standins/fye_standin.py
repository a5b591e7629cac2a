"""TEST DOUBLE of Follow-Your-Emoji's infer.py (run under torch.distributed.run): same flags, reads the
landmark template, drops its first frame as the upstream's aligner does, generates the config's
``video_length`` frames (failing, as the upstream's context indexing does, when the template has fewer),
writes <lmk>_<image>_oo.mp4. Not Follow-Your-Emoji."""

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.environ["STANDIN_DIR"])
from common import frames_like, record, write_video  # noqa: E402

p = argparse.ArgumentParser()
for flag in ("--config", "--output_path", "--input_path", "--lmk_path"):
    p.add_argument(flag, required=True)
p.add_argument("--seed", type=int, default=42)
a = p.parse_args()
assert "LOCAL_RANK" in os.environ, "run under torch.distributed.run"
config = Path(a.config).read_text()
video_length = int(re.search(r"^video_length:\s*(\d+)", config, re.MULTILINE).group(1))
template = np.load(a.lmk_path, allow_pickle=True)
keys = sorted(template[0])
images = sorted(Path(a.input_path).glob("*.png"))
record(vars(a), template_len=len(template), keys=keys, config=config, config_path=a.config,
       video_length=video_length,
       images=[str(i) for i in images])
motions = len(template) - 1  # the aligner's pose_list[1:]
if video_length > motions:
    raise SystemExit(f"IndexError: index {motions} is out of bounds for dimension 2 with size {motions}")
os.makedirs(a.output_path, exist_ok=True)
for image in images:
    lmk = Path(a.lmk_path).stem
    write_video(f"{a.output_path}/{lmk}_{image.stem}_oo.mp4", frames_like(image, video_length), 7)
    write_video(f"{a.output_path}/{lmk}_{image.stem}_all.mp4", frames_like(image, video_length, 64), 8)
