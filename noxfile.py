"""nox sessions: ``nox -s tests`` (the default test run), ``nox -s lint``, ``nox -s lowest`` (the
lowest dependency versions the pyproject allows) and ``nox -s slow``."""

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


# The lowest version of every dependency pyproject.toml allows (keep in step with its lower bounds).
LOWEST = ["diffusers==0.27.0", "transformers==4.36.0", "huggingface_hub==0.23.0", "safetensors==0.4.0",
          "numpy==1.24.4", "pillow==9.5.0", "av==15.0.0", "imageio-ffmpeg==0.5.0", "typer==0.13.0",
          "rich==13.0.0", "pandas==2.0.0", "pyyaml==6.0"]
LOWEST_TORCH = ["torch==2.1.2", "torchvision==0.16.2"]


@nox.session(python="3.11")
def lowest(session: nox.Session) -> None:
    """The default tests against the lowest versions the pyproject allows. torch 2.1 where an index
    offers it for this Python; otherwise (e.g. an offline mirror with only the pinned build) the
    pinned torch, said in the log."""
    try:
        session.install(*LOWEST_TORCH)
    except nox.command.CommandFailed:
        session.log(f"{' '.join(LOWEST_TORCH)} is not installable here; testing the lowest of everything "
                    f"else with {' '.join(TORCH)}")
        session.install(*TORCH)
    session.install("-e", ".[dev,bench]", *LOWEST)
    session.run("python", "-c", "import torch, diffusers, transformers; print('torch', torch.__version__, "
                "'diffusers', diffusers.__version__, 'transformers', transformers.__version__)")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
