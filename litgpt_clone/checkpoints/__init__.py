"""Checkpoint formats: the native folder, Hugging Face conversion both ways, and hub downloads."""
