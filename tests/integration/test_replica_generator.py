"""The whole tiny generator stack as a TP=2 replica: same clips as a single-process AVGenerator."""

from __future__ import annotations

import numpy as np
import pytest

from model.generator import AVGenerator, ClipSpec, GeneratorConfig
from model.placement import ReplicaShape
from model.replica import make_replica

CONFIG = GeneratorConfig(model="tiny", dtype="float32", return_latents=True)
BOUND = 1e-4  # relative L2 of fp32 distilled latents, TP vs TP=1 (see test_tp_equivalence.py)


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.slow
def test_tp2_replica_makes_the_clips_a_single_process_makes(ray_session):
    specs = [ClipSpec("A chef tastes the soup.", 0.5, "16:9", seed=5), ClipSpec("Rain on a tin roof.", 0.5, "16:9", seed=6)]
    replica = make_replica(CONFIG, ReplicaShape(tp_size=2, cpus_per_rank=0.25))
    try:
        clips = replica.generate(specs)
    finally:
        replica.shutdown()
    reference = AVGenerator(CONFIG).generate(specs)
    assert len(clips) == len(specs)
    for clip, ref in zip(clips, reference):
        assert clip.frames.shape == ref.frames.shape and clip.frames.dtype == np.uint8
        assert clip.audio.shape == ref.audio.shape and clip.sample_rate == ref.sample_rate
        assert rel_err(clip.latents.video, ref.latents.video) < BOUND
        assert rel_err(clip.latents.audio, ref.latents.audio) < BOUND
        # Decoding latents this close moves a pixel by at most a couple of levels.
        assert np.abs(clip.frames.astype(int) - ref.frames.astype(int)).max() <= 2
    assert rel_err(clips[0].latents.video, clips[1].latents.video) > 0.1  # the seeds make different clips


def test_tp_size_the_heads_do_not_allow_is_refused_before_any_actor_starts():
    with pytest.raises(ValueError, match="tp_size=3"):
        make_replica(CONFIG, ReplicaShape(tp_size=3))
