"""GPU throughput of the stages that need one: generator training and sampling at 64-256
px, the UNet's bf16 TFLOP/s at large batch, classifier training and scoring.

Everything runs through the project's own entry points (``train_generator``,
``load_generator(...).inpaint``, ``train_classifier``) on random images, so the figures
include what a worker pays: batch drawing and augmentation on the host, EMA updates, the
checkpoint write, classifier-free guidance (a doubled batch) and the scheduler.

- Generator training: steady-state optimiser steps per second, timed between the
  ``progress`` callbacks of step ``--warmup-steps`` and the last step (the device is
  synchronised in the callback), so start-up and the final checkpoint are left out.
- Sampling: ``inpaint`` images per second at the API's defaults (DDIM, 25 steps,
  guidance 6), after one warm-up call.
- TFLOP/s: FLOPs of one UNet forward pass counted by ``torch.utils.flop_counter`` (a
  multiply-add is 2 FLOPs), divided by the measured time at a large batch; training
  counts forward + backward as 3 forwards. bf16 autocast as the workers use it, fp32
  beside it for contrast.
- Classifier: training images per second of the last epoch of ``train_classifier``
  (DataLoader workers decode and augment on the host), scoring images per second.

Writes one JSON document to ``--out`` after every measurement (a run stopped by a time
limit keeps what it finished) and prints it at the end.

    python benchmarks/gpu_throughput.py --out gpu.json               # on a CUDA host
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/gpu_throughput.py --smoke   # CPU check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from services.generator.config import GeneratorConfig
from services.generator.model import build_unet, unet_autocast
from services.generator.sampling import load_generator
from services.generator.training import train_generator
from services.trainer.classifier import ClassifierConfig, train_classifier

NUM_CLASSES = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_throughput.json"))
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on any device: checks the script, measures nothing")
    parser.add_argument("--sections", default="generator,tflops,classifier")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None,
                        help="only these generator/TFLOP/s resolutions of the plan")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = _smoke_plan() if args.smoke else _gpu_plan()
    if args.resolutions is not None:
        for section in ("generator", "tflops"):
            plan[section] = [r for r in plan[section] if r["resolution"] in args.resolutions]
    report: dict[str, Any] = {"environment": _environment(device), "plan": plan}
    sections = set(args.sections.split(","))

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2))

    save()
    if "generator" in sections:
        report["generator"] = []
        for run in plan["generator"]:
            report["generator"].append(_generator_figures(run, plan, device))
            save()
    if "tflops" in sections:
        report["unet_tflops"] = []
        for run in plan["tflops"]:
            report["unet_tflops"].append(_unet_tflops(run, plan, device))
            save()
    if "classifier" in sections:
        report["classifier"] = []
        for run in plan["classifier"]:
            report["classifier"].append(_classifier_figures(run, device))
            save()
    print(json.dumps(report, indent=2))  # noqa: T201


def _gpu_plan() -> dict[str, Any]:
    """A UNet of the size a GPU user trains at 64-256 px (DDPM-like widths, two ResNet
    layers per block, attention at the lowest resolution), batches that fill an H100."""
    return {
        "unet": {"block_out_channels": [128, 256, 256, 512], "layers_per_block": 2,
                 "attention_levels": [3]},
        "generator": [
            {"resolution": 64, "train_batch": 128, "sample_batch": 256, "sample_images": 512},
            {"resolution": 128, "train_batch": 64, "sample_batch": 128, "sample_images": 256},
            {"resolution": 256, "train_batch": 32, "sample_batch": 64, "sample_images": 128},
        ],
        "train_steps": 40, "warmup_steps": 10, "inference_steps": 25, "guidance_scale": 6.0,
        "tflops": [{"resolution": 64, "batch": 512}, {"resolution": 128, "batch": 128},
                   {"resolution": 256, "batch": 16}],  # 32 trains in 140 GiB, 64 does not
        "classifier": [
            {"backbone": "resnet18", "image_size": 64, "batch": 256, "train_images": 8192,
             "workers": 8},
            {"backbone": "resnet50", "image_size": 224, "batch": 128, "train_images": 4096,
             "workers": 12},
        ],
    }


def _smoke_plan() -> dict[str, Any]:
    return {
        "unet": {"block_out_channels": [16, 32], "layers_per_block": 1,
                 "attention_levels": [1]},
        "generator": [{"resolution": 32, "train_batch": 4, "sample_batch": 4,
                       "sample_images": 4}],
        "train_steps": 4, "warmup_steps": 1, "inference_steps": 2, "guidance_scale": 6.0,
        "tflops": [{"resolution": 32, "batch": 4}],
        "classifier": [{"backbone": "resnet10t", "image_size": 32, "batch": 16,
                        "train_images": 64, "workers": 0}],
    }


def _environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "device": str(device),
                            "python": platform.python_version()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    multiprocessors=properties.multi_processor_count)
    return info


def _config(plan: dict[str, Any], resolution: int, batch: int, steps: int) -> GeneratorConfig:
    unet = plan["unet"]
    return GeneratorConfig(
        resolution=resolution, num_classes=NUM_CLASSES,
        block_out_channels=tuple(unet["block_out_channels"]),
        layers_per_block=unet["layers_per_block"],
        attention_levels=tuple(unet["attention_levels"]),
        batch_size=batch, max_train_steps=steps, checkpoint_every=steps, lr_warmup_steps=5,
    )


def _random_set(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    return images, masks, np.arange(n) % NUM_CLASSES


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generator_figures(run: dict[str, Any], plan: dict[str, Any],
                       device: torch.device) -> dict[str, Any]:
    size, steps, warm = run["resolution"], plan["train_steps"], plan["warmup_steps"]
    config = _config(plan, size, run["train_batch"], steps)
    images, masks, labels = _random_set(max(256, run["sample_images"]), size)
    stamps: dict[int, float] = {}

    def progress(step: int, total: int) -> None:
        _sync(device)
        stamps[step] = time.perf_counter()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as directory:
        result = train_generator(images, masks, labels, [f"c{k}" for k in range(NUM_CLASSES)],
                                 config, Path(directory), device=device, progress=progress)
        train_peak = _peak_gib(device)
        steps_per_s = (steps - warm) / (stamps[steps] - stamps[warm])
        assert result.checkpoint is not None
        generator = load_generator(result.checkpoint.path, device=device)
        n = run["sample_images"]
        kwargs = {"scheduler": "ddim", "num_inference_steps": plan["inference_steps"],
                  "guidance_scale": plan["guidance_scale"], "batch_size": run["sample_batch"]}
        ids, seeds = labels[:n], np.arange(n)
        w = min(8, n)
        generator.inpaint(images[:w], masks[:w], ids[:w], seeds[:w], **kwargs)  # warm-up
        _sync(device)
        start = time.perf_counter()
        generator.inpaint(images[:n], masks[:n], ids[:n], seeds, **kwargs)
        _sync(device)
        sample_seconds = time.perf_counter() - start
    return {
        "resolution": size,
        "unet_parameters_m": round(sum(p.numel() for p in generator.unet.parameters()) / 1e6, 1),
        "train_batch": run["train_batch"],
        "train_steps_per_s": round(steps_per_s, 2),
        "train_images_per_s": round(steps_per_s * run["train_batch"], 1),
        "train_peak_gib": train_peak,
        "sample_batch": run["sample_batch"], "sample_images": n,
        "sample_images_per_s": round(n / sample_seconds, 1),
    }


def _unet_tflops(run: dict[str, Any], plan: dict[str, Any],
                 device: torch.device) -> dict[str, Any]:
    size, batch = run["resolution"], run["batch"]
    config = _config(plan, size, batch, 1)
    unet = build_unet(config).to(device)
    channels = 2 * config.model_channels + 1  # noisy sample, masked known image, mask

    def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.randn(n, channels, size, size, device=device),
                torch.full((n,), 500, device=device),
                torch.zeros(n, dtype=torch.long, device=device))

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(*inputs(2)[:2], class_labels=inputs(2)[2])
    flops_per_image = counter.get_total_flops() / 2
    x, t, labels = inputs(batch)
    figures: dict[str, Any] = {"resolution": size, "batch": batch,
                               "gflop_per_image_forward": round(flops_per_image / 1e9, 2)}
    for precision in ("bf16", "fp32"):
        precision_config = dataclasses.replace(
            config, mixed_precision="bf16" if precision == "bf16" else "no")

        def forward(cfg: GeneratorConfig = precision_config) -> None:
            with torch.inference_mode(), unet_autocast(device, cfg):
                unet(x, t, class_labels=labels)

        def train_step(cfg: GeneratorConfig = precision_config) -> None:
            with unet_autocast(device, cfg):
                out = unet(x, t, class_labels=labels).sample
            out.float().square().mean().backward()

        seconds = _time(forward, device)
        figures[f"{precision}_forward_tflops"] = round(batch * flops_per_image / seconds / 1e12, 1)
        seconds = _time(train_step, device)
        figures[f"{precision}_train_tflops"] = round(
            3 * batch * flops_per_image / seconds / 1e12, 1)
        unet.zero_grad(set_to_none=True)
    figures["peak_gib"] = _peak_gib(device)
    return figures


def _time(step: Callable[[], None], device: torch.device, warmup: int = 3,
          repeats: int = 10) -> float:
    """Mean seconds of one call, after warm-up calls (cuDNN picks its kernels there)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _classifier_figures(run: dict[str, Any], device: torch.device) -> dict[str, Any]:
    n, size = run["train_images"], run["image_size"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % NUM_CLASSES
    config = ClassifierConfig(backbone=run["backbone"], image_size=size, epochs=2,
                              batch_size=run["batch"], inference_batch_size=2 * run["batch"],
                              device=str(device), seed=0, num_workers=run["workers"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    classifier = train_classifier(images, labels, [f"c{k}" for k in range(NUM_CLASSES)], config)
    train_rate = n / classifier.history.epochs[-1].seconds
    classifier.features_and_logits(images[: 2 * run["batch"]])  # warm-up
    _sync(device)
    start = time.perf_counter()
    classifier.features_and_logits(images)
    _sync(device)
    return {
        "backbone": run["backbone"], "image_size": size, "batch": run["batch"],
        "dataloader_workers": run["workers"],
        "train_images_per_s": round(train_rate, 1),
        "score_images_per_s": round(n / (time.perf_counter() - start), 1),
        "peak_gib": _peak_gib(device),
    }


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


if __name__ == "__main__":
    main()
