"""The DAM's key layout and the whole-file checksum every backend records.

Key layout, one folder per (campaign, brief, locale, aspect)::

    campaign=<campaign_id>/brief=<brief_id>/locale=<locale>/<aspect>/<render_id>.<ext>
    campaign=<campaign_id>/brief=<brief_id>/locale=<locale>/<aspect>/<render_id>.done.json

``<aspect>`` is the aspect ratio with ``:`` replaced by ``x`` ("16:9" -> "16x9"):
``:`` is legal in S3 keys but not in Windows paths and is awkward in URLs and
shells, and ``x`` reads the same way.
"""

from __future__ import annotations

import hashlib
import os
import re

COMPLETION_SUFFIX = ".done.json"

# Key segments come from ids and locale tags that ingest has already checked;
# this guards the key layout itself (no '/', no '..', nothing a path would mangle).
_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_ASPECT = re.compile(r"^([1-9][0-9]{0,3}):([1-9][0-9]{0,3})$")
EXTENSION = re.compile(r"^[a-z0-9]{1,10}$")
"""a deliverable's file extension as it appears in keys: lowercase letters or digits, no dot"""


def _segment(name: str, value: str) -> str:
    if not isinstance(value, str) or not _KEY_SEGMENT.match(value):
        raise ValueError(
            f"{name}={value!r} cannot be used in a DAM key: use 1-128 characters of A-Z a-z 0-9 . _ -, "
            "not starting with '.'"
        )
    return value


def aspect_key(aspect_ratio: str) -> str:
    """Key-safe form of an aspect ratio: "16:9" -> "16x9"."""
    match = _ASPECT.match(aspect_ratio) if isinstance(aspect_ratio, str) else None
    if not match:
        raise ValueError(f"aspect_ratio={aspect_ratio!r} is not of the form 'W:H' (e.g. '16:9', '9:16', '1:1')")
    return f"{match.group(1)}x{match.group(2)}"


def campaign_prefix(campaign_id: str) -> str:
    """The folder of every render of one campaign (no trailing '/')."""
    return f"campaign={_segment('campaign_id', campaign_id)}"


def render_key_prefix(campaign_id: str, brief_id: str, locale: str, aspect_ratio: str,
                      variant_id: str | None = "main") -> str:
    """The folder of a render's objects, relative to the DAM root (no trailing '/'):
    ``campaign=<id>/brief=<id>/variant=<id>/locale=<tag>/<aspect>``. ``variant_id=None`` gives
    the layout before creative variants (no variant segment), which DAMs written then still use."""
    variant = f"/variant={_segment('variant_id', variant_id)}" if variant_id is not None else ""
    return (
        f"{campaign_prefix(campaign_id)}/brief={_segment('brief_id', brief_id)}{variant}"
        f"/locale={_segment('locale', locale)}/{aspect_key(aspect_ratio)}"
    )


def render_key(campaign_id: str, brief_id: str, locale: str, aspect_ratio: str, render_id: str, ext: str,
               variant_id: str = "main") -> str:
    """The DAM key of one deliverable of a render."""
    if not EXTENSION.match(ext):
        raise ValueError(f"ext={ext!r} is not a file extension: use 1-10 lowercase letters or digits, no dot")
    prefix = render_key_prefix(campaign_id, brief_id, locale, aspect_ratio, variant_id)
    return f"{prefix}/{_segment('render_id', render_id)}.{ext}"


def completion_key(key_prefix: str, render_id: str) -> str:
    """The key of a render's completion record, written after all its assets."""
    return f"{key_prefix}/{_segment('render_id', render_id)}{COMPLETION_SUFFIX}"


def check_key(key: str) -> str:
    """``key`` itself, once it is known to stay inside the DAM root."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"DAM key {key!r} must be a relative path without empty, '.' or '..' segments")
    return key


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
