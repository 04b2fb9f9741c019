"""pydantic contracts shared by every stage; Arrow schemas derive from them."""

from schemas.brief import (
    BRIEF_ARROW_SCHEMA,
    REQUIRED_COLUMNS,
    BriefVariant,
    CampaignBrief,
    DialogueLine,
    LocalizedDialogue,
)
from schemas.formats import ASPECT_RATIOS, FPS, RESOLUTIONS
from schemas.locales import LANGUAGES, LocaleError, canonical_locale, language_for_locale
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA, RenderRequest

__all__ = [
    "ASPECT_RATIOS",
    "BRIEF_ARROW_SCHEMA",
    "BriefVariant",
    "FPS",
    "LANGUAGES",
    "REQUIRED_COLUMNS",
    "RENDER_REQUEST_ARROW_SCHEMA",
    "RESOLUTIONS",
    "CampaignBrief",
    "DialogueLine",
    "LocaleError",
    "LocalizedDialogue",
    "RenderRequest",
    "canonical_locale",
    "language_for_locale",
]
