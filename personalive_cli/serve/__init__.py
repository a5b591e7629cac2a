"""``personalive serve``: live animation in the browser (webcam in, animated portrait out).

``app`` builds the ASGI application, ``sessions`` runs one Method session per viewer with live pacing,
``uploads`` decodes portraits safely, ``webrtc`` carries media over aiortc, ``framestamp`` tags frames.
Needs the ``serve`` extra (fastapi, uvicorn, aiortc)."""
