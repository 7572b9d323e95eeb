"""Where a tenant's pretrained weights may come from (no torch import: the API uses it).

A ``source`` is either an absolute path inside one of the operator's weights roots
(``Settings.weights_roots``) or a Hugging Face model id, resolved only in the offline
cache. Anything else is refused with one message that depends on the source's text
alone, never on the filesystem, so a refusal says nothing about which paths exist.

:func:`check_source` is the lexical check (the API applies it before a job exists);
:func:`resolve_source_directory` is the worker's, which also resolves symlinks so a link
inside a root cannot lead out of it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

# Hugging Face's repo id rules: an optional namespace, a name of [\w.-], no "--" or "..".
_MODEL_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


class WeightsSourceRefused(ValueError):
    """The source is neither under a weights root nor a model id."""


def refusal(source: str, weights_roots: Sequence[Path]) -> str:
    """The one message of a refused source (its text and the roots, nothing found)."""
    roots = ", ".join(str(root) for root in weights_roots) or "none configured"
    return (
        f"source {source!r} is neither a directory under the weights roots ({roots}) nor "
        f"a model id (org/name) in the offline Hugging Face cache"
    )


def is_path(source: str) -> bool:
    """Whether ``source`` names a filesystem path rather than a model id."""
    return source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1


def check_source(source: str, weights_roots: Sequence[Path]) -> str:
    """``source`` normalised, or :class:`WeightsSourceRefused` (no filesystem access).

    A path must be absolute and, with ``..`` folded, inside a weights root; a model id
    must follow Hugging Face's rules (so it cannot climb out of the cache either).
    """
    if is_path(source):
        path = PurePosixPath(os.path.normpath(source))
        roots = [PurePosixPath(os.path.normpath(root)) for root in weights_roots]
        if source.startswith("/") and any(path.is_relative_to(root) for root in roots):
            return str(path)
        raise WeightsSourceRefused(refusal(source, weights_roots))
    if not _MODEL_ID.fullmatch(source) or "--" in source or ".." in source:
        raise WeightsSourceRefused(refusal(source, weights_roots))
    return source


def resolve_source_directory(source: str, weights_roots: Sequence[Path]) -> Path:
    """The local directory of an allowed ``source``: a real path inside a weights root
    (symlinks resolved), or the offline cache's snapshot of a model id.

    Raises:
        WeightsSourceRefused: refused by :func:`check_source`, or a path whose real
            location (after symlinks) is outside every weights root; a model id that is
            not in the offline cache.
    """
    checked = check_source(source, weights_roots)
    if is_path(checked):
        real = Path(checked).resolve()
        if not any(real.is_relative_to(Path(root).resolve()) for root in weights_roots):
            raise WeightsSourceRefused(refusal(source, weights_roots))
        return real
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(checked, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as exc:
        raise WeightsSourceRefused(refusal(source, weights_roots)) from exc
