"""ingest: read a briefs file, validate each row, split valid briefs from rejects.

Whole-brief faults reject the brief; per-locale faults (an unsupported
language, a missing translation) reject that locale alone and per-variant faults
(a malformed variant, a placeholder it leaves empty, a slot value the prompt does
not use, a duplicate id, a translation it lacks) that variant alone; the brief
goes on with the locales and variants that remain. Nothing is dropped silently:
every input row ends up as a valid brief, a reject, or both.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError

from pipeline.errors import first_line
from model.magihuman.sizes import TEXT_LENGTH
from pipeline.expand import PromptTokens, prompt_through_dialogue
from pipeline.media import load_audio, read_uri_bytes
from pipeline.review import ReviewThresholds, silence_and_speech
from schemas.brief import (
    MAIN_VARIANT,
    REQUIRED_COLUMNS,
    VOICEOVER_MAX_S,
    VOICEOVER_MIN_S,
    Voiceover,
    BriefVariant,
    CampaignBrief,
    duplicate_variant_ids,
    variant_fault,
)
from schemas.formats import FPS
from schemas.locales import LocaleError, canonical_locale, language_for_locale, supported_locales_hint
from schemas.render import VoiceoverAudio
from schemas.slots import template_slots

log = logging.getLogger(__name__)

# One output row per valid brief (brief_json set) or per reject (reason set).
INGEST_SCHEMA = pa.schema(
    [
        pa.field("row_index", pa.int64(), nullable=False),
        pa.field("brief_id", pa.string()),
        pa.field("brief_json", pa.string()),
        pa.field("voiceovers_json", pa.string()),  # locale -> VoiceoverAudio, for a valid brief
        pa.field("locale", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
    ]
)
REJECTS_SCHEMA = pa.schema([f for f in INGEST_SCHEMA if f.name not in ("brief_json", "voiceovers_json")])
ROW_INDEX = "row_index"
NOT_UTF8 = "_not_utf8"
"""column read_briefs_table adds: per row, the reasons for its cells that are not UTF-8 text (emptied there)"""


class BriefsFileError(Exception):
    """The briefs file as a whole cannot be used (missing, unreadable, wrong columns)."""


def _read_s3_parquet(uri: str, s3_endpoint: str | None) -> pa.Table:
    """A briefs file in S3 (small: read into memory), with the standard AWS credential chain."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise BriefsFileError(f"{uri}: give an S3 object as s3://bucket/path/briefs.parquet")
    try:
        body = boto3.client("s3", endpoint_url=s3_endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise BriefsFileError(f"{uri}: cannot read the briefs file ({code or exc})") from None
    except BotoCoreError as exc:
        raise BriefsFileError(f"{uri}: cannot read the briefs file ({exc})") from None
    return pq.read_table(io.BytesIO(body))


def read_briefs_table(path: str | Path, s3_endpoint: str | None = None) -> pa.Table:
    """Read a briefs Parquet file (a local path or s3://bucket/key) and number its rows (``row_index``).

    Raises BriefsFileError with one readable line for file-level faults.
    """
    where = str(path)
    try:
        if where.startswith("s3://"):
            table = _read_s3_parquet(where, s3_endpoint)
        else:
            local = Path(path)
            if not local.exists():
                raise BriefsFileError(f"{local}: no such file (give the path of a briefs .parquet file)")
            if local.is_dir():
                raise BriefsFileError(f"{local}: is a directory, expected a briefs .parquet file")
            table = pq.read_table(local)
    except (pa.ArrowException, OSError) as exc:
        raise BriefsFileError(f"{where}: not a readable Parquet file ({first_line(exc)})") from None
    present = [c for c in REQUIRED_COLUMNS if c in table.column_names]
    if not present:
        raise BriefsFileError(
            f"{where}: none of the required columns {', '.join(REQUIRED_COLUMNS)} are present "
            f"(found: {', '.join(table.column_names) or 'no columns'}); see the brief format in README.md"
        )
    if "variants" in table.column_names and pa.types.is_integer(table.schema.field("variants").type):
        log.warning("%s: the variants column holds integers, the old name of takes (seeds per clip); reading it "
                    "as takes. Rename the column to takes: variants now lists creative variants.", where)
    if ROW_INDEX in table.column_names:
        table = table.drop_columns([ROW_INDEX])
    table = _set_aside_invalid_text(table)
    return table.append_column(ROW_INDEX, pa.array(range(table.num_rows), pa.int64()))


def _holds_text(arrow_type: pa.DataType) -> bool:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return True
    return any(_holds_text(arrow_type.field(i).type) for i in range(arrow_type.num_fields))


def _set_aside_invalid_text(table: pa.Table) -> pa.Table:
    """A cell whose text is not UTF-8 would stop the whole plan (Python cannot decode it): it is
    emptied here, and :class:`ValidateBriefs` rejects that row, naming the field."""
    reasons: list[list[str]] = [[] for _ in range(table.num_rows)]
    for name in table.column_names:
        column = table.column(name)
        if not _holds_text(column.type):
            continue
        try:
            column.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        column = column.combine_chunks()
        bad = []
        for index in range(len(column)):
            cell = column.slice(index, 1)
            try:
                cell.validate(full=True)
            except pa.ArrowInvalid:
                bad.append(index)
                shown = (f" ({cell.cast(pa.binary())[0].as_py()[:40]!r})" if pa.types.is_string(column.type) else "")
                reasons[index].append(f"{name}: not UTF-8 text{shown}; save the briefs file with UTF-8 strings")
        bad_rows = set(bad)
        mask = pa.array([index in bad_rows for index in range(len(column))])
        table = table.set_column(table.column_names.index(name), name,
                                 pc.if_else(mask, pa.scalar(None, column.type), column))
    if not any(reasons):
        return table
    return table.append_column(NOT_UTF8, pa.array(reasons, pa.list_(pa.string())))


def first_row_by_brief_id(brief_ids: Iterable[str | None]) -> dict[str, int]:
    """brief_id -> the row where it first appears; later rows with it are duplicates."""
    first: dict[str, int] = {}
    for index, brief_id in enumerate(brief_ids):
        if isinstance(brief_id, str):
            first.setdefault(brief_id, index)
    return first


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def raw_json(row: dict) -> str:
    """The input row as JSON, for the rejects file."""
    return json.dumps({k: v for k, v in row.items() if k not in (ROW_INDEX, NOT_UTF8)}, default=_json_value,
                      ensure_ascii=False)


def _reason_from(error: ValidationError, within: str | None = None) -> str:
    """One line naming each field at fault; ``within`` prefixes the fields (``variants[2]``)."""
    parts = []
    for item in error.errors():
        field = ".".join([*([within] if within else []), *(str(p) for p in item["loc"])])
        message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if item["type"] == "missing":
            message = "required field is missing or null"
        elif "input" in item and item["loc"] and item["type"] not in ("string_too_long",):
            message = f"{message} (got {item['input']!r})"
        # A whole-model check (no loc) names its own field first.
        parts.append(f"{field}: {message}" if field and (item["loc"] or within) else message)
    return "; ".join(parts)


@dataclass(frozen=True)
class LocaleFault:
    """A target locale of a brief that cannot be rendered."""

    index: int
    """its position in ``brief.target_locales``"""
    locale: str
    """canonical when the tag is well-formed, else the tag as given"""
    reason: str


def check_locales(brief: CampaignBrief, count_tokens: PromptTokens | None = None) -> tuple[list[str], list[LocaleFault]]:
    """The per-locale checks, for the batch job and the server alike: the brief's target
    locales that can be rendered (canonical, first occurrence kept), and why the others cannot."""
    kept: list[str] = []
    faults: list[LocaleFault] = []
    for index, tag in enumerate(brief.target_locales):
        try:
            locale = canonical_locale(tag)
        except LocaleError as exc:
            faults.append(LocaleFault(index, str(tag), f"locales: {exc} (got {tag!r})"))
            continue
        if locale in kept:
            continue
        fault = locale_fault(brief, locale, count_tokens or RELEASED_PROMPT_TOKENS)
        if fault:
            faults.append(LocaleFault(index, locale, fault))
        else:
            kept.append(locale)
    return kept, faults


def reference_image_fault(uri: str | None, field: str = "reference_image_uri") -> str | None:
    """Why ``uri`` (a reference image, or the ``field`` of another file) cannot be read by a
    render worker, or None. The workers read absolute local paths, file:///absolute URIs and
    s3://bucket/key objects; a relative path would be resolved against whichever directory a
    worker runs in."""
    if uri is None:
        return None
    fix = "give an absolute path, a file:///absolute/path URI or s3://bucket/key"
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return None if Path(uri).is_absolute() else f"{field}: a relative path (got {uri!r}); {fix}"
    if scheme == "file":
        return None if rest.startswith("/") else f"{field}: not an absolute file URI (got {uri!r}); {fix}"
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        return None if bucket and key else f"{field}: no bucket or key (got {uri!r}); {fix}"
    return f"{field}: the {scheme}:// scheme is not read (got {uri!r}); {fix}"


def probe_voiceover(voiceover: Voiceover, field: str, s3_endpoint: str | None = None) -> VoiceoverAudio | str:
    """What a render needs to know of a supplied recording (its bytes' digest, its length in
    whole frames), or why it cannot drive a clip (``field: reason``): unreadable, silent, or
    outside the 2-15 s a clip may last."""
    fault = reference_image_fault(voiceover.uri, f"{field}.uri")
    if fault:
        return fault
    try:
        data = read_uri_bytes(voiceover.uri, s3_endpoint, f"{field}.uri")
    except (OSError, ValueError) as exc:
        return first_line(exc)
    try:
        audio, rate = load_audio(data)
    except Exception as exc:  # noqa: BLE001 - whatever PyAV says of a file that does not decode
        return (f"{field}.uri: not a readable WAV, FLAC or MP3 file ({first_line(exc)}; got {voiceover.uri!r}); "
                "export the recording again")
    seconds = audio.shape[0] / rate if rate else 0.0
    if audio.size == 0 or seconds == 0:
        return f"{field}.uri: the file holds no audio samples (got {voiceover.uri!r}); export the recording again"
    if not VOICEOVER_MIN_S <= seconds <= VOICEOVER_MAX_S:
        return (f"{field}.uri: the recording lasts {seconds:.2f} s, and a clip lasts {VOICEOVER_MIN_S:g}-"
                f"{VOICEOVER_MAX_S:g} s; trim it or split the spot")
    thresholds = ReviewThresholds()
    silence, _ = silence_and_speech(audio, rate, thresholds)
    if silence >= thresholds.silent_clip_share:
        return (f"{field}.uri: the recording is silent ({silence:.0%} below {thresholds.silence_dbfs:g} dBFS; got "
                f"{voiceover.uri!r}); check the export")
    return VoiceoverAudio(uri=voiceover.uri, sha256=hashlib.sha256(data).hexdigest(), seconds=seconds,
                          frames=round(seconds * FPS))


# Without a model id the plan counts as for the released T5Gemma tokenizer (see PromptTokens).
RELEASED_PROMPT_TOKENS = PromptTokens()


def dialogue_window_fault(brief: CampaignBrief, variant: BriefVariant, locale: str,
                          count_tokens: PromptTokens) -> str | None:
    """Why the composed prompt of ``variant`` in ``locale`` would have dialogue past the model's
    text window (the text encoder's embedding is trimmed to it, and the clip would not speak the
    rest while its captions show it), or None."""
    dialogue = brief.dialogue_for(locale, variant)
    if not dialogue:
        return None
    tokens = count_tokens(prompt_through_dialogue(brief.scene_for(variant), dialogue, language_for_locale(locale),
                                                  brief.speaker_description))
    if tokens <= TEXT_LENGTH:
        return None
    field = "dialogue" if locale == brief.source_locale else "localized_dialogue"
    return (f"{field}: past the model's {TEXT_LENGTH}-token text window in {locale} (the composed prompt is "
            f"{tokens} tokens by the end of its Dialogue block, counted with {count_tokens.method}); "
            "shorten the prompt or the dialogue")


def locale_fault(brief: CampaignBrief, locale: str, count_tokens: PromptTokens = RELEASED_PROMPT_TOKENS) -> str | None:
    """Why ``locale`` (canonical) cannot be rendered for ``brief``, or None when it can."""
    if language_for_locale(locale) is None:
        return f"locales: unsupported language ({locale}; {supported_locales_hint()})"
    if brief.dialogue_for(locale) is None:
        return (
            f"locales: missing localized_dialogue ({locale}: the brief has dialogue in "
            f"{brief.source_locale} but no translation for {locale}; add one or drop the locale)"
        )
    if brief.variants is None:  # with variants, each variant is checked on its own
        return dialogue_window_fault(brief, MAIN_VARIANT, locale, count_tokens)
    return None


def variant_locale_fault(brief: CampaignBrief, variant: BriefVariant, locales: list[str],
                         count_tokens: PromptTokens = RELEASED_PROMPT_TOKENS) -> str | None:
    """Why ``variant`` cannot be rendered in every one of ``locales`` (``field: reason``), or None."""
    missing = [locale for locale in locales if brief.dialogue_for(locale, variant) is None]
    if missing:
        return (f"localized_dialogue: missing for a target locale ({', '.join(missing)}: the variant replaces the "
                "dialogue or its translations, so the brief's own do not apply); add them to the variant's "
                "localized_dialogue or drop the locale")
    for locale in locales:
        fault = dialogue_window_fault(brief, variant, locale, count_tokens)
        if fault:
            return fault
    return None


def _parses(template: str) -> bool:
    try:
        template_slots(template)
    except ValueError:
        return False
    return True


def _split_variants(raw_variants: list, template: object) -> tuple[list[tuple[int, BriefVariant]], list[str]]:
    """The variants a row lists, as (index, variant) pairs that can fill the prompt, and the
    reasons for the others. ``template`` is the row's raw prompt: when it is not a usable
    template the brief is rejected for it anyway, and no variant is checked against it."""
    usable_template = isinstance(template, str) and _parses(template)
    ids = [raw.get("variant_id") if isinstance(raw, dict) else None for raw in raw_variants]
    faults = {index: f"variants[{index}].{fault}" for index, fault in duplicate_variant_ids(ids).items()}
    kept = []
    for index, raw in enumerate(raw_variants):
        if index in faults:
            continue
        try:
            # As for the row itself, a null field is one not given.
            given = {k: v for k, v in raw.items() if v is not None} if isinstance(raw, dict) else raw
            variant = BriefVariant.model_validate(given)
        except ValidationError as exc:
            faults[index] = _reason_from(exc, within=f"variants[{index}]")
            continue
        fault = variant_fault(template, variant) if usable_template else None
        if fault:
            faults[index] = f"variants[{index}].{fault}"
        else:
            kept.append((index, variant))
    return kept, [faults[index] for index in sorted(faults)]


def reason_category(reason: str) -> str:
    """The reason without its specifics, for summaries ("duration_s: Input should be ...",
    "variants[].slots: no value for a placeholder")."""
    return re.sub(r"\[\d+\]", "[]", reason.split("; ")[0].split(" (")[0])


class ValidateBriefs:
    """Batch stage: raw brief rows in, valid briefs and rejects out (INGEST_SCHEMA). ``model_id``
    and ``text_encoder_dir`` choose how prompt tokens are counted (PromptTokens)."""

    def __init__(self, first_row_of: dict[str, int], model_id: str | None = None,
                 text_encoder_dir: str | Path | None = None, s3_endpoint: str | None = None):
        self.first_row_of = first_row_of
        self.count_tokens = PromptTokens(model_id, text_encoder_dir)
        self.s3_endpoint = s3_endpoint

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: list[dict] = []
        for row in batch.to_pylist():
            out.extend(self.validate_row(row))
        return pa.Table.from_pylist(out, schema=INGEST_SCHEMA)

    def validate_row(self, row: dict) -> list[dict]:
        row_index = row[ROW_INDEX]
        brief_id = row.get("brief_id") if isinstance(row.get("brief_id"), str) else None

        def reject(reason: str, locale: str | None = None) -> dict:
            return {"row_index": row_index, "brief_id": brief_id, "brief_json": None, "voiceovers_json": None,
                    "locale": locale, "reason": reason, "raw": raw_json(row)}

        if row.get(NOT_UTF8):
            return [reject("; ".join(row[NOT_UTF8]))]
        if brief_id is not None and self.first_row_of.get(brief_id, row_index) != row_index:
            first = self.first_row_of[brief_id]
            return [reject(f"brief_id: duplicate (got {brief_id!r}, which row {first} already uses; "
                           "only that row can make it)")]
        # Parquet null means "not given": the field's default applies.
        given = {k: v for k, v in row.items() if k not in (ROW_INDEX, NOT_UTF8) and v is not None}
        kept_variants, variant_rejects = None, []
        if isinstance(given.get("variants"), list) and given["variants"]:
            kept_variants, variant_rejects = _split_variants(given["variants"], given.get("prompt"))
            if not kept_variants:
                return [reject(reason) for reason in variant_rejects]
            given["variants"] = [variant for _, variant in kept_variants]
        try:
            brief = CampaignBrief.model_validate(given)
        except ValidationError as exc:
            return [reject(_reason_from(exc))]
        fault = reference_image_fault(brief.reference_image_uri)
        if fault:
            return [reject(fault)]

        kept, faults = check_locales(brief, self.count_tokens)
        results = [reject(fault.reason, locale=fault.locale) for fault in faults]
        # A recording that cannot drive its clip rejects that locale alone.
        voiceovers: dict[str, VoiceoverAudio] = {}
        for index, voiceover in enumerate(brief.voiceovers or ()):
            if voiceover.locale not in kept:
                continue
            probed = probe_voiceover(voiceover, f"voiceovers[{index}]", self.s3_endpoint)
            if isinstance(probed, str):
                results.append(reject(probed, locale=voiceover.locale))
                kept.remove(voiceover.locale)
            else:
                voiceovers[voiceover.locale] = probed
        results.extend(reject(reason) for reason in variant_rejects)
        variants = None
        if kept_variants is not None:
            variants = []
            for index, variant in kept_variants:
                fault = variant_locale_fault(brief, variant, kept, self.count_tokens)
                if fault:
                    results.append(reject(f"variants[{index}].{fault}"))
                else:
                    variants.append(variant)
        if kept and variants != []:
            valid = brief.model_copy(update={"locales": kept, "variants": variants})
            results.insert(0, {"row_index": row_index, "brief_id": brief.brief_id,
                               "brief_json": valid.model_dump_json(),
                               "voiceovers_json": json.dumps({k: v.model_dump() for k, v in voiceovers.items()}),
                               "locale": None,
                               "reason": None, "raw": None})
        return results
