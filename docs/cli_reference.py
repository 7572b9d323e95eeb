"""Write the verb reference of docs/cli.md from the CLI's own click definitions.

    .venv/bin/python docs/cli_reference.py          # rewrite the generated part
    .venv/bin/python docs/cli_reference.py --check  # exit 1 if it is out of date

Only the text between the two markers is generated; the rest of docs/cli.md is prose.
``tests/docs/test_cli_docs.py`` fails when a verb or flag changes and this was not run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

BEGIN = "<!-- BEGIN GENERATED: docs/cli_reference.py -->"
END = "<!-- END GENERATED -->"
CLI_MD = Path(__file__).with_name("cli.md")
#: Options every client verb takes; listed once in the prose, not under every verb.
CONNECTION_OPTIONS = ("--url", "--api-key", "--max-retries")


def verbs(group: click.Group, path: tuple[str, ...] = ("tailsynth",)) -> Iterator[
    tuple[tuple[str, ...], click.Command, click.Context]
]:  # fmt: skip
    """Every leaf command under ``group``, with its full name and a context for its help."""
    parent = click.Context(group, info_name=path[-1]) if len(path) == 1 else None
    yield from _walk(group, path, parent)


def _walk(
    group: click.Group, path: tuple[str, ...], ctx: click.Context | None
) -> Iterator[tuple[tuple[str, ...], click.Command, click.Context]]:
    for name in sorted(group.commands):
        command = group.commands[name]
        sub = click.Context(command, info_name=name, parent=ctx)
        if isinstance(command, click.Group):
            yield from _walk(command, (*path, name), sub)
        else:
            yield (*path, name), command, sub


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(main: click.Group) -> str:
    """The generated Markdown: one section per verb, usage, help and a flag table."""
    out: list[str] = []
    for path, command, ctx in verbs(main):
        names = {opt for p in command.params for opt in getattr(p, "opts", [])}
        client = set(CONNECTION_OPTIONS) <= names
        out.append(f"### `{' '.join(path)}`\n")
        usage = command.get_usage(ctx).removeprefix("Usage: ")
        out.append(f"```\n{usage}\n```\n")
        help_text = (command.help or "").strip()
        if help_text:
            out.append(" ".join(help_text.replace("\b\n", "").split()) + "\n")
        rows = []
        for param in command.params:
            if not isinstance(param, click.Option) or param.opts[0] in CONNECTION_OPTIONS:
                continue  # arguments are in the usage line
            record = param.get_help_record(ctx)
            if record is not None:
                rows.append(f"| `{_cell(record[0])}` | {_cell(record[1])} |")
        if rows:
            out.append("| flag | meaning |\n| --- | --- |\n" + "\n".join(rows) + "\n")
        if client:
            out.append("Client verb: also `--url`, `--api-key`, `--max-retries`.\n")
    return "\n".join(out)


def updated(text: str, main: click.Group) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{render(main)}\n{END}{tail}"


def run(argv: list[str]) -> int:
    from services.cli import main

    text = CLI_MD.read_text(encoding="utf-8")
    new = updated(text, main)
    if "--check" in argv:
        if new != text:
            sys.stderr.write("docs/cli.md is out of date: run docs/cli_reference.py\n")
            return 1
        return 0
    CLI_MD.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(run(sys.argv[1:]))
