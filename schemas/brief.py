"""The campaign brief: one Parquet row, as content-ops teams write it.

Column names are a contract with the people who write briefs files; keep them. (``variants``
was once an integer, the number of seeds per clip: such a value is read as ``takes``.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.arrow import arrow_schema
from schemas.formats import ASPECT_RATIOS, AspectRatio, Resolution
from schemas.locales import canonical_locale
from schemas.slots import SLOT_NAME, fill_template, template_slots

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
SEED_LIMIT = 2**63
PROMPT_MAX_CHARS = 4000
MAIN_VARIANT_ID = "main"  # the one variant of a brief without a variants column
MAX_VARIANTS = 64
MAX_TAKES = 8

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


def _not_blank_prompt(value: str) -> str:
    if not value.strip():
        raise ValueError("prompt is blank, describe the scene in English")
    template_slots(value)  # a malformed placeholder is a fault of the prompt itself
    return value


def _unique_locales(entries: Sequence[LocalizedDialogue] | None) -> None:
    seen = [entry.locale for entry in entries or ()]
    duplicates = sorted({loc for loc in seen if seen.count(loc) > 1})
    if duplicates:
        raise ValueError(f"localized_dialogue: more than one entry for a locale ({', '.join(duplicates)})")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class BriefVariant(BaseModel):
    """One creative variant of a brief: values for the prompt's ``{slot}`` placeholders, and
    optional replacements of the brief's prompt, dialogue (source and localized) or background
    sound. A field left null keeps the brief's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant_id: str
    slots: dict[str, str] | None = None
    prompt: str | None = Field(default=None, min_length=1, max_length=PROMPT_MAX_CHARS)
    dialogue: list[DialogueLine] | None = None
    localized_dialogue: list[LocalizedDialogue] | None = None
    background_sound: str | None = Field(default=None, max_length=1000)

    @field_validator("variant_id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _check_id(value)

    @field_validator("slots", mode="before")
    @classmethod
    def _from_arrow_map(cls, value: Any) -> Any:
        # An Arrow map column reads back as a list of (key, value) pairs.
        return dict(value) if isinstance(value, list) else value

    @field_validator("slots")
    @classmethod
    def _slot_names_and_values(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, text in (value or {}).items():
            if not SLOT_NAME.match(name):
                raise ValueError(f"slot name {name!r} is not a placeholder name (letters, digits and _, "
                                 "not starting with a digit)")
            if not text.strip() or len(text) > 1000:
                raise ValueError(f"slot {name!r} needs a value of 1-1000 characters (got {len(text.strip())})")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | None) -> str | None:
        return None if value is None else _not_blank_prompt(value)

    @model_validator(mode="after")
    def _localized_unique(self) -> "BriefVariant":
        _unique_locales(self.localized_dialogue)
        return self


MAIN_VARIANT = BriefVariant(variant_id=MAIN_VARIANT_ID)

VOICEOVER_MIN_S = 2.0
VOICEOVER_MAX_S = 15.0


class Voiceover(BaseModel):
    """A supplied recording (WAV, FLAC or MP3; a local path, file:// URI or s3://bucket/key) that
    drives the clip of one locale: its length is the clip's, and it is the delivered audio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    locale: str
    uri: str = Field(min_length=1, max_length=2000)

    @field_validator("locale")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical_locale(value)


class SpeakerDescription(BaseModel):
    """How a speaker looks, for the prompt's Dialogue rows (the design asks for about five words:
    "Young man in yellow polo")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    speaker: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=200)

    @field_validator("description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip() or any(c in value for c in '<>"\n'):
            raise ValueError("describe the speaker in a few words, without <, >, quotes or line breaks")
        return value


def variant_fault(template: str, variant: BriefVariant) -> str | None:
    """Why ``variant`` cannot fill the prompt (the brief's ``template``, or its own), as
    ``field: reason``; None when it can. ``template`` must already parse."""
    prompt = variant.prompt if variant.prompt is not None else template
    used = template_slots(prompt)
    values = variant.slots or {}
    whose = "its prompt" if variant.prompt is not None else "the brief's prompt"
    missing = [name for name in used if name not in values]
    if missing:
        return (f"slots: no value for a placeholder ({', '.join('{' + n + '}' for n in missing)}, which {whose} "
                "uses); add it to slots, or write {{ }} in the prompt for literal braces")
    unused = [name for name in values if name not in used]
    if unused:
        return (f"slots: a value the prompt does not use ({', '.join(unused)}; the placeholders of {whose}: "
                f"{', '.join(used) or 'none'}); drop it or use it as {{{unused[0]}}}")
    filled = len(fill_template(prompt, values))
    if filled > PROMPT_MAX_CHARS:
        return f"slots: the filled prompt is too long ({filled} characters, over {PROMPT_MAX_CHARS}); shorten the values"
    return None


def duplicate_variant_ids(variant_ids: Sequence[Any]) -> dict[int, str]:
    """index -> ``variant_id: duplicate ...`` for each variant whose id an earlier one already uses."""
    first: dict[str, int] = {}
    faults: dict[int, str] = {}
    for index, variant_id in enumerate(variant_ids):
        if not isinstance(variant_id, str):
            continue
        if variant_id in first:
            faults[index] = (f"variant_id: duplicate (got {variant_id!r}, which variants[{first[variant_id]}] "
                             "already uses; ids are unique within a brief)")
        else:
            first[variant_id] = index
    return faults


class CampaignBrief(BaseModel):
    """One brief. Per-locale problems (an unsupported language, a missing
    translation, in the brief or in a variant) are not errors here: ingest rejects
    those locales or variants alone."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    brief_id: str
    campaign_id: str
    prompt: str = Field(min_length=1, max_length=PROMPT_MAX_CHARS)
    source_locale: str
    dialogue: list[DialogueLine] | None = None
    localized_dialogue: list[LocalizedDialogue] | None = None
    locales: list[str] | None = None
    aspect_ratios: list[AspectRatio] | None = None
    duration_s: int = Field(default=5, ge=2, le=15)
    resolution: Resolution = "540p"
    variants: list[BriefVariant] | None = Field(default=None, max_length=MAX_VARIANTS)
    takes: int = Field(default=1, ge=1, le=MAX_TAKES)
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    background_sound: str | None = Field(default=None, max_length=1000)
    reference_image_uri: str | None = None
    forbidden_terms: list[str] | None = None
    negative_prompt: str | None = Field(default=None, max_length=PROMPT_MAX_CHARS)
    audio: bool = True
    voiceovers: list[Voiceover] | None = None
    speakers: list[SpeakerDescription] | None = None

    @model_validator(mode="before")
    @classmethod
    def _integer_variants_are_takes(cls, data: Any) -> Any:
        # Briefs files from before creative variants used an integer `variants` for what is now `takes`.
        if (isinstance(data, dict) and _is_integer(data.get("variants")) and data.get("takes") is None
                and 1 <= data["variants"] <= MAX_TAKES):
            data = {k: v for k, v in data.items() if k != "variants"} | {"takes": data["variants"]}
        return data

    @field_validator("variants", mode="before")
    @classmethod
    def _variants_list(cls, value: Any) -> Any:
        if _is_integer(value):  # one that _integer_variants_are_takes left: out of range, or takes given too
            problem = (f"use 1-{MAX_TAKES} (got {value})" if not 1 <= value <= MAX_TAKES
                       else "and takes is given too; drop one")
            raise ValueError(f"an integer here is the old name of takes (seeds per clip), {problem}; for "
                             "creative variants give a list of {variant_id, slots, ...}")
        if isinstance(value, list) and not value:
            raise ValueError(f"empty list, leave it null for one variant ({MAIN_VARIANT_ID}) made of the brief's "
                             "own fields")
        return value

    @field_validator("brief_id", "campaign_id")
    @classmethod
    def _ids(cls, value: str) -> str:
        return _check_id(value)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        return _not_blank_prompt(value)

    @field_validator("source_locale")
    @classmethod
    def _source_locale(cls, value: str) -> str:
        return canonical_locale(value)

    @field_validator("aspect_ratios")
    @classmethod
    def _aspects_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError(f"empty list, leave it null for the default ['16:9'] or list some of "
                             f"{', '.join(ASPECT_RATIOS)}")
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
        _unique_locales(self.localized_dialogue)
        return self

    @model_validator(mode="after")
    def _voiceovers_and_speakers(self) -> "CampaignBrief":
        targets = set()
        for tag in self.target_locales:
            try:
                targets.add(canonical_locale(tag))
            except ValueError:
                continue  # a per-locale fault, rejected with that locale
        seen: dict[str, int] = {}
        for index, voiceover in enumerate(self.voiceovers or ()):
            if voiceover.locale in seen:
                raise ValueError(f"voiceovers[{index}].locale: a second recording for {voiceover.locale} "
                                 f"(voiceovers[{seen[voiceover.locale]}] has one); give one per locale")
            seen[voiceover.locale] = index
            if voiceover.locale not in targets:
                raise ValueError(f"voiceovers[{index}].locale: {voiceover.locale} is not one of the brief's locales "
                                 f"({', '.join(sorted(targets)) or 'none'}); add it to locales or fix the tag")
            if not self.audio:
                raise ValueError(f"voiceovers[{index}]: the brief is delivered silent (audio false); drop the "
                                 "voice-over or set audio true")
        names = [s.speaker for s in self.speakers or ()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"speakers: more than one description for {', '.join(twice)}; give one per speaker")
        return self

    @model_validator(mode="after")
    def _variants_fill_the_prompt(self) -> "CampaignBrief":
        # ingest checks each variant on its own first (a bad one is rejected alone); this keeps
        # every other way of making a brief (the ad-hoc endpoint) to the same rules.
        if self.variants is None:
            used = template_slots(self.prompt)
            if used:
                raise ValueError(f"prompt: placeholder {{{used[0]}}} has no value; give the values in a variants "
                                 "column (variants[].slots), or write {{ }} for literal braces")
            return self
        faults = duplicate_variant_ids([v.variant_id for v in self.variants])
        for index, variant in enumerate(self.variants):
            fault = faults.get(index) or variant_fault(self.prompt, variant)
            if fault:
                raise ValueError(f"variants[{index}].{fault}")
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

    def voiceover_for(self, locale: str) -> Voiceover | None:
        return next((v for v in self.voiceovers or () if v.locale == locale), None)

    def speaker_description(self, speaker: str) -> str:
        """The speaker's description from ``speakers``, else the speaker's name."""
        found = next((s.description for s in self.speakers or () if s.speaker.strip() == speaker.strip()), None)
        return (found or speaker).strip()

    @property
    def creative_variants(self) -> list[BriefVariant]:
        return list(self.variants) if self.variants is not None else [MAIN_VARIANT]

    def scene_for(self, variant: BriefVariant) -> str:
        """The English scene description of ``variant``: its prompt (or the brief's), slots filled."""
        return fill_template(variant.prompt if variant.prompt is not None else self.prompt, variant.slots or {})

    def background_sound_for(self, variant: BriefVariant) -> str | None:
        return variant.background_sound if variant.background_sound is not None else self.background_sound

    def dialogue_for(self, locale: str, variant: BriefVariant = MAIN_VARIANT) -> list[DialogueLine] | None:
        """The dialogue of ``variant`` in ``locale``: the source lines, a localized entry, or None when
        missing. A variant that replaces the dialogue drops the brief's translations with it (they
        translate other lines), unless it gives its own."""
        dialogue, localized = self.dialogue, self.localized_dialogue
        if variant.dialogue is not None:
            dialogue, localized = variant.dialogue, variant.localized_dialogue
        elif variant.localized_dialogue is not None:
            localized = variant.localized_dialogue
        if locale == self.source_locale:
            return list(dialogue or [])
        for entry in localized or ():
            if entry.locale == locale:
                return list(entry.lines)
        return None if dialogue else []


BRIEF_ARROW_SCHEMA = arrow_schema(CampaignBrief)
