"""Saved folders: adapters and checkpoints (manifest, verification, recovery after a crash), model
cards, and the Hub (`from_pretrained`, `push_to_hub`)."""
