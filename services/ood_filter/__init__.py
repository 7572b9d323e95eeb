"""OOD filter worker: calibrated post-selection with a memorisation guard."""
