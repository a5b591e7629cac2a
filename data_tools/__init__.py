"""Dataset tools: turn raw videos into the bench's form (face-centred square crops, fixed fps, a manifest)."""
