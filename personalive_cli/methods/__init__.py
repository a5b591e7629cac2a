"""Built-in methods; importing this package registers them."""

from personalive_cli.methods import still  # noqa: F401
