"""Write a small, realistic example campaign to examples/briefs.parquet.

Three briefs for a fictional sparkling-water brand:
- a spokesperson line in English, German and Japanese, in 16:9 and 9:16;
- a product close-up with only ambient sound (no dialogue), in two takes;
- a vertical social cut with a French voice line.

Run: python examples/make_briefs.py [OUT.parquet]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.brief import BRIEF_ARROW_SCHEMA

CAMPAIGN_ID = "lumen-spring-2027"

BRIEFS = [
    {
        "brief_id": "spokesperson-hero",
        "campaign_id": CAMPAIGN_ID,
        "prompt": (
            "A woman in her thirties with short dark hair and a linen shirt stands in a sunlit kitchen, "
            "holding a chilled glass bottle of Lumen sparkling water. She looks into the camera, smiles "
            "and speaks warmly while condensation runs down the bottle. Static medium close-up, shallow "
            "depth of field, soft morning light, natural colour grading."
        ),
        "source_locale": "en-US",
        "dialogue": [{"speaker": "Woman in linen shirt", "line": "Spring tastes better with Lumen."}],
        "localized_dialogue": [
            {"locale": "de-DE", "lines": [{"speaker": "Woman in linen shirt", "line": "Der Frühling schmeckt besser mit Lumen."}]},
            {"locale": "ja-JP", "lines": [{"speaker": "Woman in linen shirt", "line": "春はルーメンでもっとおいしく。"}]},
        ],
        "locales": ["en-US", "de-DE", "ja-JP"],
        "aspect_ratios": ["16:9", "9:16"],
        "duration_s": 3,
        "resolution": "256p",
        "takes": 1,
        "seed": 1207,
        "background_sound": "Quiet kitchen ambience with birdsong outside",
        "reference_image_uri": None,
        "forbidden_terms": ["cure", "guaranteed"],
    },
    {
        "brief_id": "product-closeup",
        "campaign_id": CAMPAIGN_ID,
        "prompt": (
            "Extreme close-up of a glass bottle of Lumen sparkling water on a wet slate surface. Bubbles "
            "rise through the water, a drop slides down the label, the camera slowly pushes in. Cool blue "
            "rim light, dark background, crisp product photography look."
        ),
        "source_locale": "en-US",
        "dialogue": None,
        "localized_dialogue": None,
        "locales": None,
        "aspect_ratios": ["1:1"],
        "duration_s": 2,
        "resolution": "256p",
        "takes": 2,
        "seed": None,
        "background_sound": "Fizzing bubbles and a soft glass clink",
        "reference_image_uri": None,
        "forbidden_terms": None,
    },
    {
        "brief_id": "social-vertical-fr",
        "campaign_id": CAMPAIGN_ID,
        "prompt": (
            "A young man on a Paris rooftop at golden hour opens a bottle of Lumen, takes a sip and "
            "grins at the camera. Handheld vertical framing, warm backlight, city skyline behind him."
        ),
        "source_locale": "fr-FR",
        "dialogue": [{"speaker": "Young man on rooftop", "line": "Ça pétille, comme le printemps."}],
        "localized_dialogue": None,
        "locales": ["fr-FR"],
        "aspect_ratios": ["9:16"],
        "duration_s": 2,
        "resolution": "256p",
        "takes": 1,
        "seed": 88,
        "background_sound": "Distant city traffic and a light breeze",
        "reference_image_uri": None,
        "forbidden_terms": ["alcohol"],
    },
]


def main(out: str = str(Path(__file__).with_name("briefs.parquet"))) -> None:
    pq.write_table(pa.Table.from_pylist(BRIEFS, schema=BRIEF_ARROW_SCHEMA), out)
    print(f"wrote {len(BRIEFS)} briefs to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
