"""The `paddock` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Callable

from pipeline.ingest import BriefsFileError

DEFAULT_MODEL = "tiny"


class CliError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


def _plan(args: argparse.Namespace) -> int:
    from pipeline.run import plan, write_plan

    Path(args.out).mkdir(parents=True, exist_ok=True)  # fail before any work when it cannot be written
    result = plan(args.briefs, model_id=args.model)
    requests_path, rejects_path = write_plan(result, args.out)
    print(
        f"paddock plan: {result.briefs_read} briefs read, {result.briefs_valid} valid, "
        f"{result.requests.num_rows} render requests, {result.rejects.num_rows} rejects"
    )
    for reason, count in result.reject_reasons.most_common():
        print(f"  {count:6d}  {reason}")
    print(f"wrote {requests_path} and {rejects_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paddock", description="Briefs in, reviewed and archived ad clips out.")
    commands = parser.add_subparsers(dest="command", required=True)

    plan_cmd = commands.add_parser("plan", help="validate briefs and fan them out into render requests")
    plan_cmd.add_argument("briefs", help="briefs Parquet file")
    plan_cmd.add_argument("--out", required=True, help="directory for requests.parquet and rejects.parquet")
    plan_cmd.add_argument("--model", default=DEFAULT_MODEL, help="model id the requests are planned for (default: %(default)s)")
    plan_cmd.set_defaults(handler=_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (BriefsFileError, CliError) as exc:
        print(f"paddock {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output path that cannot be written, a disk that is full
        print(f"paddock {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paddock {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
