"""Generator worker: class-conditional inpainting diffusion (train, sample, record).

Library entry points (no database, Celery or storage; numpy arrays, paths, callbacks):

- ``training.train_generator`` - train/resume a pixel or latent UNet from scratch.
- ``sampling.load_generator`` -> ``TrainedGenerator.inpaint / img2img / generate``.
- ``pretrained.load_pretrained`` -> ``PretrainedGenerator`` (same three methods),
  ``pretrained.finetune_lora``.
- ``masks.auto_masks / jitter_mask / select_background_indices`` - where to paint.
- ``output.synthetic_image_record`` - PNG bytes with the synthetic marker + provenance.
- ``quality.quality_report`` - per-class Frechet distance and real-classifier accuracy.

Submodules are imported explicitly (``from services.generator.sampling import ...``) so
that importing this package does not load torch or diffusers.
"""
