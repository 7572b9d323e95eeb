"""Text prompts per class and attribute for text-conditioned (pretrained) pipelines.

Following the fine-grained prompts of text-controlled diffusion augmentation for skin
disease (Akrout et al., 2023): a modality phrase, the condition's full name, and an
optional attribute (skin tone, body site, acquisition detail) that varies images within
a class, e.g. ``"a dermoscopic image of melanoma, on fair skin"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# ISIC 2019 abbreviations -> the condition names a text encoder knows.
ISIC_CLASS_DESCRIPTIONS: Mapping[str, str] = {
    "MEL": "melanoma",
    "NV": "melanocytic nevus",
    "BCC": "basal cell carcinoma",
    "AK": "actinic keratosis",
    "BKL": "benign keratosis",
    "DF": "dermatofibroma",
    "VASC": "vascular lesion",
    "SCC": "squamous cell carcinoma",
}

MODALITY_TEMPLATES: Mapping[str, str] = {
    "dermoscopy": "a dermoscopic image of {class_name}",
    "chest_xray": "a chest x-ray of a child with {class_name}",
    "fundus": "a retinal fundus photograph with {class_name}",
}


@dataclass(frozen=True)
class PromptTemplates:
    """How a class (and optionally an attribute) becomes a prompt.

    Attributes:
        template: format string with ``{class_name}``.
        attribute_template: format string with ``{class_name}`` and ``{attribute}``.
        class_descriptions: class label -> phrase (labels without one are used as is).
        attributes: class label -> attributes to vary over; ``"*"`` applies to all classes.
        negative_prompt: optional negative prompt for classifier-free guidance.
    """

    template: str = MODALITY_TEMPLATES["dermoscopy"]
    attribute_template: str = MODALITY_TEMPLATES["dermoscopy"] + ", {attribute}"
    class_descriptions: Mapping[str, str] = field(
        default_factory=lambda: dict(ISIC_CLASS_DESCRIPTIONS))
    attributes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    negative_prompt: str | None = None

    @classmethod
    def for_modality(cls, modality: str, **overrides: object) -> PromptTemplates:
        if modality not in MODALITY_TEMPLATES:
            raise ValueError(f"unknown modality {modality!r}; choose one of "
                             f"{', '.join(MODALITY_TEMPLATES)}")
        base = MODALITY_TEMPLATES[modality]
        return cls(template=base, attribute_template=base + ", {attribute}",
                   **overrides)  # type: ignore[arg-type]

    def prompt(self, class_label: str, attribute: str | None = None) -> str:
        """The prompt for one class label and optional attribute."""
        name = self.class_descriptions.get(class_label, class_label)
        if attribute:
            return self.attribute_template.format(class_name=name, attribute=attribute)
        return self.template.format(class_name=name)

    def prompts_for(self, class_labels: Sequence[str], seeds: Sequence[int]) -> list[str]:
        """One prompt per image; its attribute (if the class has any) is drawn from the
        image's seed, so a prompt is reproducible from the provenance."""
        prompts = []
        for label, seed in zip(class_labels, seeds, strict=True):
            options = list(self.attributes.get(label, ())) + list(self.attributes.get("*", ()))
            attribute = None
            if options:
                attribute = options[int(np.random.default_rng(int(seed)).integers(len(options)))]
            prompts.append(self.prompt(label, attribute))
        return prompts
