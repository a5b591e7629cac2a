"""``follow-your-emoji``: Follow-Your-Emoji (mayuelala/FollowYourEmoji) run through its own ``infer.py``.

Input conversion: the upstream animates from a landmark "template" ``.npy`` that its ``make_temple``
notebook makes from a driving video with MediaPipe's FaceLandmarker (478 landmarks, blendshapes and the
face geometry: canonical-space metric mesh and pose matrix). :func:`landmark_template` makes the same
records here, with the project's mediapipe and the repo's own ``face_landmarker_v2_with_blendshapes.task``.
The upstream drops the first aligned frame, so the template repeats the first driving frame once. The
reference goes into a folder of its own (the upstream animates every image x template pair); the
entry point runs under ``torch.distributed.run`` with one process, as its README does. The number of
frames generated is the config's ``video_length`` (16 in ``configs/infer.yaml``), not the template's
length, so every run gets a copy of the config with ``video_length`` set to the clip's length; with
``--weights DIR`` (a ``pretrained_models``-style folder) that copy also reads its models from there.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from baselines.external import Clip, ExternalMethod, ExternalOptions, Invocation
from baselines.upstream_config import dump_config, load_config, repoint, weights_prefix
from personalive_cli.errors import UserError
from personalive_cli.registry import option

TASK_MODEL = "media_pipe/mp_models/face_landmarker_v2_with_blendshapes.task"
CONFIG = "configs/infer.yaml"


class TemplateLandmarker:
    """MediaPipe FaceLandmarker (image mode) returning the upstream template record for one RGB frame."""

    def __init__(self, task_model: str | Path) -> None:
        from personalive_cli.faces.detector import quiet_native_stderr

        if not Path(task_model).is_file():
            raise UserError(f"MediaPipe face landmarker model not found: {task_model}")
        try:
            with quiet_native_stderr():
                from mediapipe.tasks.python import vision
                from mediapipe.tasks.python.core.base_options import BaseOptions
        except ImportError:
            raise UserError("follow-your-emoji's landmark template needs mediapipe: "
                            "pip install 'personalive[faces]'") from None
        options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(task_model)),
                                               running_mode=vision.RunningMode.IMAGE,
                                               output_face_blendshapes=True,
                                               output_facial_transformation_matrixes=True, num_faces=1)
        with quiet_native_stderr():
            self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def __call__(self, rgb: np.ndarray) -> dict | None:
        import mediapipe as mp
        from mediapipe.python import packet_creator, packet_getter

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        lm = self._landmarker
        rect = lm.convert_to_normalized_rect(None, image, roi_allowed=False)
        # The public result drops the face geometry's mesh, which the template needs: read the packets.
        packets = lm._process_image_data({"image_in": packet_creator.create_image(image),
                                          "norm_rect_in": packet_creator.create_proto(rect.to_pb2())})
        if packets["norm_landmarks"].is_empty():
            return None
        landmarks = packet_getter.get_proto_list(packets["norm_landmarks"])
        blendshapes = packet_getter.get_proto_list(packets["blendshapes"])
        geometry = packet_getter.get_proto_list(packets["face_geometry"])
        if len(landmarks) != 1 or len(blendshapes) != 1 or len(geometry) != 1:
            return None
        lmks = np.array([[p.x, p.y, p.z] for p in landmarks[0].landmark], dtype=np.float64)
        bs = [c.score for c in blendshapes[0].classification][1:]  # without "_neutral"
        matrix = geometry[0].pose_transform_matrix
        trans = np.array(matrix.packed_data, dtype=np.float64).reshape(matrix.rows, matrix.cols)
        if matrix.layout != matrix.ROW_MAJOR:
            trans = trans.T
        mesh = geometry[0].mesh
        return {"lmks": lmks, "lmks3d": np.array(mesh.vertex_buffer).reshape(-1, 5)[:, :3],
                "trans_mat": trans, "faces": np.array(mesh.index_buffer).reshape(-1, 3) + 1, "bs": bs,
                "width": rgb.shape[1], "height": rgb.shape[0]}

    def close(self) -> None:
        self._landmarker.close()


def landmark_template(frames: list[np.ndarray], task_model: str | Path, repeat_first: bool = True) -> np.ndarray:
    """The upstream's template: an object array of per-frame records. A frame without a face reuses the
    previous frame's record (the upstream notebook would stop); none in the first frames is an error."""
    landmarker = TemplateLandmarker(task_model)
    records: list[dict] = []
    missing = 0
    try:
        for frame in frames:
            rec = landmarker(frame)
            if rec is None:
                missing += 1
                if not records:
                    continue
                rec = records[-1]
            records.append(rec)
    finally:
        landmarker.close()
    if not records:
        raise UserError("follow-your-emoji: no face found in the driving frames")
    records = [records[0]] * (len(frames) - len(records)) + records  # leading misses take the first face
    if repeat_first:
        records = [records[0], *records]
    out = np.empty(len(records), dtype=object)
    out[:] = records
    return out


