"""nox sessions: ``nox -s tests`` (the default test run) and ``nox -s lint``."""

import nox

nox.options.sessions = ["lint", "tests"]

TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install(*TORCH)
    session.install("-e", ".[dev,bench]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def slow(session: nox.Session) -> None:
    """Full-size models and long videos (minutes on a CPU)."""
    session.install(*TORCH)
    session.install("-e", ".[dev,bench]")
    session.run("pytest", "-q", "-m", "slow", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
