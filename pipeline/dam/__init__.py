"""The DAM: where deliverables are kept, behind one interface, :class:`DAM`.

Where each part lives:

- this module: :func:`open_dam`, which picks a backend from a URI, and the
  interface (:class:`DAM`, :class:`StoredObject`, :class:`DAMError`, defined in
  :mod:`pipeline.dam.base` so that the backends need not import this module);
- :mod:`pipeline.dam.keys`: the key layout and the whole-file SHA-256;
- :mod:`pipeline.dam.local`: a local directory (the default, ``./dam``);
- :mod:`pipeline.dam.s3`: an S3 bucket + prefix (any S3-compatible store via an
  endpoint URL; credentials from the standard AWS chain).

What a render's objects mean together (assets, then the completion record) is
the archive stage's business: :mod:`pipeline.archive`.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlparse

from pipeline.dam.base import DAM, DAMError, StoredObject

__all__ = ["DAM", "DAMError", "StoredObject", "open_dam"]


def open_dam(uri: str | os.PathLike = "./dam", s3_endpoint: str | None = None, **s3_options: Any) -> DAM:
    """Open a DAM from ``./dam``, ``/abs/path``, ``file:///abs/path`` or ``s3://bucket/prefix``.

    ``s3_endpoint`` is the endpoint URL of an S3-compatible store; left None,
    boto3 uses AWS (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when set).
    ``s3_options`` go to :class:`~pipeline.dam.s3.S3DAM`.
    """
    from pipeline.dam.local import LocalDAM

    text = os.fspath(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        from pipeline.dam.s3 import S3DAM  # here: a local DAM needs no boto3

        return S3DAM(parsed.netloc, unquote(parsed.path), endpoint_url=s3_endpoint, **s3_options)
    if s3_endpoint or s3_options:
        raise DAMError(f"DAM {text!r} is a local directory; S3 options ({'s3_endpoint' if s3_endpoint else ', '.join(s3_options)}) apply only to s3:// DAMs")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DAMError(f"DAM {text!r}: file:// URIs must name a local path (file:///abs/path)")
        return LocalDAM(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive
        raise DAMError(f"DAM {text!r}: unsupported scheme {parsed.scheme!r}; use a directory path, file:///abs/path or s3://bucket/prefix")
    return LocalDAM(text)

