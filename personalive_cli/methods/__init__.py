"""Built-in methods; importing this package registers them."""

from personalive_cli.methods import (
    personalive,  # noqa: F401, E402
    still,  # noqa: F401
)
