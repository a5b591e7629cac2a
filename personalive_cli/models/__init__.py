"""One file per network of PersonaLive (and the pieces the LivePortrait baseline shares)."""
