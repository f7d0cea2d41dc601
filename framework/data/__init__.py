"""Data: the window plan and loaders, local files, and labels as class names."""
