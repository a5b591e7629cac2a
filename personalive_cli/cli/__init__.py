"""The ``personalive`` command line (Typer)."""
