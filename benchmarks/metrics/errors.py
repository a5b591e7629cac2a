"""The one exception a metric raises when it cannot run here."""

from __future__ import annotations


class MetricUnavailable(Exception):
    """A metric's network file or package is missing.

    The message is one line naming the missing file (or package) and how to get it, so the bench can
    print it next to the left-out column, or fail with it under ``--strict``. A metric never returns a
    made-up value instead.
    """

    def __init__(self, metric: str, message: str, searched: list | None = None):
        self.metric = metric
        self.reason = message
        self.searched = list(searched or [])  # the paths looked at, for a verbose report
        super().__init__(f"{metric}: {message}")
