"""The `paddock` command line, and the Ray Job entry point (`python -m jobs.cli run|localize ...`).

Its vocabulary (shared argument groups, CliError) is jobs/args.py; the jobs
themselves are pipeline functions (pipeline.run.run_campaign, pipeline.localize.localize).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from jobs.args import (
    DEFAULT_MODEL,
    JOB_COMMANDS,
    MODELS,
    PROFILES,
    USER_ERRORS,
    CliError,
    add_campaign_args,
    add_model_args,
)
from pipeline.console import VERBOSE_ENV, filter_stderr_noise
from pipeline.errors import describe_validation_error, ray_worker_error
from pipeline.ingest import read_briefs_table
from pipeline.media import check_ffmpeg
from schemas.formats import ASPECT_RATIOS, RESOLUTIONS


def _plan(args: argparse.Namespace) -> int:
    # A bad file or output path fails here, before the model stack is even imported.
    briefs = read_briefs_table(args.briefs, args.s3_endpoint)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from pipeline.expand import summarize_fan_out
    from pipeline.run import plan, write_plan

    result = plan(briefs, model_id=args.model, s3_endpoint=args.s3_endpoint)
    requests_path, rejects_path = write_plan(result, args.out)
    print(
        f"paddock plan: {result.briefs_read} briefs read, {result.briefs_valid} valid, "
        f"{result.requests.num_rows} render requests, {result.rejects.num_rows} rejects"
    )
    for reason, count in result.reject_reasons.most_common():
        print(f"  {count:6d}  {reason}")
    fan_out = summarize_fan_out(result.requests)
    if fan_out:
        print("fan-out per brief (variants x locales x aspects x takes = renders, clip-seconds):")
    for brief in fan_out:
        print(f"  {brief.brief_id}: {brief.variants} x {brief.locales} x {brief.aspect_ratios} x {brief.takes}"
              f" = {brief.requests} renders, {brief.clip_seconds} s" + "".join(f"; {w}" for w in brief.warnings))
    if fan_out:
        print(f"  total: {result.requests.num_rows} renders, {sum(b.clip_seconds for b in fan_out)} clip-seconds")
    print(f"wrote {requests_path} and {rejects_path}")
    return 0


def _campaign_config(args: argparse.Namespace):
    from pipeline.enhance import PromptLLMConfig
    from pipeline.run import CampaignConfig

    try:
        prompt_llm = PromptLLMConfig.from_settings(args.prompt_llm, args.prompt_llm_model)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return CampaignConfig(
        briefs=args.briefs, dam=args.dam, s3_endpoint=args.s3_endpoint, model=args.model,
        checkpoint_dir=args.checkpoint_dir, device=args.device, tp_size=args.tp, replicas=args.replicas,
        workdir=args.workdir, batch_size=args.batch_size, tokens_per_forward=args.tokens_per_forward,
        profile=args.profile, decoder=args.decoder, prompt_llm=prompt_llm,
        text_encoder_device=args.text_encoder_device, deliver=args.deliver, verify=args.verify,
    )


def _report(result, command: str) -> int:
    from pipeline.manifest import summary_lines

    print()
    print("\n".join(summary_lines(result.manifest)))
    print(f"clips:          {result.dam_uri}")
    print(f"manifest:       {result.manifest_path}")
    print(f"contact sheet:  {result.contact_sheet_path}")
    if result.failed:
        print(f"paddock {command}: {len(result.failed)} of {len(result.manifest)} renders failed (see above)",
              file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    from pipeline.run import RunSetupError, run_campaign

    try:
        return _report(run_campaign(_campaign_config(args)), "run")
    except RunSetupError as exc:
        raise CliError(str(exc)) from None


def _localize(args: argparse.Namespace) -> int:
    from pipeline.localize import localize
    from pipeline.run import RunSetupError

    try:
        return _report(localize(_campaign_config(args)), "localize")
    except RunSetupError as exc:
        raise CliError(str(exc)) from None


def _submit(args: argparse.Namespace) -> int:
    from jobs.submit import submit_campaign

    return submit_campaign(args.address, args.job, args.run_args, wait=args.wait)


def _generate(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from model.generator import ClipSpec, GeneratorConfig
    from pipeline.mux import mux_clip
    from pipeline.run import ensure_ray, replica_factory, resolve_device

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise CliError(f"--out {out}: give a .mp4 path")
    out.parent.mkdir(parents=True, exist_ok=True)
    check_ffmpeg()
    config = GeneratorConfig(model=args.model, checkpoint_dir=args.checkpoint_dir, device=resolve_device(args.device),
                             sr_resolutions=(args.resolution,) if args.resolution != "256p" else (),
                             decoder=args.decoder, text_encoder_device=args.text_encoder_device)
    spec = ClipSpec(prompt=args.prompt, duration_s=args.seconds, aspect_ratio=args.aspect,
                    resolution=args.resolution, seed=args.seed, reference_image=args.image)
    print(f"paddock generate: building the {args.model} generator on {config.device}"
          + (f" as {args.tp} tensor-parallel ranks (Ray actors)" if args.tp > 1 else ""), file=sys.stderr)
    if args.tp > 1:
        ensure_ray()
    generator = replica_factory(args.tp, config.device)(config)
    try:
        (clip,) = generator.generate([spec])
    finally:
        if args.tp > 1:
            generator.shutdown()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".paddock-generate-") as tmp:
        muxed = mux_clip(clip.frames, clip.audio, clip.sample_rate, clip.fps, tmp, "clip")
        shutil.move(muxed.mp4_path, out)
    phases = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in clip.timings.items())
    height, width = clip.frames.shape[1:3]
    print(f"wrote {out}: {clip.frames.shape[0]} frames {width}x{height} at {clip.fps} fps, "
          f"audio {clip.audio.shape[0] / clip.sample_rate:.2f}s ({phases})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from jobs.serve_app import ServeConfig, run_server

    config = ServeConfig(model=args.model, checkpoint_dir=args.checkpoint_dir, device=args.device, dam=args.dam,
                         s3_endpoint=args.s3_endpoint, tp_size=args.tp, replicas=args.replicas,
                         queue_limit=args.queue_limit, client_queue_limit=args.client_queue_limit,
                         insecure_local=args.insecure_local, profile=args.profile, host=args.host,
                         callback_allow=tuple(h.strip() for h in (args.callback_allow or "").split(",") if h.strip()),
                         ingress_replicas=args.ingress_replicas, workdir=args.workdir, decoder=args.decoder,
                         text_encoder_device=args.text_encoder_device)
    run_server(config, port=args.port, host=args.host)  # a ServeSetupError is a user error: one line
    return 0


def _review(args: argparse.Namespace) -> int:
    from jobs.auth import TOKEN_ENV
    from jobs.review_page import ReviewService, serve_review

    service = ReviewService(args.dam, s3_endpoint=args.s3_endpoint, api_tokens=os.environ.get(TOKEN_ENV),
                            insecure_local=args.insecure_local, host=args.host, workdir=args.workdir)
    serve_review(service, host=args.host, port=args.port)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from jobs.doctor import DoctorSettings, doctor

    return doctor(DoctorSettings(model=args.model, device=args.device, checkpoint_dir=args.checkpoint_dir,
                                 dam=args.dam, s3_endpoint=args.s3_endpoint, address=args.address, tp=args.tp,
                                 text_encoder_device=args.text_encoder_device))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paddock", description="Briefs in, reviewed and archived ad clips out.")
    # every command takes --verbose: Ray's and torch's start-up warnings are hidden without it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show Ray's and torch's own warnings and logs")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, **options) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], **options)

    plan_cmd = add_command("plan", help="validate briefs and fan them out into render requests")
    plan_cmd.add_argument("briefs", help="briefs Parquet file")
    plan_cmd.add_argument("--out", required=True, help="directory for requests.parquet and rejects.parquet")
    plan_cmd.add_argument("--model", default=DEFAULT_MODEL, choices=MODELS,
                          help="model the requests are planned for (default: %(default)s)")
    plan_cmd.add_argument("--s3-endpoint", default=None, help="endpoint URL of an S3-compatible store (for s3:// briefs)")
    plan_cmd.set_defaults(handler=_plan)

    run_cmd = add_command("run", help="make, review, encode and archive every clip of a briefs file")
    add_campaign_args(run_cmd)
    run_cmd.set_defaults(handler=_run)

    localize_cmd = add_command(
        "localize", help="for a campaign already run, render only the locales new since the DAM's manifest")
    add_campaign_args(localize_cmd)
    localize_cmd.set_defaults(handler=_localize)

    submit_cmd = add_command(
        "submit", help="submit a campaign to a Ray cluster as a Ray Job",
        description="Submits `python -m jobs.cli run|localize RUN_ARGS...` to the cluster; RUN_ARGS are those of "
                    "`paddock run`.")
    submit_cmd.add_argument("--address", required=True, help="the cluster's job server, e.g. http://head:8265")
    submit_cmd.add_argument("--job", choices=tuple(JOB_COMMANDS), default="run_campaign")
    submit_cmd.add_argument("--wait", action="store_true", help="follow the job's logs until it ends")
    submit_cmd.add_argument("run_args", nargs=argparse.REMAINDER, help="BRIEFS and the options of `paddock run`")
    submit_cmd.set_defaults(handler=_submit)

    serve_cmd = add_command(
        "serve", help="the ad-hoc HTTP endpoint (Ray Serve): POST /v1/renders, GET /v1/renders/{id}",
        description="Clients authenticate with a bearer token from $PADDOCK_API_TOKEN (one token, or "
                    "client_id:token pairs separated by commas), unless --insecure-local.")
    serve_cmd.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    serve_cmd.add_argument("--dam", default="./dam", help="./dir or s3://bucket/prefix (default: %(default)s)")
    serve_cmd.add_argument("--s3-endpoint", default=None, help="endpoint URL of an S3-compatible store")
    add_model_args(serve_cmd)
    serve_cmd.add_argument("--replicas", type=int, default=1, help="model replicas (default: %(default)s)")
    serve_cmd.add_argument("--queue-limit", type=int, default=32,
                           help="renders waiting at most; more get 503 + Retry-After (default: %(default)s)")
    serve_cmd.add_argument("--profile", default="web", choices=PROFILES, help="(default: %(default)s)")
    serve_cmd.add_argument("--client-queue-limit", type=int, default=8,
                           help="renders one client may have waiting; more get 429 + Retry-After (default: %(default)s)")
    serve_cmd.add_argument("--ingress-replicas", type=int, default=1,
                           help="HTTP ingress replicas; they share queue and statuses through the DAM (default: %(default)s)")
    serve_cmd.add_argument("--callback-allow", default=None, metavar="HOST[,HOST...]",
                           help="webhook hosts allowed although loopback or private (plain http allowed for them)")
    serve_cmd.add_argument("--workdir", type=Path, default=Path("./work"),
                           help="where lineage.jsonl goes without OPENLINEAGE_URL (default: %(default)s)")
    serve_cmd.add_argument("--insecure-local", action="store_true",
                           help="no authentication; only allowed on a loopback host")
    serve_cmd.set_defaults(handler=_serve)

    review_cmd = add_command(
        "review", help="the review page (/review) and decision API over a DAM, without a renderer",
        description="Reviewers authenticate with a token of $PADDOCK_API_TOKEN that has the review role "
                    "(client_id:token:review), unless --insecure-local.")
    review_cmd.add_argument("--dam", required=True, help="./dir or s3://bucket/prefix")
    review_cmd.add_argument("--s3-endpoint", default=None, help="endpoint URL of an S3-compatible store")
    review_cmd.add_argument("--port", type=int, default=8001, help="(default: %(default)s)")
    review_cmd.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    review_cmd.add_argument("--workdir", type=Path, default=Path("./work"),
                            help="where lineage.jsonl goes without OPENLINEAGE_URL (default: %(default)s)")
    review_cmd.add_argument("--insecure-local", action="store_true",
                            help="no authentication; only allowed on a loopback host")
    review_cmd.set_defaults(handler=_review)

    doctor_cmd = add_command(
        "doctor", help="check ffmpeg, torch/GPUs, Ray, the model folders, the DAM and lineage before a job")
    doctor_cmd.add_argument("--dam", default="./dam", help="./dir or s3://bucket/prefix (default: %(default)s)")
    doctor_cmd.add_argument("--s3-endpoint", default=None, help="endpoint URL of an S3-compatible store")
    doctor_cmd.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    add_model_args(doctor_cmd)
    doctor_cmd.set_defaults(handler=_doctor)

    gen_cmd = add_command("generate", help="make one clip by hand (H.264 + AAC MP4)")
    gen_cmd.add_argument("--prompt", required=True, help="the model prompt (scene, Dialogue:, Background Sound:)")
    gen_cmd.add_argument("--seconds", type=int, default=5, choices=range(2, 16), metavar="2..15",
                         help="duration (default: %(default)s)")
    gen_cmd.add_argument("--aspect", default="16:9", choices=ASPECT_RATIOS, help="(default: %(default)s)")
    gen_cmd.add_argument("--resolution", default="256p", choices=RESOLUTIONS, help="(default: %(default)s)")
    gen_cmd.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    gen_cmd.add_argument("--image", default=None, help="first-frame reference image (image-to-video)")
    add_model_args(gen_cmd)
    gen_cmd.add_argument("--out", required=True, help="output .mp4 path")
    gen_cmd.set_defaults(handler=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # before Ray starts: its workers inherit it
    filter_stderr_noise()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ValidationError as exc:
        print(f"paddock {args.command}: error: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        print(f"paddock {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output path that cannot be written, a disk that is full
        print(f"paddock {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not type(exc).__module__.startswith("ray."):
            raise
        print(f"paddock {args.command}: error in a Ray worker: {ray_worker_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"paddock {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
