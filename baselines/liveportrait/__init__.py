"""LivePortrait (human model), natively: the five networks, exact loading of the released weights, the
cropper and the ``liveportrait`` method (registered through the package's entry points)."""

from baselines.liveportrait.method import LivePortrait, LivePortraitSession
from baselines.liveportrait.models import (
    LivePortraitConfig,
    LivePortraitLayout,
    LivePortraitModels,
    check_layout,
    download,
    resolve_weights,
)

__all__ = ["LivePortrait", "LivePortraitConfig", "LivePortraitLayout", "LivePortraitModels", "LivePortraitSession",
           "check_layout", "download", "resolve_weights"]
