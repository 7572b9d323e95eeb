from __future__ import annotations

from collections import Counter

from shared.ingest.splits import assign_splits


def _data() -> tuple[list[str], list[str | None]]:
    labels = ["NV"] * 300 + ["MEL"] * 100 + ["DF"] * 14
    groups: list[str | None] = [f"p{i // 3}" for i in range(len(labels))]
    return labels, groups


def test_splits_are_fixed_by_the_seed() -> None:
    labels, groups = _data()
    assert assign_splits(labels, groups, 1) == assign_splits(labels, groups, 1)
    assert assign_splits(labels, groups, 1) != assign_splits(labels, groups, 2)


def test_splits_are_stratified_with_about_70_15_15() -> None:
    labels, groups = _data()
    splits = assign_splits(labels, groups, 0)
    share = Counter(splits)
    assert 0.60 < share["train"] / len(labels) < 0.80
    assert 0.08 < share["test"] / len(labels) < 0.22 and 0.08 < share["val"] / len(labels) < 0.22
    for split in ("train", "val", "test"):  # every class reaches every split, in proportion
        per_class = Counter(label for label, s in zip(labels, splits, strict=True) if s == split)
        assert set(per_class) == {"NV", "MEL", "DF"}
        assert per_class["NV"] > per_class["MEL"] > per_class["DF"]


def test_a_group_never_straddles_splits() -> None:
    labels, groups = _data()
    splits = assign_splits(labels, groups, 0)
    by_group: dict[str, set[str]] = {}
    for group, split in zip(groups, splits, strict=True):
        by_group.setdefault(str(group), set()).add(split)
    assert all(len(s) == 1 for s in by_group.values())


def test_ungrouped_images_are_their_own_group() -> None:
    labels = ["A"] * 50 + ["B"] * 10
    splits = assign_splits(labels, [None] * 60, 0)
    assert set(splits) == {"train", "val", "test"}
