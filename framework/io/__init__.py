"""What lands on disk: the run directory, weights, checkpoints, plots, and progress bars."""
