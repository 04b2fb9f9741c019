"""expand: fan one valid brief out into render requests.

creative variants x locales x aspect ratios x takes, each with a deterministic
``render_id`` and the model prompt composed in the layout the model was trained on;
and the per-brief summary of that fan-out that ``paddock plan`` prints.
"""

from __future__ import annotations

import hashlib
import json
import re

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from model.magihuman.sizes import FINAL_SIZES
from schemas.brief import MAIN_VARIANT_ID, SEED_LIMIT, CampaignBrief, DialogueLine
from schemas.locales import language_for_locale
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA, RenderRequest

NO_BACKGROUND_SOUND = "No prominent background sound"

# Han, kana and Hangul letters: the model was trained with a space between each.
_CJK = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"  # Hangul
)
_BETWEEN_CJK = re.compile(f"(?<=[{_CJK}])(?=[{_CJK}])")


def space_cjk(text: str) -> str:
    """Insert one space between adjacent CJK letters ("你好" -> "你 好")."""
    return _BETWEEN_CJK.sub(" ", text)


def compose_prompt(scene: str, dialogue: list[DialogueLine], language: str, background_sound: str | None) -> str:
    """The model prompt: the English scene, a ``Dialogue:`` block with
    ``<speaker, Language>: "line"`` rows, then a ``Background Sound:`` block."""
    blocks = [scene.strip()]
    if dialogue:
        rows = [f'<{d.speaker.strip()}, {language}>: "{space_cjk(d.line.strip())}"' for d in dialogue]
        blocks.append("Dialogue:\n" + "\n".join(rows))
    sound = (background_sound or "").strip() or NO_BACKGROUND_SOUND
    blocks.append(f"Background Sound:\n<{sound}>")
    return "\n\n".join(blocks)


def make_render_id(fields: dict) -> str:
    """A stable id from everything that changes the clip (and the brief it belongs to)."""
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "r" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:23]


def render_identity(request_fields: dict, variant_id: str, negative_prompt: str | None, audio: bool) -> dict:
    """What ``make_render_id`` hashes. Fields added with creative variants count only when they
    differ from their defaults, so the renders of a briefs file that predates them keep their ids
    (and their archived clips). The take enters through its seed (the brief's seed + take)."""
    added = {"variant_id": (variant_id, MAIN_VARIANT_ID), "negative_prompt": (negative_prompt, None),
             "audio": (audio, True)}
    return request_fields | {name: value for name, (value, default) in added.items() if value != default}


def request_render_id(request: RenderRequest) -> str:
    """The render id of a request, from its own fields (what expand_brief hashes)."""
    return make_render_id(render_identity(
        request.model_dump(include={"campaign_id", "brief_id", "prompt", "locale", "aspect_ratio", "duration_s",
                                    "resolution", "seed", "model_id", "reference_image_uri"}),
        request.variant_id, request.negative_prompt, request.audio))


def with_take(request: RenderRequest, take: int) -> RenderRequest:
    """The same request as another take: the seed moves with the take (the brief's seed + take),
    and so does the render id; the clip joins the same group (brief, variant, locale, aspect)."""
    seed = (request.seed - request.take + take) % SEED_LIMIT
    retake = request.model_copy(update={"take": take, "seed": seed, "render_id": ""})
    return retake.model_copy(update={"render_id": request_render_id(retake)})


