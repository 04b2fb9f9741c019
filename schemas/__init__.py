"""pydantic contracts shared by every stage; Arrow schemas derive from them."""

from schemas.brief import (
    ASPECT_RATIOS,
    BRIEF_ARROW_SCHEMA,
    REQUIRED_COLUMNS,
    RESOLUTIONS,
    CampaignBrief,
    DialogueLine,
    LocalizedDialogue,
)
from schemas.locales import LANGUAGES, LocaleError, canonical_locale, language_for_locale
from schemas.render import FPS, RENDER_REQUEST_ARROW_SCHEMA, RenderRequest

__all__ = [
    "ASPECT_RATIOS",
    "BRIEF_ARROW_SCHEMA",
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
