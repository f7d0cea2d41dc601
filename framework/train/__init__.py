"""Training: the loop and its parts (optimizer, losses, batch search, stop signals, FLOPs)."""
