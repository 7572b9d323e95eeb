from __future__ import annotations

from pathlib import Path

import pytest

from services.generator.config import GeneratorConfig


def test_resolution_must_divide_by_unet_and_vae_downsampling() -> None:
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 8"):
        GeneratorConfig(resolution=36, block_out_channels=(32, 64, 64, 64))
    with pytest.raises(ValueError, match=r"UNet 4 x VAE 4"):
        GeneratorConfig(resolution=40, block_out_channels=(32, 64, 64), latent=True,
                        vae_block_out_channels=(16, 32, 32))
    assert GeneratorConfig(resolution=64, latent=True, vae_block_out_channels=(16, 32)
                           ).sample_size == 32


def test_resolution_range_and_channels_are_checked() -> None:
    with pytest.raises(ValueError, match=r"resolution must be in \[32, 256\]"):
        GeneratorConfig(resolution=16)
    with pytest.raises(ValueError, match=r"resolution must be in \[32, 256\]"):
        GeneratorConfig(resolution=512)
    with pytest.raises(ValueError, match="channels must be 1"):
        GeneratorConfig(channels=4)
    assert GeneratorConfig(resolution=16, allow_tiny=True, block_out_channels=(16, 32),
                           attention_levels=()).resolution == 16


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    config = GeneratorConfig(num_classes=2, class_names=("a", "b"), block_out_channels=(16, 32),
                             attention_levels=(1,))
    config.to_json(tmp_path / "c.json")
    assert GeneratorConfig.from_json(tmp_path / "c.json") == config
    assert config.null_class_id == 2
    with pytest.raises(ValueError, match="unknown generator config keys"):
        GeneratorConfig.from_dict({"resolution": 32, "width": 3})
