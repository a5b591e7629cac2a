"""Training PersonaLive: the data format, datasets, and the three stages (on accelerate)."""
