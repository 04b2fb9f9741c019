"""The command line's vocabulary, a leaf of jobs/ (it imports no other jobs module):
the argument groups the commands share and the errors a user can fix.

``cli.py`` builds the whole parser from these pieces; ``submit.py`` checks a
campaign's arguments with :func:`campaign_args_parser` before it sends them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.dam import DAMError
from pipeline.ingest import BriefsFileError
from pipeline.media import FFmpegSetupError

DEFAULT_MODEL = "tiny"
MODELS = ("tiny", "magihuman-distill", "magihuman-base")
PROFILES = ("web", "broadcast", "draft")  # pipeline.mux.CHANNEL_PROFILES, without importing the media stack


class CliError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


class ServeSetupError(ValueError):
    """The server cannot start as configured; the message names the setting and the fix."""


# `paddock submit --job` choice -> the `paddock` command the Ray Job runs.
JOB_COMMANDS = {"run_campaign": "run", "localize": "localize"}

# Errors that say what to fix in their message: one line on stderr, exit code 2.
USER_ERRORS = (BriefsFileError, CliError, DAMError, FFmpegSetupError, ServeSetupError)


def add_model_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--model", default=DEFAULT_MODEL, choices=MODELS, help="(default: %(default)s)")
    cmd.add_argument("--checkpoint-dir", type=Path, default=None, help="folder with the released weights (see README)")
    cmd.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    cmd.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks per replica (default: %(default)s)")
    cmd.add_argument("--decoder", default="auto", choices=("auto", "turbo", "full"),
                     help="video decoder: turbo (TurboVAED, the reference's), full (Wan2.2 VAE), auto: turbo when "
                          "<checkpoint-dir>/turbo_vae exists (default: %(default)s)")
    cmd.add_argument("--text-encoder-device", default=None, choices=("cpu", "cuda"),
                     help="where each replica's one text encoder runs; cpu frees ~18 GB of GPU memory on rank 0 "
                          "(default: the --device)")


def add_campaign_args(cmd: argparse.ArgumentParser) -> None:
    """The arguments of `paddock run` and `paddock localize`."""
    cmd.add_argument("briefs", help="briefs Parquet file")
    cmd.add_argument("--dam", default="./dam", help="./dir or s3://bucket/prefix (default: %(default)s)")
    cmd.add_argument("--s3-endpoint", default=None, help="endpoint URL of an S3-compatible store")
    add_model_args(cmd)
    cmd.add_argument("--replicas", type=int, default=1, help="model replicas in the pool (default: %(default)s)")
    cmd.add_argument("--workdir", type=Path, default=Path("./work"), help="local work directory (default: %(default)s)")
    cmd.add_argument("--batch-size", type=int, default=2, help="requests per replica call (default: %(default)s)")
    cmd.add_argument("--tokens-per-forward", type=int, default=None,
                     help="DiT tokens one replica call may hold: smaller shapes (256p drafts) pack more requests "
                          "(default: --batch-size clips of the run's largest shape)")
    cmd.add_argument("--deliver", default="all", choices=("all", "best"),
                     help="all takes, or only the best take of each (brief, variant, locale, aspect); the others "
                          "stay in <workdir>/spool for review (default: %(default)s)")
    cmd.add_argument("--verify", default="sample", choices=("sample", "full", "none"),
                     help="how the skip check looks at the objects of renders the DAM's index says are done: a "
                          "random sample by size and SHA-256, widened to all when one fails; all of them; or none "
                          "(default: %(default)s)")
    cmd.add_argument("--profile", default="web", choices=PROFILES,
                     help="delivery profile: web (-14 LUFS) | broadcast (-23 LUFS) | draft (web loudness, fastest "
                          "x264 preset) (default: %(default)s)")
    cmd.add_argument("--prompt-llm", default=None, metavar="URL",
                     help="OpenAI-compatible chat-completions endpoint that writes the model prompts (enhance "
                          "stage; key from $PADDOCK_PROMPT_LLM_KEY); default: the template composer")
    cmd.add_argument("--prompt-llm-model", default=None, metavar="NAME", help="the model name that endpoint serves")


def campaign_args_parser(prog: str = "paddock run") -> argparse.ArgumentParser:
    """A parser of a campaign's arguments alone (those of `paddock run`)."""
    parser = argparse.ArgumentParser(prog=prog)
    add_campaign_args(parser)
    return parser
