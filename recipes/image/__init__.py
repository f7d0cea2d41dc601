"""The image recipe's own parts: image files (layout, decode check, RGB conversion)."""
