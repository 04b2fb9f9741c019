"""The Serve application's Renderer deployment (jobs/serve_app.py binds it): one model replica per
Serve replica, where Ray places it, and the generator it builds from the server's settings,
checked to fit the cluster's GPUs before any replica starts."""

from typing import Any

import pyarrow as pa
from ray import serve

from jobs.args import ServeSetupError
from model.generator import GeneratorConfig
from model.placement import ReplicaShape, check_cluster_fit
from pipeline.mux import CHANNEL_PROFILES
from pipeline.render import RenderClips
from pipeline.review import ReviewThresholds
from pipeline.run import replica_factory, resolve_device
from pipeline.settings import RenderSettings


def renderer_options(tp: int, replicas: int, device: str) -> dict[str, Any]:
    """Serve deployment options of the Renderer: one model replica per Serve replica,
    placed by model/placement.py (at tp > 1 a STRICT_PACK group per replica: bundle 0
    for the replica actor, then one bundle per rank)."""
    return {"num_replicas": replicas, "max_ongoing_requests": 1,
            **ReplicaShape.for_device(tp, device).serve_options()}


def renderer_config(settings: RenderSettings) -> GeneratorConfig:
    """The Renderer's generator. On GPUs, a rank must fit every resolution an ad-hoc brief may
    ask at the longest duration it may ask (check_cluster_fit's default, 15 s), on the cluster's
    GPUs: else the server does not start, and the one line names the smallest --tp that fits."""
    device = resolve_device(settings.device)
    generator_config = GeneratorConfig(model=settings.model, checkpoint_dir=settings.checkpoint_dir, device=device,
                                       decoder=settings.decoder, s3_endpoint=settings.s3_endpoint,
                                       text_encoder_device=settings.text_encoder_device)
    try:
        check_cluster_fit(generator_config, settings.tp_size, ("256p", *generator_config.sr_resolutions))
    except ValueError as exc:
        raise ServeSetupError(f"serve: {exc}") from None
    return generator_config


@serve.deployment(name="Renderer")
class Renderer:
    """One model replica: RenderRequest rows in, rendered rows (assets, review, error) out."""

    def __init__(self, generator_config: GeneratorConfig, thresholds: ReviewThresholds, profile: str, tp: int):
        # At tp > 1 the replica's rank actors take the rank bundles of this replica's
        # placement group (renderer_options).
        self.render_clips = RenderClips(generator_config, thresholds=thresholds, profile=CHANNEL_PROFILES[profile],
                                        batch_size=1, make_generator=replica_factory(tp, generator_config.device))

    def __call__(self, requests: pa.Table) -> pa.Table:
        return self.render_clips(requests)
