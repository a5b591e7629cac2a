"""The one exception type the CLI turns into a clean one-line error."""


class UserError(Exception):
    """Bad input or environment that the user can fix; the CLI prints it in one line and exits 1."""
