"""docs/cli.md names every CLI verb and exit code, and its generated reference is up to
date; every ``tailsynth`` command in the CI examples (docs/ci/) and in the guides' shell
blocks parses with the CLI's own parser (in-process, no server)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
import yaml

from services.cli import ExitCode, main

DOCS = Path(__file__).resolve().parents[2] / "docs"
CI_EXAMPLES = (DOCS / "ci" / "github-actions.yml", DOCS / "ci" / "gitlab-ci.yml")
#: A tailsynth invocation at the start of a shell command or inside ``$( )``.
INVOCATION = re.compile(r"(?:^|[;&|(]|\$\()[ \t]*tailsynth[ \t]+(?P<args>[^\n;&|)]*)", re.M)


def _reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _verb_names() -> list[str]:
    return [" ".join(path) for path, _, _ in _reference().verbs(main)]


def parse(argv: list[str]) -> click.Context:
    """Parse ``tailsynth <argv>`` down to its verb as the CLI would, without running it;
    raises :class:`click.UsageError` for an unknown verb or flag, a missing argument or a
    bad value."""
    ctx = main.make_context("tailsynth", list(argv))
    command: click.Command = main
    while isinstance(command, click.Group):
        protected = getattr(ctx, "_protected_args", None)
        if protected is None:
            protected = ctx.protected_args
        name, sub, rest = command.resolve_command(ctx, [*protected, *ctx.args])
        assert name is not None and sub is not None, argv
        command = sub
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


@pytest.fixture
def pipeline_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory where the files an example brings along (its dataset archive)
    exist, as click checks ``exists=True`` paths while parsing."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _bring_along(argv: list[str], where: Path) -> None:
    for arg in argv:
        if re.fullmatch(r"[\w./-]+\.(zip|tar\.gz|tgz)", arg):
            (where / arg).parent.mkdir(parents=True, exist_ok=True)
            (where / arg).touch()


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def commands(shell: str) -> Iterator[list[str]]:
    """The argument lists of the ``tailsynth`` commands in a piece of shell."""
    joined = shell.replace("\\\n", " ")
    for match in INVOCATION.finditer(joined):
        argv = shlex.split(match["args"], comments=True)
        redirect = next((i for i, a in enumerate(argv) if re.match(r"^\d?>", a)), len(argv))
        yield argv[:redirect]


def test_every_verb_is_in_the_cli_reference() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    names = _verb_names()
    assert len(names) >= 25 and "tailsynth synthesize" in names
    for name in names:
        assert f"### `{name}`" in text, f"{name} is missing from docs/cli.md"


def test_the_generated_reference_is_current() -> None:
    path = DOCS / "cli.md"
    text = path.read_text(encoding="utf-8")
    assert text == _reference().updated(text, main), (
        "docs/cli.md is out of date: run .venv/bin/python docs/cli_reference.py"
    )


def test_every_exit_code_is_documented() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| (\d+) \| (.+) \|$", text, re.M))
    assert sorted(int(code) for code in table) == sorted(int(code) for code in ExitCode)


@pytest.mark.parametrize("example", CI_EXAMPLES, ids=lambda p: p.name)
def test_ci_examples_use_real_verbs_and_flags(example: Path, pipeline_files: Path) -> None:
    document = yaml.safe_load(example.read_text(encoding="utf-8"))
    found = [argv for text in _strings(document) for argv in commands(text)]
    used = set()
    for argv in found:
        if "--help" in argv:
            continue
        _bring_along(argv, pipeline_files)
        try:
            ctx = parse(argv)
        except click.UsageError as exc:
            pytest.fail(f"{example.name}: tailsynth {shlex.join(argv)}: {exc.format_message()}")
        used.add(ctx.command_path)
        if ctx.command_path == "tailsynth experiments run":
            assert ctx.params["require_gain"], "the experiment must be able to fail the run"
    # The whole campaign: upload, generator, synthesize, wait, download, experiment.
    assert {
        "tailsynth datasets upload",
        "tailsynth generators train",
        "tailsynth synthesize",
        "tailsynth jobs wait",
        "tailsynth download",
        "tailsynth experiments run",
    } <= used, used


def test_guides_shell_blocks_use_real_verbs_and_flags(pipeline_files: Path) -> None:
    checked = 0
    for guide in sorted(DOCS.glob("*.md")):
        text = guide.read_text(encoding="utf-8")
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S):
            for argv in commands(block):
                _bring_along(argv, pipeline_files)
                try:
                    parse(argv)
                except click.UsageError as exc:
                    pytest.fail(f"{guide.name}: tailsynth {shlex.join(argv)}: {exc}")
                checked += 1
    assert checked >= 5


def test_the_parser_refuses_what_the_cli_refuses() -> None:
    """The check above would catch a wrong verb, flag or value."""
    assert parse(["jobs", "wait", "J", "--timeout", "5"]).params["timeout"] == 5.0
    for wrong in (
        ["jobs", "wiat", "J"],
        ["synthesize", "--dataset", "D", "--generator", "G", "--counts", "DF=1"],
        ["jobs", "wait", "J", "--timeout", "soon"],
        ["experiments", "run"],  # --dataset is required
    ):
        with pytest.raises(click.UsageError):
            parse(wrong)


def test_links_between_docs_resolve() -> None:
    for guide in sorted(DOCS.glob("*.md")):
        text = guide.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (guide.parent / target).exists(), f"{guide.name} links to {target}"
