"""The bottom layer: errors, the config, RNG state, and the Accelerator with its precision."""
