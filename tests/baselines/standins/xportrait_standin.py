"""TEST DOUBLE of X-Portrait's core/test_xportrait.py: same flags, keeps the driving frames the upstream
keeps (``--out_frames 0``: all of them; any other value n: ``driving[start:start + n]``, so -1 drops the
last), writes the result video where the upstream does. Not X-Portrait."""

import argparse
import os
import sys

sys.path.insert(0, os.environ["STANDIN_DIR"])
from common import frames_like, read_video, record, write_video  # noqa: E402

p = argparse.ArgumentParser()
for flag in ("--model_config", "--output_dir", "--resume_dir", "--source_image", "--driving_video"):
    p.add_argument(flag, required=True)
for flag in ("--seed", "--best_frame", "--out_frames", "--num_mix", "--ddim_steps"):
    p.add_argument(flag, type=int, required=True)
p.add_argument("--uc_scale", type=float, required=True)
p.add_argument("--start_idx", type=int, default=0)
p.add_argument("--skip", type=int, default=1)
a = p.parse_args()
assert os.path.isfile(a.model_config), "model config is read relative to the repo"
assert ".mp4" in a.driving_video
frames, fps, _ = read_video(a.driving_video)
if a.out_frames == 0:
    end = len(frames)
else:
    end = a.start_idx + min(len(frames), a.out_frames) * a.skip
n = len(frames[a.start_idx:end][::a.skip])
record(vars(a), driving_frames=len(frames), rendered_frames=n)
src = os.path.basename(a.source_image).split(".")[0]
drv = os.path.basename(a.driving_video).split(".")[0]
write_video(f"{a.output_dir}/inference_appearance_pose_local_mm_uc{int(a.uc_scale)}_{src}_by_{drv}_mix{a.num_mix}.mp4",
            frames_like(a.source_image, n), fps)
