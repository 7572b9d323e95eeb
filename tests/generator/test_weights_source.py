"""A tenant names pretrained weights only inside the weights roots or by a cached model id,
and a refusal reads the same whether or not the path exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.generator.weights_source import (
    WeightsSourceRefused,
    check_source,
    refusal,
    resolve_source_directory,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "weights" / "sd-tiny").mkdir(parents=True)
    return tmp_path / "weights"


def test_paths_inside_a_root_and_model_ids_pass(root: Path) -> None:
    assert check_source(f"{root}/sd-tiny", [root]) == f"{root}/sd-tiny"
    assert check_source(f"{root}/./a/../sd-tiny/", [root]) == f"{root}/sd-tiny"
    for model_id in ("runwayml/stable-diffusion-v1-5", "sd-turbo", "org/name.v2_1"):
        assert check_source(model_id, [root]) == model_id
    assert resolve_source_directory(f"{root}/sd-tiny", [root]) == (root / "sd-tiny").resolve()


@pytest.mark.parametrize(
    "source",
    ["/etc", "/", "{root}/../outside", "{root}-evil/x", "../weights/sd-tiny", "./sd-tiny",
     "~/models", "a/b/c", "org/../../etc", "org--name/x", "-org/x", "org/x\\y", ""],
)
def test_everything_else_is_refused_by_its_text(root: Path, source: str) -> None:
    source = source.format(root=root)
    with pytest.raises(WeightsSourceRefused) as refused:
        check_source(source, [root])
    assert str(refused.value) == refusal(source, [root])


def test_a_refusal_does_not_say_whether_a_path_exists(root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret-project").mkdir()
    messages = []
    for name in ("secret-project", "no-such-project"):
        with pytest.raises(WeightsSourceRefused) as refused:
            resolve_source_directory(str(tmp_path / name), [root])
        messages.append(str(refused.value).replace(name, "<name>"))
    assert messages[0] == messages[1]
    with pytest.raises(WeightsSourceRefused, match="none configured"):
        check_source(str(root / "sd-tiny"), [])


def test_a_symlink_inside_a_root_cannot_lead_out_of_it(root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (root / "escape").symlink_to(tmp_path / "elsewhere")
    check_source(str(root / "escape"), [root])  # lexically inside...
    with pytest.raises(WeightsSourceRefused):  # ...but really outside
        resolve_source_directory(str(root / "escape"), [root])


def test_a_model_id_resolves_only_in_the_offline_cache(root: Path) -> None:
    with pytest.raises(WeightsSourceRefused, match="offline Hugging Face cache"):
        resolve_source_directory("tailsynth-test/not-a-cached-model", [root])