def config_for_clip(text: str, video_length: int, weights: str | None = None) -> str:
    """The upstream config text with ``video_length`` (top level) set, and ``pretrained_models/`` paths
    pointing into ``weights`` when given."""
    data = load_config(text, CONFIG)
    data["video_length"] = int(video_length)
    if weights:
        data = repoint(data, "pretrained_models/", weights_prefix(weights))
    return dump_config(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FollowYourEmojiOptions(ExternalOptions):
    task_model: str | None = option(None, "its task checkpoint (default: REPO/" + TASK_MODEL + ")")
    config_file: str = option(CONFIG, "its inference config, relative to the checkout")


class FollowYourEmoji(ExternalMethod):
    Options = FollowYourEmojiOptions
    description = "Follow-Your-Emoji (SIGGRAPH Asia 2024): SD1.5 ReferenceNet + landmark guider, upstream code in its own env"
    upstream_url = "https://github.com/mayuelala/FollowYourEmoji"
    entry_point = "infer.py"
    weights_help = "a pretrained_models folder laid out as its README says (default: REPO/pretrained_models)"
    setup_steps = (
        "git clone https://github.com/mayuelala/FollowYourEmoji REPO",
        "create its environment (torch 2.0.1): python -m venv ENV && ENV/bin/pip install -r REPO/requirements.txt",
        "download YueMafighting/FollowYourEmoji, lambdalabs/sd-image-variations-diffusers, stabilityai/sd-vae-ft-mse "
        "and AnimateDiff mm_sd_v15_v2.ckpt into REPO/pretrained_models as its README lays out",
    )

    def __init__(self, *args, task_model: str | None = None, config_file: str = CONFIG, **kwargs):
        super().__init__(*args, **kwargs)
        self.task_model = Path(task_model) if task_model else Path(self.config.repo) / TASK_MODEL
        self.config_file = config_file

    def invocation(self, clip: Clip, work: Path) -> Invocation:
        from PIL import Image as PILImage

        repo = Path(self.config.repo)
        images = work / "images"
        images.mkdir()
        PILImage.fromarray(clip.reference).save(images / "reference.png")
        template = work / "driving.npy"
        np.save(template, landmark_template(clip.frames, self.task_model), allow_pickle=True)
        # relative paths in it stay relative to the repo (the working folder)
        config = work / "infer.yaml"
        config.write_text(config_for_clip((repo / self.config_file).read_text(), len(clip.frames),
                                          self.config.weights))
        out = work / "out"
        cmd = [self.config.python, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "1",
               "--master_port", str(_free_port()), self.entry_point, "--config", str(config),
               "--input_path", str(images), "--lmk_path", str(template), "--output_path", str(out),
               "--seed", str(self.seed if self.seed is not None else 42)]
        return Invocation(command=cmd, cwd=repo, output=out / "driving_reference_oo.mp4",
                          env={"MASTER_ADDR": "127.0.0.1"})
