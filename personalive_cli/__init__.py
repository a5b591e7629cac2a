"""personalive: real-time, streamable, diffusion-based portrait animation."""

__version__ = "0.1.0"
