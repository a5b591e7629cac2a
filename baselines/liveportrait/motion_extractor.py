"""LivePortrait's motion extractor M is the very network PersonaLive calls its keypoint extractor.

It is shared, not copied: :class:`personalive_cli.models.keypoint_extractor.KeypointExtractor` with
``with_exp=True`` gives LivePortrait's canonical keypoints, head pose (degrees), translation, scale and
expression offsets; its state-dict keys (212, all under ``detector.``) are those of
``base_models/motion_extractor.pth``.
"""

from __future__ import annotations

from personalive_cli.models.keypoint_extractor import (
    KeypointExtractor,
    KeypointExtractorConfig,
    KeypointInfo,
    posed_keypoints,
    rotation_matrix,
)

MotionExtractor = KeypointExtractor
MotionExtractorConfig = KeypointExtractorConfig

__all__ = ["KeypointInfo", "MotionExtractor", "MotionExtractorConfig", "posed_keypoints", "rotation_matrix"]
