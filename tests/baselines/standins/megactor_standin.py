"""TEST DOUBLE of MegActor-Σ's eval_audio.py: same flags; like the upstream it needs an audio track in
the driving video, keeps int(fps * limit) frames, and saves each frame as a row of four ``size`` panels
(source | driving | pose view | result) with make_grid's 2-pixel gaps, leaving out the first frame.
Its "result" for a frame is that driving frame resized and inverted (255 - x), so a test can tell the
panels apart and which driving frame a result belongs to.
Not MegActor-Σ."""

import argparse
import os
import re
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.environ["STANDIN_DIR"])
from common import read_video, record, write_video  # noqa: E402

GAP = 2

p = argparse.ArgumentParser()
for flag in ("--config", "--source", "--driver", "--output-path"):
    p.add_argument(flag, required=True)
p.add_argument("--seed", type=int, default=42)
p.add_argument("--num-steps", type=int, default=25)
p.add_argument("--guidance-scale", type=float, default=4.5)
p.add_argument("--limit", type=float, default=2.5)
p.add_argument("--no-audio", action="store_true")
p.add_argument("--no-visual", action="store_true")
a = p.parse_args()
config_text = open(a.config).read()
size = re.search(r"^size:\s*\[(\d+),\s*(\d+)\]", config_text, re.MULTILINE)
w, h = (int(size.group(1)), int(size.group(2))) if size else (512, 512)
frames, fps, audio_seconds = read_video(a.driver)
if audio_seconds is None:
    raise SystemExit("KeyError: 'audio_fps'")  # what torchvision's reader leads to upstream
frames = frames[:int(fps * a.limit)]
record(vars(a), driving_frames=len(frames), audio_seconds=audio_seconds, fps=fps, config_text=config_text)


def fit(img):
    return np.asarray(Image.fromarray(img).convert("RGB").resize((w, h)))


source = fit(np.asarray(Image.open(a.source)))
rows = []
for frame in frames[1:]:  # samples_per_video[:, :, 1:]
    driving = fit(frame)
    pose = np.repeat(driving.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)  # grey, as upstream
    row = np.zeros((h + 2 * GAP, 4 * (w + GAP) + GAP, 3), np.uint8)
    for k, panel in enumerate((source, driving, pose, 255 - driving)):
        row[GAP:GAP + h, k * (w + GAP) + GAP:k * (w + GAP) + GAP + w] = panel
    rows.append(row)
write_video(a.output_path, rows, fps)
