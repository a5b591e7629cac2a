"""TEST DOUBLE of MegActor-Σ's eval_audio.py: same flags; like the upstream it needs an audio track in
the driving video and keeps int(fps * limit) frames. Not MegActor-Σ."""

import argparse
import os
import sys

sys.path.insert(0, os.environ["STANDIN_DIR"])
from common import frames_like, read_video, record, write_video  # noqa: E402

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
frames, fps, audio_seconds = read_video(a.driver)
if audio_seconds is None:
    raise SystemExit("KeyError: 'audio_fps'")  # what torchvision's reader leads to upstream
n = min(len(frames), int(fps * a.limit))
record(vars(a), driving_frames=len(frames), audio_seconds=audio_seconds, fps=fps, config_text=open(a.config).read())
write_video(a.output_path, frames_like(a.source, n), fps)
