"""Reference images (image-to-video first frames) read from local paths, file:// or s3:// URIs."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def read_s3_object(uri: str, s3_endpoint: str | None, what: str = "reference_image") -> bytes:
    """The bytes of s3://bucket/key (a reference image, a voice-over); errors name ``what``."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise ValueError(f"{what} {uri!r}: give an S3 object as s3://bucket/path/file")
    # endpoint_url=None lets boto3 take AWS_ENDPOINT_URL(_S3) or the AWS default.
    try:
        return boto3.client("s3", endpoint_url=s3_endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise FileNotFoundError(f"{what} {uri}: cannot read it from S3 ({code or exc})") from None
    except BotoCoreError as exc:
        raise OSError(f"{what} {uri}: cannot read it from S3 ({exc}); check the S3 endpoint") from None


def load_reference_image(
    image: str | os.PathLike | np.ndarray | Image.Image, s3_endpoint: str | None = None
) -> Image.Image:
    """The RGB image of a reference: an array (uint8 [H, W, 3]), a PIL image, a local path, a
    file:// URI or an s3:// object. Files are read as the reference's diffusers load_image does:
    EXIF orientation applied, then converted to RGB."""
    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image).convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"reference_image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        return Image.fromarray(image)
    location = os.fspath(image)
    if location.startswith("s3://"):
        source = io.BytesIO(read_s3_object(location, s3_endpoint))
    else:
        if location.startswith("file://"):
            location = location[len("file://") :]
        elif "://" in location:
            raise ValueError(
                f"reference_image {location!r}: only local paths, file:// and s3:// URIs are read"
            )
        if not Path(location).is_file():
            raise FileNotFoundError(f"reference_image: no file at {location}")
        source = location
    with Image.open(source) as img:
        return ImageOps.exif_transpose(img).convert("RGB")
