"""The one settings model the batch job and the server share."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.serve_app import ServeConfig
from pipeline.run import CampaignConfig
from pipeline.settings import RenderSettings


@pytest.mark.parametrize("config", [CampaignConfig, ServeConfig])
@pytest.mark.parametrize("field, value", [("tp_size", 0), ("replicas", 0), ("profile", "cinema"),
                                          ("device", "tpu"), ("model", "magihuman-huge")])
def test_both_jobs_validate_the_shared_settings_alike(config, field, value):
    extra = {"briefs": "b.parquet"} if config is CampaignConfig else {}
    with pytest.raises(ValidationError, match=field):
        config(**extra, **{field: value})


def test_the_shared_settings_have_one_name_each():
    shared = set(RenderSettings.model_fields)
    assert {"tp_size", "replicas", "dam", "s3_endpoint", "model", "checkpoint_dir", "device", "profile",
            "thresholds", "decoder", "text_encoder_device"} == shared
    assert shared <= set(CampaignConfig.model_fields) and shared <= set(ServeConfig.model_fields)
    with pytest.raises(ValidationError, match="tp"):
        ServeConfig(tp=2)  # the old name is an unknown field now
    assert ServeConfig(tp_size=2).tp_size == CampaignConfig(briefs="b.parquet", tp_size=2).tp_size == 2
