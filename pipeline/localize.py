"""The localization job: render only the locales that are new since the last run.

For a campaign that already ran, a content-ops team adds locales (and their
`localized_dialogue`) to the briefs file and runs this job (`paddock localize`,
or `python -m jobs.cli localize` as a Ray Job): every render the DAM's manifest
already holds done is left alone (not even checked again), and only the others
(the new locales' renders, and any render that failed or was never reached) are
rendered, reviewed, encoded and archived. The DAM's manifest
then lists the old renders and the new ones.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.dam import DAMError, open_dam
from pipeline.lineage import JobType
from pipeline.reports import read_dam_manifest
from pipeline.run import CampaignConfig, CampaignResult, run_campaign
from schemas.render import RenderRequest


def localize(config: CampaignConfig, log: Callable[[str], None] = print) -> CampaignResult:
    previous = read_dam_manifest(open_dam(config.dam, s3_endpoint=config.s3_endpoint))
    if not previous:
        raise DAMError(f"{config.dam}: no manifest.parquet from an earlier run; run `paddock run` first")
    # Counted per render: a render that failed (or was never reached) is made; one done is left alone.
    rendered = {row.render_id for row in previous.values() if row.status in ("done", "skipped")}

    def is_new(request: RenderRequest) -> bool:
        return request.render_id not in rendered

    return run_campaign(config, log, job_type=JobType.LOCALIZATION, select=is_new)
