"""The generate stage's batching and its retry layer, with a stand-in for the model replica."""

from __future__ import annotations

import numpy as np

from model.generator import ClipOutput
from model.replica import ReplicaError
from pipeline.generate import FailedRender, GenerateClips, GeneratedClip, shape_batches
from schemas.render import RenderRequest


def request(render_id: str, resolution: str = "256p", duration_s: int = 2, prompt: str = "ok") -> RenderRequest:
    return RenderRequest(
        render_id=render_id, brief_id="b1", campaign_id="c1", row_index=0, locale="en-US", language="English",
        aspect_ratio="16:9", resolution=resolution, width=448, height=256,
        duration_s=duration_s, seed=0, take=0, prompt=prompt, dialogue=[], forbidden_terms=[],
        model_id="tiny")


class StandInReplica:
    """Answers every prompt but "bad"; a batch holding "bad" raises like a model would.
    ``replica_down`` makes every call raise what a TP replica raises once its own retries ran out."""

    def __init__(self, replica_down: bool = False):
        self.calls: list[list[str]] = []
        self.replica_down = replica_down

    def generate(self, specs):
        self.calls.append([spec.prompt for spec in specs])
        if self.replica_down:
            raise ReplicaError("2 requests failed on 2 TP groups: rank 1 died")
        if any(spec.prompt == "bad" for spec in specs):
            raise ValueError("reference image unreadable")
        return [ClipOutput(frames=np.zeros((3, 2, 2, 3), np.uint8), audio=np.zeros((10, 2), np.float32),
                           sample_rate=44100) for _ in specs]


def test_shape_batches_never_mix_shapes_and_respect_the_batch_size():
    requests = [request("a"), request("b", resolution="540p"), request("c"), request("d"), request("e", duration_s=3)]
    batches = shape_batches(requests, max_batch=2)
    assert sorted([r.render_id for r in batch] for batch in batches) == [["a", "c"], ["b"], ["d"], ["e"]]
    for batch in batches:
        assert len({(r.resolution, r.duration_s) for r in batch}) == 1


def test_a_bad_request_fails_alone_and_the_rest_of_its_batch_goes_on():
    replica = StandInReplica()
    stage = GenerateClips(config=None, max_batch=3, make_generator=lambda _: replica)
    results = stage([request("a"), request("b", prompt="bad"), request("c")])
    assert [type(r) for r in results] == [GeneratedClip, FailedRender, GeneratedClip]
    assert results[1].error == "ValueError: reference image unreadable"
    assert replica.calls == [["ok", "bad", "ok"], ["ok"], ["bad"], ["ok"]]


def test_a_replica_failure_is_not_retried_again_request_by_request():
    replica = StandInReplica(replica_down=True)
    stage = GenerateClips(config=None, max_batch=2, make_generator=lambda _: replica)
    results = stage([request("a"), request("b")])
    assert all(isinstance(r, FailedRender) and "rank 1 died" in r.error for r in results)
    assert replica.calls == [["ok", "ok"]]  # the replica layer retried; this one does not
