"""TEST DOUBLE of Follow-Your-Emoji's infer.py (run under torch.distributed.run): same flags, reads the
landmark template, drops its first frame as the upstream's aligner does, writes <lmk>_<image>_oo.mp4.
Not Follow-Your-Emoji."""

import argparse
import os
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
template = np.load(a.lmk_path, allow_pickle=True)
keys = sorted(template[0])
images = sorted(Path(a.input_path).glob("*.png"))
record(vars(a), template_len=len(template), keys=keys, config=config, images=[str(i) for i in images])
os.makedirs(a.output_path, exist_ok=True)
for image in images:
    lmk = Path(a.lmk_path).stem
    write_video(f"{a.output_path}/{lmk}_{image.stem}_oo.mp4", frames_like(image, len(template) - 1), 7)
    write_video(f"{a.output_path}/{lmk}_{image.stem}_all.mp4", frames_like(image, len(template) - 1, 64), 8)
