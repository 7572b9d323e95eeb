"""Has a classifier learned its task? Its own balanced accuracy on real images against a bar.

Every classifier whose scores something else relies on (experiment arms, the OOD filter's
dataset classifier, the generator's quality probe) reports this beside what it scores:
a probe that recognises no real image of a class cannot say whether a generated one
looks like it, and an arm at chance is no baseline.
"""

from __future__ import annotations

from typing import Any

# Twice chance, capped at a quarter of the way from chance to perfect (so a binary task's
# bar is 0.625 rather than an impossible 1.0).
HEALTH_FACTOR = 2.0
HEALTH_CAP_SHARE = 0.25


def health_bar(num_classes: int) -> float:
    """The balanced accuracy below which a ``num_classes``-way classifier is called untrained."""
    chance = 1.0 / num_classes
    return min(HEALTH_FACTOR * chance, chance + HEALTH_CAP_SHARE * (1.0 - chance))


def classifier_health(
    balanced_accuracy: float | None, num_classes: int, source: str
) -> dict[str, Any]:
    """``{balanced_accuracy, chance, bar, ok, message}``; ``ok`` is None when nothing was
    measured (no validation images)."""
    chance = 1.0 / num_classes
    bar = health_bar(num_classes)
    if balanced_accuracy is None:
        return {
            "balanced_accuracy": None,
            "chance": chance,
            "bar": bar,
            "ok": None,
            "message": f"not measured: no {source}",
        }
    ok = balanced_accuracy >= bar
    message = (
        f"balanced accuracy {balanced_accuracy:.3f} on the {source} "
        f"(chance {chance:.3f}, bar {bar:.3f})"
    )
    if not ok:
        message += ": this classifier has not learned the task; read what it scores as noise"
    return {
        "balanced_accuracy": balanced_accuracy,
        "chance": chance,
        "bar": bar,
        "ok": ok,
        "message": message,
    }
