"""Shared fixtures: one Ray instance per test session."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))
from s3_server import S3_TEST_ENV  # noqa: E402

# Tests never touch a hub, the network or a developer's AWS account. Set before
# Ray starts, so its worker processes inherit the same environment.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.update(S3_TEST_ENV)
# `python` in Ray Job entrypoints is this interpreter, as on a cluster whose image installs paddock.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
# Two cores shared by the test process, Ray workers and ffmpeg: one torch thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)


# The two tiers of the suite. `make test` runs everything not marked slow, in one process on
# the shared Ray instance; `make test-slow` runs the slow tier; CI (.ci/run) runs both. A test
# is slow when it starts processes of its own beyond that Ray (a `paddock` subprocess with its
# own Ray, a Ray Job, the rank processes of a TP group, a multi-node cluster, a browser), kills
# processes on purpose, or runs a campaign several times. Whole modules are listed here, with
# why; single tests carry `@pytest.mark.slow` in their own file.
SLOW_MODULES = {
    "e2e/": "runs `paddock` as a subprocess, which starts its own Ray",
    "integration/test_jobs.py": "submits Ray Jobs and runs the localization job after a campaign",
    "integration/test_replica.py": "TP groups of rank processes, and kills one mid-call",
    "integration/test_replica_memory.py": "TP=2 and TP=4 groups of rank processes",
    "integration/test_replica_generator.py": "a TP=2 replica of rank processes",
    "integration/test_replica_placement.py": "a 3-node cluster and 12 rank processes",
    "integration/test_tp_equivalence.py": "TP=2 and TP=4 gloo groups",
    "integration/test_review_browser.py": "Chromium and a Serve application",
    "integration/test_render_retries.py": "a batch that kills its render process, retried",
}


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        where = Path(str(item.fspath)).resolve().relative_to(tests_dir).as_posix()
        if any(where.startswith(module) for module in SLOW_MODULES):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one; its job server
    (for `ray job submit`) listens on loopback at ``ray_session.job_address``."""
    import ray

    from pipeline.run import ensure_ray

    context = None
    if not ray.is_initialized():
        context = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                           dashboard_port=free_port(), logging_level="WARNING",
                           runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    ensure_ray()
    ray.job_address = f"http://{context.dashboard_url}" if context and context.dashboard_url else None
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory) -> Path:
    """The MagiHuman test-vector weights as a released checkpoint directory."""
    path = tmp_path_factory.mktemp("tiny-checkpoint")
    shutil.copy(DATA / "magihuman-tiny" / "base.weights.safetensors", path / "model.safetensors")
    shutil.copy(DATA / "magihuman-tiny" / "base.json", path / "config.json")
    return path


def write_turbo_vae_folder(folder: Path, model) -> Path:
    """A TurboVAED in the released `turbo_vae/` form: its JSON config (lists, plus the diffusers keys the
    release carries) and a `.ckpt` holding the weights under `ema_state_dict` with DDP's `module.` prefix
    and a training-only entry beside them."""
    import json

    import torch

    folder.mkdir(parents=True)
    raw = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.__dict__.items()}
    raw.update({"_class_name": "TurboVAED", "in_channels": 3, "scaling_factor": 1.0, "patch_size_t": 1})
    (folder / "TurboV3-Wan22-Tiny.json").write_text(json.dumps(raw))
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"ema_state_dict": state, "global_step": 340000}, folder / "checkpoint-340000.ckpt")
    return folder


def require_tool(path: str | None, what: str) -> str:
    """A tool the test needs: skip without it on a developer's machine, fail under CI (which installs it)."""
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    message = f"{what} is not installed ({path or 'not found'}); .ci/run installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def ffmpeg_builds() -> dict[str, str | None]:
    """The ffmpeg builds a deployment may run, by name: imageio-ffmpeg's bundled build, the
    distribution's (/usr/bin, as apt installs it) and a 4.2 build (the Makefile installs it)."""
    import glob

    import imageio_ffmpeg

    old = sorted(glob.glob(str(ROOT / ".venv" / "ffmpeg-4.2" / "imageio_ffmpeg" / "binaries" / "ffmpeg-*")))
    return {
        "bundled": imageio_ffmpeg.get_ffmpeg_exe(),
        "distribution": "/usr/bin/ffmpeg",
        "4.2": old[0] if old else None,
    }
