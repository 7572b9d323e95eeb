"""Generator throughput: batched vs one-image-at-a-time sampling, and training speed.

Both sampling loops use the same model, scheduler, steps, guidance and seeds; the naive
loop calls ``inpaint`` once per image (batch of one), as a worker without batching would.
The UNet's forward cost per image at several batch sizes bounds what batching can gain: on
a CPU the per-image cost stops falling after a batch of a few dozen. Training speed is
optimiser steps per second of ``train_generator`` (checkpoint writes included). Peak
memory is the process's max resident set size (CPU) or ``torch.cuda.max_memory_allocated``
(GPU). Prints one JSON document.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generator_throughput.py
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from services.generator.config import GeneratorConfig
from services.generator.sampling import load_generator
from services.generator.training import train_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--images", type=int, default=32, help="images to sample")
    parser.add_argument("--inference-steps", type=int, default=10)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    rng = np.random.default_rng(0)
    n_train, size, num_classes = 64, args.resolution, 8
    images = rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n_train, size, size), np.uint8)
    masks[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    labels = np.arange(n_train) % num_classes
    config = GeneratorConfig(
        resolution=size, num_classes=num_classes, block_out_channels=(32, 64, 64),
        attention_levels=(2,), batch_size=args.train_batch_size,
        max_train_steps=args.train_steps, checkpoint_every=args.train_steps,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        result = train_generator(images, masks, labels, [f"c{i}" for i in range(num_classes)],
                                 config, Path(directory), device=device)
        train_seconds = time.perf_counter() - start
        assert result.checkpoint is not None
        generator = load_generator(result.checkpoint.path, device=device)

        n = args.images
        sample_kwargs = {"scheduler": "ddim", "num_inference_steps": args.inference_steps,
                         "guidance_scale": args.guidance_scale}
        ids, seeds = np.arange(n) % num_classes, np.arange(n)
        sources = images[np.arange(n) % n_train]
        sample_masks = masks[np.arange(n) % n_train]
        generator.inpaint(sources[:2], sample_masks[:2], ids[:2], seeds[:2],
                          **sample_kwargs)  # warm-up (allocator, kernels)

        start = time.perf_counter()
        batched = generator.inpaint(sources, sample_masks, ids, seeds,
                                    batch_size=args.batch_size, **sample_kwargs)
        batched_seconds = time.perf_counter() - start
        start = time.perf_counter()
        naive = [generator.inpaint(sources[i:i + 1], sample_masks[i:i + 1], ids[i:i + 1],
                                   seeds[i:i + 1], batch_size=1, **sample_kwargs)
                 for i in range(n)]
        naive_seconds = time.perf_counter() - start
        forward_ms = unet_forward_ms_per_image(generator.unet, config, device)
    naive_images = np.concatenate([r.images for r in naive])
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({  # noqa: T201
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "resolution": size,
        "unet_parameters": sum(p.numel() for p in generator.unet.parameters()),
        "sampling": {
            "images": n, "inference_steps": args.inference_steps,
            "guidance_scale": args.guidance_scale, "batch_size": args.batch_size,
            "batched_images_per_s": round(n / batched_seconds, 2),
            "naive_images_per_s": round(n / naive_seconds, 2),
            "speedup": round(naive_seconds / batched_seconds, 2),
            "max_abs_pixel_difference_batched_vs_naive": int(
                np.abs(batched.images.astype(int) - naive_images).max()),
        },
        "unet_forward_ms_per_image_by_batch": forward_ms,
        "training": {
            "steps": args.train_steps, "batch_size": args.train_batch_size,
            "steps_per_s": round(args.train_steps / train_seconds, 3),
            "images_per_s": round(args.train_steps * args.train_batch_size / train_seconds, 1),
        },
        "peak_memory_mib": round(peak / 2**20, 1),
        "python": sys.version.split()[0],
    }, indent=2))


def unet_forward_ms_per_image(unet: torch.nn.Module, config: GeneratorConfig,
                              device: torch.device) -> dict[int, float]:
    """Milliseconds per image of one UNet forward pass, by batch size (CFG doubles the
    batch a sampler sends: a batch of 1 image is a forward pass of 2)."""
    timings = {}
    channels, size = 2 * config.model_channels + 1, config.sample_size
    for batch in (1, 2, 16, 64, 128):
        x = torch.randn(batch, channels, size, size, device=device)
        labels = torch.zeros(batch, dtype=torch.long, device=device)
        t = torch.tensor(500, device=device)
        repeats = max(3, 128 // batch)
        with torch.inference_mode():
            unet(x, t, class_labels=labels)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                unet(x, t, class_labels=labels)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        timings[batch] = round((time.perf_counter() - start) * 1000 / (repeats * batch), 2)
    return timings


if __name__ == "__main__":
    main()
