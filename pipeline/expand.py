"""expand: fan one valid brief out into render requests.

creative variants x locales x aspect ratios x takes, each with a deterministic
``render_id`` and the model prompt composed in the layout the model was trained on;
and the per-brief summary of that fan-out that ``paddock plan`` prints.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from model.magihuman.sizes import FINAL_SIZES
from schemas.brief import MAIN_VARIANT_ID, SEED_LIMIT, CampaignBrief, DialogueLine
from schemas.formats import FPS
from schemas.locales import language_for_locale
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA, RenderRequest, VoiceoverAudio

NO_BACKGROUND_SOUND = "No prominent background sound"
RELEASED_TEXT_ENCODER = "google/t5gemma-9b-9b-ul2"  # hub id, looked up in the local Hugging Face cache only

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


def _woven_body(scene: str, dialogue: list[DialogueLine], describe: Callable[[str], str]) -> str:
    """The main body: the English scene, then each line at its turn, in order, with who says it
    (the trained form weaves the dialogue into the narrative as well as listing it)."""
    sentences = [scene.strip()] if scene.strip() else []
    for index, d in enumerate(dialogue):
        sentences.append(f'{"Then " if index else ""}{describe(d.speaker)} says, "{d.line.strip()}"')
    body = " ".join(sentences)
    return body


def _prompt_blocks(scene: str, dialogue: list[DialogueLine], language: str, background_sound: str | None,
                   describe: Callable[[str], str] | None = None) -> list[str]:
    describe = describe or (lambda speaker: speaker.strip())
    blocks = [_woven_body(scene, dialogue, describe)]
    if dialogue:
        rows = [f'<{describe(d.speaker)}, {language}>: "{d.line.strip()}"' for d in dialogue]
        blocks.append("Dialogue:\n" + "\n".join(rows))
    sound = (background_sound or "").strip() or NO_BACKGROUND_SOUND
    blocks.append(f"Background Sound:\n<{sound}>")
    # The trained form spaces CJK letters everywhere in the prompt, not only in the dialogue rows.
    return [space_cjk(block) for block in blocks]


def compose_prompt(scene: str, dialogue: list[DialogueLine], language: str, background_sound: str | None,
                   describe: Callable[[str], str] | None = None) -> str:
    """The model prompt in the form the model was trained on (the reference's enhanced-prompt
    design, as far as a template can follow it): a main body (the English scene with each line of
    dialogue woven in at its turn, said by the speaker's description), a ``Dialogue:`` block of
    ``<description, Language>: "line"`` rows, then a ``Background Sound:`` block (the fixed
    "No prominent background sound" when none is given); CJK letters spaced throughout.
    ``describe(speaker)`` gives a speaker's description (default: the name)."""
    return "\n\n".join(_prompt_blocks(scene, dialogue, language, background_sound, describe))


def prompt_through_dialogue(scene: str, dialogue: list[DialogueLine], language: str,
                            describe: Callable[[str], str] | None = None) -> str:
    """The start of the composed prompt, up to the end of its Dialogue block: what the model must
    read in full for the clip to speak every line."""
    return "\n\n".join(_prompt_blocks(scene, dialogue, language, None, describe)[:-1])


# Gemma's SentencePiece vocabulary splits digits one by one and keeps most punctuation apart;
# about 4 ASCII letters per token is a high count for English words (Gemma averages more).
_ESTIMATE_PIECES = re.compile(r"[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]|\n")


def estimated_gemma_tokens(text: str) -> int:
    """A high estimate of T5Gemma's token count, for when its tokenizer is not at hand: one token per
    digit, punctuation mark, newline and non-ASCII character, one per 4 letters of each word
    (rounded up), plus <bos> and <eos>. Text with rare characters that Gemma spells byte by byte
    can still count more."""
    pieces = _ESTIMATE_PIECES.findall(text)
    return 2 + sum(-(-len(p) // 4) if p[0].isascii() and p[0].isalpha() else 1 for p in pieces)


class PromptTokens:
    """Counts a prompt's text tokens for the model a plan is made for, the most exact way at hand:
    the tiny preset's own byte-level tokenizer; the released T5Gemma tokenizer from
    ``text_encoder_dir`` or the Hugging Face cache, offline; otherwise estimated_gemma_tokens.
    Picklable: the tokenizer is loaded on first use, in the process that counts."""

    def __init__(self, model_id: str | None = None, text_encoder_dir: str | Path | None = None):
        self.model_id = model_id
        self.text_encoder_dir = text_encoder_dir
        self._count = None
        self.method = ""

    def __getstate__(self) -> dict:
        return {"model_id": self.model_id, "text_encoder_dir": self.text_encoder_dir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __call__(self, text: str) -> int:
        if self._count is None:
            self._count, self.method = _token_counter(self.model_id, self.text_encoder_dir)
        return self._count(text)


@functools.lru_cache(maxsize=4)
def _token_counter(model_id: str | None, text_encoder_dir: str | Path | None):
    # Imported here: planning without a model id never loads transformers.
    if model_id is not None:
        from model.presets import get_preset

        if get_preset(model_id).tiny is not None:
            from model.magihuman.text_encoder import byte_level_tokenizer

            tokenizer = byte_level_tokenizer()
            return (lambda text: len(tokenizer(text).input_ids)), "the tiny preset's tokenizer"
        from model.magihuman.text_encoder import load_tokenizer

        for source in ([text_encoder_dir] if text_encoder_dir else []) + [RELEASED_TEXT_ENCODER]:
            try:
                tokenizer = load_tokenizer(source)
            except (OSError, ValueError):
                continue
            return (lambda text: len(tokenizer(text).input_ids)), f"the tokenizer of {source}"
    return estimated_gemma_tokens, "an estimate of T5Gemma's tokens (its tokenizer was not found offline)"


def make_render_id(fields: dict) -> str:
    """A stable id from everything that changes the clip (and the brief it belongs to)."""
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "r" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:23]


def render_identity(request_fields: dict, variant_id: str, negative_prompt: str | None, audio: bool,
                    voiceover_sha256: str | None = None, prompt_llm: Mapping[str, str] | None = None) -> dict:
    """What ``make_render_id`` hashes. Fields added with creative variants (and later) count only
    when they differ from their defaults, so the renders of a briefs file that predates them keep
    their ids (and their archived clips). The take enters through its seed (the brief's seed +
    take). A voice-over enters by the digest of its bytes (a new recording under the same URI is a
    new clip); a prompt LLM by its settings (model name, system prompt version), never by its
    answer, so an id is known before the LLM is asked."""
    added = {"variant_id": (variant_id, MAIN_VARIANT_ID), "negative_prompt": (negative_prompt, None),
             "audio": (audio, True), "voiceover_sha256": (voiceover_sha256, None),
             "prompt_llm": (dict(prompt_llm) if prompt_llm else None, None)}
    return request_fields | {name: value for name, (value, default) in added.items() if value != default}


def request_render_id(request: RenderRequest) -> str:
    """The render id of a template-prompted request, from its own fields (what expand_brief hashes)."""
    fields = request.model_dump(include={"campaign_id", "brief_id", "prompt", "locale", "aspect_ratio", "duration_s",
                                         "resolution", "seed", "model_id", "reference_image_uri"})
    if request.voiceover is not None:
        fields["duration_s"] = request.voiceover.frames / FPS
    return make_render_id(render_identity(fields, request.variant_id, request.negative_prompt, request.audio,
                                          request.voiceover.sha256 if request.voiceover is not None else None))


def with_take(request: RenderRequest, take: int) -> RenderRequest:
    """The same request as another take: the seed moves with the take (the brief's seed + take),
    and so does the render id; the clip joins the same group (brief, variant, locale, aspect)."""
    seed = (request.seed - request.take + take) % SEED_LIMIT
    retake = request.model_copy(update={"take": take, "seed": seed, "render_id": ""})
    return retake.model_copy(update={"render_id": request_render_id(retake)})


def expand_brief(brief: CampaignBrief, row_index: int, model_id: str,
                 voiceovers: Mapping[str, VoiceoverAudio] | None = None,
                 prompt_llm: Mapping[str, str] | None = None) -> list[RenderRequest]:
    """All render requests of one brief whose locales and variants were already checked by ingest:
    variants x locales x aspect ratios x takes. ``voiceovers`` holds, by locale, what ingest read
    of each of the brief's recordings (pipeline.ingest.probe_voiceover); ``prompt_llm`` the
    enhancement settings that enter the ids (pipeline.enhance.PromptLLMConfig.identity)."""
    voiceovers = voiceovers or {}
    missing = [v.locale for v in brief.voiceovers or () if v.locale in brief.target_locales and v.locale not in voiceovers]
    if missing:
        raise ValueError(f"brief {brief.brief_id}: voice-over for {', '.join(missing)} was not read; plan the brief "
                         "with pipeline.ingest.ValidateBriefs first")
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
            prompt = compose_prompt(scene, dialogue, language, background_sound, brief.speaker_description)
            voiceover = voiceovers.get(locale)
            # A voice-over clip lasts as long as its recording (in whole frames).
            duration_s = brief.duration_s if voiceover is None else max(1, round(voiceover.seconds))
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
                        "duration_s": brief.duration_s if voiceover is None else voiceover.frames / FPS,
                        "resolution": brief.resolution,
                        "seed": seed,
                        "model_id": model_id,
                        "reference_image_uri": brief.reference_image_uri,
                    }, variant.variant_id, brief.negative_prompt, brief.audio,
                        voiceover.sha256 if voiceover is not None else None, prompt_llm)
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
                            duration_s=duration_s,
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
                            voiceover=voiceover,
                        )
                    )
    return requests


class ExpandBriefs:
    """Batch stage: valid briefs (``row_index``, ``brief_json``, ``voiceovers_json``) in,
    RenderRequest rows out. ``prompt_llm``: the enhancement settings that enter the ids."""

    def __init__(self, model_id: str, prompt_llm: Mapping[str, str] | None = None):
        self.model_id = model_id
        self.prompt_llm = dict(prompt_llm) if prompt_llm else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row_index, brief_json, voiceovers_json in zip(batch.column("row_index").to_pylist(),
                                                          batch.column("brief_json").to_pylist(),
                                                          batch.column("voiceovers_json").to_pylist()):
            brief = CampaignBrief.model_validate_json(brief_json)
            voiceovers = {locale: VoiceoverAudio.model_validate(v)
                          for locale, v in json.loads(voiceovers_json or "{}").items()}
            rows.extend(r.model_dump() for r in expand_brief(brief, row_index, self.model_id, voiceovers,
                                                             self.prompt_llm))
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