def expand_brief(brief: CampaignBrief, row_index: int, model_id: str) -> list[RenderRequest]:
    """All render requests of one brief whose locales and variants were already checked by ingest:
    variants x locales x aspect ratios x takes."""
    requests = []
    for variant in brief.creative_variants:
        scene = brief.scene_for(variant)
        background_sound = brief.background_sound_for(variant)
        for locale in brief.target_locales:
            language = language_for_locale(locale)
            dialogue = brief.dialogue_for(locale, variant)
            if dialogue is None:
                raise ValueError(f"brief {brief.brief_id}: variant {variant.variant_id!r} has no dialogue in "
                                 f"{locale}; check the brief with pipeline.ingest.variant_locale_fault first")
            prompt = compose_prompt(scene, dialogue, language, background_sound)
            for aspect in brief.target_aspect_ratios:
                width, height = FINAL_SIZES[brief.resolution][aspect]
                for take in range(brief.takes):
                    seed = (brief.base_seed + take) % SEED_LIMIT
                    identity = render_identity({
                        "campaign_id": brief.campaign_id,
                        "brief_id": brief.brief_id,
                        "prompt": prompt,
                        "locale": locale,
                        "aspect_ratio": aspect,
                        "duration_s": brief.duration_s,
                        "resolution": brief.resolution,
                        "seed": seed,
                        "model_id": model_id,
                        "reference_image_uri": brief.reference_image_uri,
                    }, variant.variant_id, brief.negative_prompt, brief.audio)
                    requests.append(
                        RenderRequest(
                            render_id=make_render_id(identity),
                            brief_id=brief.brief_id,
                            campaign_id=brief.campaign_id,
                            row_index=row_index,
                            locale=locale,
                            language=language,
                            aspect_ratio=aspect,
                            resolution=brief.resolution,
                            width=width,
                            height=height,
                            duration_s=brief.duration_s,
                            seed=seed,
                            variant_id=variant.variant_id,
                            take=take,
                            prompt=prompt,
                            dialogue=dialogue,
                            background_sound=background_sound,
                            reference_image_uri=brief.reference_image_uri,
                            forbidden_terms=list(brief.forbidden_terms or []),
                            model_id=model_id,
                            negative_prompt=brief.negative_prompt,
                            audio=brief.audio,
                        )
                    )
    return requests


class ExpandBriefs:
    """Batch stage: valid briefs (``row_index``, ``brief_json``) in, RenderRequest rows out."""

    def __init__(self, model_id: str):
        self.model_id = model_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row_index, brief_json in zip(batch.column("row_index").to_pylist(), batch.column("brief_json").to_pylist()):
            brief = CampaignBrief.model_validate_json(brief_json)
            rows.extend(r.model_dump() for r in expand_brief(brief, row_index, self.model_id))
        return pa.Table.from_pylist(rows, schema=RENDER_REQUEST_ARROW_SCHEMA)


class BriefFanOut(BaseModel):
    """How one brief fans out: variants x locales x aspect ratios x takes = requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign_id: str
    brief_id: str
    variants: int
    locales: int
    aspect_ratios: int
    takes: int
    requests: int
    clip_seconds: int = Field(description="seconds of video the requests render, all takes together")
    warnings: list[str] = []

    @property
    def line(self) -> str:
        text = (f"{self.brief_id}: {self.variants} variants x {self.locales} locales x {self.aspect_ratios} "
                f"aspects x {self.takes} takes = {self.requests} requests, {self.clip_seconds} clip-seconds")
        return "; ".join([text, *self.warnings])


def summarize_fan_out(requests: pa.Table) -> list[BriefFanOut]:
    """One summary per brief of a requests table (RENDER_REQUEST_ARROW_SCHEMA), in table order."""
    columns = ("campaign_id", "brief_id", "variant_id", "locale", "aspect_ratio", "take", "duration_s",
               "negative_prompt", "model_id")
    by_brief: dict[tuple[str, str], list[dict]] = {}
    for row in requests.select(columns).to_pylist():
        by_brief.setdefault((row["campaign_id"], row["brief_id"]), []).append(row)
    summaries = []
    for (campaign_id, brief_id), rows in by_brief.items():
        warnings = []
        models_without_cfg = sorted({r["model_id"] for r in rows
                                     if r["negative_prompt"] and not _uses_cfg(r["model_id"])})
        if models_without_cfg:
            warnings.append(f"negative_prompt is ignored: {', '.join(models_without_cfg)} is distilled and "
                            "samples without CFG (render with magihuman-base to use it)")
        summaries.append(BriefFanOut(
            campaign_id=campaign_id, brief_id=brief_id,
            **{name: len({r[key] for r in rows}) for name, key in (("variants", "variant_id"), ("locales", "locale"),
                                                                   ("aspect_ratios", "aspect_ratio"), ("takes", "take"))},
            requests=len(rows), clip_seconds=sum(r["duration_s"] for r in rows), warnings=warnings,
        ))
    return summaries


def _uses_cfg(model_id: str) -> bool:
    # Imported here: the presets pull in every model component, which planning alone never needs.
    from model.presets import get_preset

    return get_preset(model_id).uses_cfg
