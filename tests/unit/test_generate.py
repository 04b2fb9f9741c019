"""The generate stage's batching and its retry layer, with a stand-in for the model replica."""

from __future__ import annotations

import numpy as np

from model.generator import ClipOutput
from model.replica import ReplicaError
from pipeline.generate import (MAX_PACKED_CLIPS, FailedRender, GenerateClips, GeneratedClip, clip_tokens, shape_batches,
                               token_budget)
from schemas.render import RenderRequest


def request(render_id: str, resolution: str = "256p", duration_s: int = 2, prompt: str = "ok",
            model_id: str = "tiny") -> RenderRequest:
    return RenderRequest(
        render_id=render_id, brief_id="b1", campaign_id="c1", row_index=0, locale="en-US", language="English",
        aspect_ratio="16:9", resolution=resolution, width=448, height=256,
        duration_s=duration_s, seed=0, take=0, prompt=prompt, dialogue=[], forbidden_terms=[],
        model_id=model_id)


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


def released(render_id: str, resolution: str) -> RenderRequest:
    return request(render_id, resolution=resolution, duration_s=5, model_id="magihuman-distill")


def test_drafts_pack_beyond_the_batch_size_up_to_the_token_budget_and_1080p_does_not():
    drafts = [released(f"d{i}", "256p") for i in range(7)]
    finals = [released(f"f{i}", "1080p") for i in range(3)]
    draft_tokens, final_tokens = clip_tokens(drafts[0]), clip_tokens(finals[0])
    assert draft_tokens * 3 < final_tokens  # a 5 s 256p clip has a fraction of a 1080p clip's tokens
    budget = 3 * draft_tokens + 1
    mixed = [drafts[0], finals[0], *drafts[1:4], finals[1], *drafts[4:], finals[2]]
    batches = shape_batches(mixed, max_batch=2, tokens_per_forward=budget)
    assert sorted([r.render_id for r in b] for b in batches) == [  # each shape's batches in input order
        ["d0", "d1", "d2"], ["d3", "d4", "d5"], ["d6"], ["f0", "f1"], ["f2"]]
    assert all(sum(clip_tokens(r) for r in b) <= budget for b in batches if b[0].resolution == "256p")
    # The default budget: batch_size clips of the run's largest shape; 1080p keeps the batch size exactly.
    default = token_budget(mixed, max_batch=2)
    assert default == 2 * final_tokens
    sizes = sorted((b[0].resolution, len(b)) for b in shape_batches(mixed, 2, default))
    assert sizes == [("1080p", 1), ("1080p", 2), ("256p", 7)]
    # A draft-only run packs nothing by default (the budget is its own batch), and never past the cap.
    assert [len(b) for b in shape_batches(drafts, 2, token_budget(drafts, 2))] == [2, 2, 2, 1]
    many = [released(f"m{i}", "256p") for i in range(MAX_PACKED_CLIPS + 3)]
    assert [len(b) for b in shape_batches(many, 2, 10**9)] == [MAX_PACKED_CLIPS, 3]


def test_a_packed_call_renders_every_request_once_in_the_callers_order():
    replica = StandInReplica()
    drafts = [request(f"d{i}", prompt=f"p{i}") for i in range(5)]
    big = request("big", resolution="1080p", prompt="big")
    stage = GenerateClips(config=None, max_batch=1, make_generator=lambda _: replica,
                          tokens_per_forward=4 * clip_tokens(drafts[0]))
    asked = [drafts[0], big, *drafts[1:]]
    results = stage(asked)
    assert [r.request.render_id for r in results] == [r.render_id for r in asked]
    assert sorted(replica.calls) == [["big"], ["p0", "p1", "p2", "p3"], ["p4"]]  # one forward of four drafts, 1080p alone


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
