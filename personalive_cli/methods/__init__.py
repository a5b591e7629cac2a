"""Built-in methods. They register through the ``personalive.methods`` entry points in pyproject.toml,
as a third-party package's methods do."""
