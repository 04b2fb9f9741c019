"""expand: fan one valid brief out into render requests.

locales x aspect ratios x variants, each with a deterministic ``render_id`` and
the model prompt composed in the layout the model was trained on.
"""

from __future__ import annotations

import hashlib
import json
import re

import pyarrow as pa

from model.magihuman.sizes import FINAL_SIZES
from schemas.brief import SEED_LIMIT, CampaignBrief, DialogueLine
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


def expand_brief(brief: CampaignBrief, row_index: int, model_id: str) -> list[RenderRequest]:
    """All render requests of one brief whose locales were already checked by ingest."""
    requests = []
    for locale in brief.target_locales:
        language = language_for_locale(locale)
        dialogue = brief.dialogue_for(locale) or []
        prompt = compose_prompt(brief.prompt, dialogue, language, brief.background_sound)
        for aspect in brief.target_aspect_ratios:
            width, height = FINAL_SIZES[brief.resolution][aspect]
            for variant in range(brief.variants):
                seed = (brief.base_seed + variant) % SEED_LIMIT
                identity = {
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
                }
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
                        variant_index=variant,
                        prompt=prompt,
                        dialogue=dialogue,
                        background_sound=brief.background_sound,
                        reference_image_uri=brief.reference_image_uri,
                        forbidden_terms=list(brief.forbidden_terms or []),
                        model_id=model_id,
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
