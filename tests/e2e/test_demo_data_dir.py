"""``tailsynth demo --data-dir``: the demo deletes only a directory it made, unless forced."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from services.cli import main
from services.demo import DEMO_MARKER, prepare_data_dir


def test_a_users_directory_is_refused_and_kept(tmp_path: Path) -> None:
    notes = tmp_path / "mine" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("do not lose")
    result = CliRunner().invoke(main, ["demo", "--data-dir", str(notes.parent)])
    assert result.exit_code != 0
    assert "not empty" in result.output and "--force" in result.output
    assert notes.read_text() == "do not lose"


def test_a_previous_demos_directory_is_emptied_and_marked_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    prepare_data_dir(data_dir)
    assert (data_dir / DEMO_MARKER).is_file()
    (data_dir / "serve.log").write_text("old run")
    prepare_data_dir(data_dir)
    assert sorted(p.name for p in data_dir.iterdir()) == [DEMO_MARKER]


def test_missing_or_empty_directories_are_used(tmp_path: Path) -> None:
    prepare_data_dir(tmp_path / "new" / "demo")
    (tmp_path / "empty").mkdir()
    prepare_data_dir(tmp_path / "empty")
    assert (tmp_path / "new" / "demo" / DEMO_MARKER).is_file()
    assert (tmp_path / "empty" / DEMO_MARKER).is_file()


def test_force_deletes_a_users_directory(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    prepare_data_dir(tmp_path / "mine", force=True)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [DEMO_MARKER]


def test_the_working_directory_and_a_file_are_refused_even_with_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work / "sub")
    for target in (Path("."), Path("..")):
        with pytest.raises(click.ClickException, match="would delete"):
            prepare_data_dir(target, force=True)
    assert (work / "sub").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(click.ClickException, match="is a file"):
        prepare_data_dir(tmp_path / "file", force=True)


def test_a_symlinked_data_dir_loses_the_link_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / DEMO_MARKER).write_text("")
    (target / "keep.txt").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    prepare_data_dir(link)
    assert (target / "keep.txt").is_file() and not link.is_symlink()
