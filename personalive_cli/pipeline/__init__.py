"""The streaming engine (PersonaLive) and the offline animator that feeds any method from a file."""
