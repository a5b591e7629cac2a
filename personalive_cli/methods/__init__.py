"""Built-in methods; importing this package registers them."""

from baselines import follow_your_emoji, liveportrait, megactor_sigma, x_portrait  # noqa: F401
from personalive_cli.methods import (
    personalive,  # noqa: F401, E402
    still,  # noqa: F401
)
