"""Generator worker: class-conditional inpainting diffusion (train, sample, record)."""
