"""Integrity sidecars, with no imports beyond the standard library: the storage layer
writes them and the worker libraries (classifier, generator) check them on GPU hosts
that carry no database or object-store client."""

from __future__ import annotations

SHA256_SUFFIX = ".sha256"  # the sidecar object holding another object's sha256 (hex)
