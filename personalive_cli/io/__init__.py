"""Video and image sources and sinks. Frames at the edges are uint8 RGB ``(h, w, 3)``."""
