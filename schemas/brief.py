"""The campaign brief: one Parquet row, as content-ops teams write it.

Column names are a contract with the people who write briefs files; keep them.
"""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.arrow import arrow_schema
from schemas.formats import AspectRatio, Resolution
from schemas.locales import canonical_locale

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
SEED_LIMIT = 2**63

# Columns a briefs file must have; the rest have defaults.
REQUIRED_COLUMNS = ("brief_id", "campaign_id", "prompt", "source_locale")


def _check_id(value: str) -> str:
    if not ID_PATTERN.match(value):
        raise ValueError("invalid id, use 1-64 characters of A-Z a-z 0-9 . _ - not starting with '.'")
    return value


class DialogueLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    speaker: str = Field(min_length=1, max_length=200)
    line: str = Field(min_length=1, max_length=2000)


class LocalizedDialogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    locale: str
    lines: list[DialogueLine] = Field(min_length=1)

    @field_validator("locale")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical_locale(value)


class CampaignBrief(BaseModel):
    """One brief. Per-locale problems (an unsupported language, a missing
    translation) are not errors here: expand rejects those locales alone."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    brief_id: str
    campaign_id: str
    prompt: str = Field(min_length=1, max_length=4000)
    source_locale: str
    dialogue: list[DialogueLine] | None = None
    localized_dialogue: list[LocalizedDialogue] | None = None
    locales: list[str] | None = None
    aspect_ratios: list[AspectRatio] | None = None
    duration_s: int = Field(default=5, ge=2, le=15)
    resolution: Resolution = "540p"
    variants: int = Field(default=1, ge=1, le=8)
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    background_sound: str | None = Field(default=None, max_length=1000)
    reference_image_uri: str | None = None
    forbidden_terms: list[str] | None = None

    @field_validator("brief_id", "campaign_id")
    @classmethod
    def _ids(cls, value: str) -> str:
        return _check_id(value)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is blank, describe the scene in English")
        return value

    @field_validator("source_locale")
    @classmethod
    def _source_locale(cls, value: str) -> str:
        return canonical_locale(value)

    @field_validator("aspect_ratios")
    @classmethod
    def _aspects_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("empty list, leave it null for the default ['16:9'] or list some of 16:9, 9:16, 1:1")
        return value

    @field_validator("locales")
    @classmethod
    def _locales_not_empty(cls, value: list[str] | None) -> list[str] | None:
        # Malformed tags are per-locale faults, checked in expand; only emptiness is a brief fault.
        if value is not None and not value:
            raise ValueError("empty list, leave it null for [source_locale] or list BCP-47 tags")
        return value

    @model_validator(mode="after")
    def _localized_unique(self) -> "CampaignBrief":
        seen = [entry.locale for entry in self.localized_dialogue or ()]
        duplicates = sorted({loc for loc in seen if seen.count(loc) > 1})
        if duplicates:
            raise ValueError(f"more than one entry for a locale ({', '.join(duplicates)})")
        return self

    # Defaults that depend on other fields.
    @property
    def target_locales(self) -> list[str]:
        return list(self.locales) if self.locales is not None else [self.source_locale]

    @property
    def target_aspect_ratios(self) -> list[str]:
        return list(dict.fromkeys(self.aspect_ratios)) if self.aspect_ratios is not None else ["16:9"]

    @property
    def base_seed(self) -> int:
        """The brief's seed, or one derived from brief_id so re-plans agree."""
        if self.seed is not None:
            return self.seed
        digest = hashlib.sha256(self.brief_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % 2**31

    def dialogue_for(self, locale: str) -> list[DialogueLine] | None:
        """The dialogue in ``locale``: the source lines, a localized entry, or None when missing."""
        if locale == self.source_locale:
            return list(self.dialogue or [])
        for entry in self.localized_dialogue or ():
            if entry.locale == locale:
                return list(entry.lines)
        return None if self.dialogue else []


BRIEF_ARROW_SCHEMA = arrow_schema(CampaignBrief)
