"""Face detection and square cropping of driving frames (and references) of any size."""
