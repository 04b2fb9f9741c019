"""Ray Job entry point for one campaign batch:

    ray job submit --address http://HEAD:8265 -- python -m jobs.run_campaign BRIEFS --dam s3://bucket/prefix ...

It takes the same arguments as `paddock run` and joins the cluster the job
runs on (Ray sets RAY_ADDRESS for job drivers).
"""

from __future__ import annotations

import sys

from jobs.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
