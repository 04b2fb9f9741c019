"""Locales and the languages the model speaks.

The released model was trained on dialogue in seven languages; a locale is
renderable only when it maps to one of them. Locale tags are BCP-47 and are
compared in canonical form (``en-us`` -> ``en-US``).
"""

from __future__ import annotations

import re

# The model's own names for its languages (they appear verbatim in prompts).
LANGUAGES = ("English", "Mandarin", "Cantonese", "Japanese", "Korean", "German", "French")

# language subtag -> model language, for languages whose every region is fine.
_BY_LANGUAGE = {"en": "English", "de": "German", "fr": "French", "cmn": "Mandarin", "yue": "Cantonese"}
# Whole tags whose region or script decides the language.
_BY_TAG = {
    "ja-JP": "Japanese",
    "ko-KR": "Korean",
    "zh-CN": "Mandarin",
    "zh-SG": "Mandarin",
    "zh-TW": "Mandarin",
    "zh-HK": "Cantonese",
    "zh-MO": "Cantonese",
}

# language (2-3 letters, or 5-8 registered), then script / region / variant subtags.
_BCP47 = re.compile(
    r"^[A-Za-z]{2,3}(-[A-Za-z]{4})?(-([A-Za-z]{2}|[0-9]{3}))?(-([A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*$"
)


class LocaleError(ValueError):
    """A locale tag that is not well-formed BCP-47."""


def canonical_locale(tag: str) -> str:
    """Return ``tag`` in canonical BCP-47 case (``EN_us`` -> ``en-US``).

    Raises LocaleError when the tag is not a well-formed language tag.
    """
    if not isinstance(tag, str):
        raise LocaleError(f"locale must be a string, got {type(tag).__name__}")
    cleaned = tag.strip().replace("_", "-")
    if not _BCP47.match(cleaned):
        raise LocaleError("not a BCP-47 locale tag, expected e.g. en-US, de-DE, zh-CN")
    parts = cleaned.split("-")
    out = [parts[0].lower()]
    for part in parts[1:]:
        if len(part) == 4 and part.isalpha():
            out.append(part.title())
        elif len(part) == 2 or (len(part) == 3 and part.isdigit()):
            out.append(part.upper())
        else:
            out.append(part.lower())
    return "-".join(out)


def language_for_locale(tag: str) -> str | None:
    """The model language for a (canonical) locale tag, or None when the model does not speak it."""
    parts = tag.split("-")
    region = next((p for p in parts[1:] if len(p) == 2 or (len(p) == 3 and p.isdigit())), None)
    if region is not None:
        by_tag = _BY_TAG.get(f"{parts[0]}-{region}")
        if by_tag:
            return by_tag
    # Bare "zh", "ja" or "ko" name no listed region: not a locale the model was trained on.
    return _BY_LANGUAGE.get(parts[0])


def supported_locales_hint() -> str:
    """One line naming what is supported, for error messages."""
    return (
        "supported: en-*, de-*, fr-*, ja-JP, ko-KR, zh-CN/zh-SG/zh-TW/cmn-* (Mandarin), "
        "zh-HK/zh-MO/yue-* (Cantonese)"
    )
