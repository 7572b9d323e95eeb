from __future__ import annotations

from pathlib import Path

import pytest

from services.generator.config import GeneratorConfig, resolve_augment


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


@pytest.mark.parametrize(
    ("modes", "share"),
    [
        (("inpaint",), 0.1),
        (("inpaint", "img2img"), 0.5),
        (("generate", "inpaint", "img2img"), 0.5),
        (("img2img",), 1.0),
        (("img2img", "generate"), 1.0),
    ],
)
def test_full_mask_share_follows_the_modes_served(modes: tuple[str, ...], share: float) -> None:
    config = GeneratorConfig(modes=modes)  # type: ignore[arg-type]
    assert config.full_mask_probability == share
    # Dumped resolved: the checkpoint's config says what training used.
    assert config.to_dict()["full_mask_probability"] == share
    assert GeneratorConfig(modes=modes, full_mask_probability=0.3  # type: ignore[arg-type]
                           ).full_mask_probability == 0.3


def test_modes_and_augment_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown mode 'paint'"):
        GeneratorConfig(modes=("inpaint", "paint"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="modes must be distinct and not empty"):
        GeneratorConfig(modes=())
    with pytest.raises(ValueError, match="modes must be distinct"):
        GeneratorConfig(modes=("inpaint", "inpaint"))
    with pytest.raises(ValueError, match="augment must be"):
        GeneratorConfig(augment="rotate")  # type: ignore[arg-type]


def test_a_config_written_before_modes_loads_as_the_inpaint_generator_it_was() -> None:
    old = GeneratorConfig().to_dict()
    for key in ("modes", "augment"):
        del old[key]
    old["full_mask_probability"] = 0.1
    config = GeneratorConfig.from_dict(old)
    assert config.modes == ("inpaint",) and config.full_mask_probability == 0.1


def test_auto_augmentation_keeps_chest_x_ray_laterality() -> None:
    assert resolve_augment("auto", modality="dermoscopy", channels=3) == "dermoscopy"
    assert resolve_augment("auto", modality="chest_xray", channels=3) == "none"
    # A grayscale set under the default modality is a radiograph, not dermoscopy.
    assert resolve_augment("auto", modality="dermoscopy", channels=1) == "none"
    assert resolve_augment("auto", modality="fundus", channels=3) == "none"
    assert resolve_augment("dermoscopy", modality="chest_xray", channels=1) == "dermoscopy"
    assert resolve_augment("none", modality="dermoscopy", channels=3) == "none"
    with pytest.raises(ValueError, match="augment must be 'auto'"):
        resolve_augment("flip", modality="dermoscopy", channels=3)


@pytest.mark.parametrize(
    ("modes", "prediction_type"),
    [(("inpaint",), "epsilon"), (("inpaint", "img2img"), "epsilon"),
     (("inpaint", "generate"), "v_prediction"), (("generate",), "v_prediction")],
)
def test_generators_that_serve_generate_predict_v(modes: tuple[str, ...],
                                                  prediction_type: str) -> None:
    assert GeneratorConfig(modes=modes).prediction_type == prediction_type  # type: ignore[arg-type]


def test_prediction_type_is_checked_and_v_needs_a_zero_snr_schedule() -> None:
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        GeneratorConfig(prediction_type="sample")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="use beta_schedule 'squaredcos_cap_v2'"):
        GeneratorConfig(prediction_type="v_prediction", beta_schedule="linear")


def test_a_config_written_before_prediction_type_loads_as_the_epsilon_model_it_was() -> None:
    saved = GeneratorConfig(modes=("inpaint", "generate")).to_dict()
    del saved["prediction_type"]
    assert GeneratorConfig.from_dict(saved).prediction_type == "epsilon"


@pytest.mark.parametrize(
    "config",
    [
        GeneratorConfig(),
        GeneratorConfig(block_out_channels=(16, 32), attention_levels=()),
        GeneratorConfig(resolution=64, channels=1, num_classes=2, layers_per_block=3,
                        block_out_channels=(32, 64, 64, 128), attention_levels=(1, 2)),
    ],
)
def test_unet_parameters_counts_the_model_build_unet_makes(config: GeneratorConfig) -> None:
    import torch

    from services.generator.model import build_unet

    with torch.device("meta"):  # shapes only, no memory
        built = sum(p.numel() for p in build_unet(config).parameters())
    assert config.unet_parameters == built


def test_a_unet_over_the_parameter_limit_is_refused_before_training() -> None:
    with pytest.raises(ValueError, match=r"make a UNet of \d+\.\d billion parameters"):
        GeneratorConfig(block_out_channels=(4096,) * 6, attention_levels=(0, 1, 2, 3, 4, 5),
                        resolution=32)
