"""Progress for waits, uploads and downloads: a tqdm bar on a terminal, plain lines in a
log (CI), and never the same line twice.

Each renderer is a callback for the client (``on_progress=``) and a context manager that
closes its bar. Lines go to stderr, so stdout stays for results (``--json``).
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Self, TextIO

from tqdm import tqdm

from services.api.schemas import JobRead


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Renderer:
    def __init__(self, stream: TextIO | None, tty: bool | None) -> None:
        self.stream = stream or sys.stderr
        self.tty = _is_tty(self.stream) if tty is None else tty
        self.bar: tqdm | None = None  # type: ignore[type-arg]
        self.last_line: str | None = None

    def line(self, text: str) -> None:
        """Write ``text`` unless it is the line written last."""
        if text != self.last_line:
            self.last_line = text
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class JobProgress(_Renderer):
    """A job's progress: a bar of the job's percent with its state and stage on a
    terminal; elsewhere a line when the state, the stage or the whole percent changes."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        super().__init__(stream, tty)

    def __call__(self, job: JobRead) -> None:
        p = job.progress
        where = f"{job.kind} {job.state} {job.stage}"
        if self.tty:
            if self.bar is None:
                self.bar = tqdm(
                    total=100.0,
                    file=self.stream,
                    unit="%",
                    bar_format="{desc} |{bar}| {n:.0f}% [{elapsed}]",
                    leave=True,
                )
            self.bar.set_description_str(f"{where} {p.done}/{p.total}", refresh=False)
            self.bar.update(p.percent - self.bar.n)
            return
        self.line(f"job {job.id}: {where} {p.done}/{p.total} ({p.percent:.0f}%)")


class ByteProgress(_Renderer):
    """Bytes sent or received: a bar on a terminal; elsewhere a line per tenth done
    (per 10 MiB when the total is unknown)."""

    def __init__(self, what: str, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        super().__init__(stream, tty)
        self.what = what

    def __call__(self, done: int, total: int | None) -> None:
        if self.tty:
            if self.bar is None:
                self.bar = tqdm(
                    total=total,
                    file=self.stream,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=self.what,
                    initial=0,
                )
            if total is not None and self.bar.total != total:
                self.bar.total = total
            self.bar.update(done - self.bar.n)
            return
        if total:
            step = f"{10 * (10 * done // total)}%"
            self.line(f"{self.what}: {step} of {_size(total)}")
        else:
            self.line(f"{self.what}: {_size(done - done % (10 * 1024 * 1024))}")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
