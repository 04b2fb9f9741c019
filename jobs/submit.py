"""Submit a campaign to a Ray cluster as a Ray Job (what `paddock submit` does).

The cluster's image must have paddock installed (infra/Dockerfile); the job
runs `python -m jobs.cli run|localize RUN_ARGS...` on the head node.
"""

from __future__ import annotations

import shlex
import sys
import time

from ray.job_submission import JobStatus, JobSubmissionClient

from jobs.args import JOB_COMMANDS, CliError, campaign_args_parser


def campaign_entrypoint(job: str, run_args: list[str]) -> str:
    """The shell command a Ray Job runs for a campaign."""
    return shlex.join(["python", "-m", "jobs.cli", JOB_COMMANDS[job], *run_args])


def submit_campaign(address: str, job: str, run_args: list[str], wait: bool = False,
                    poll_s: float = 2.0) -> int:
    """Submit; with ``wait``, stream the job's logs and return 0 only if it succeeded."""
    run_args = [a for a in run_args if a != "--"]
    if not run_args:
        raise CliError("give the briefs file and the options of `paddock run` after the submit options")
    parsed = campaign_args_parser().parse_args(run_args)  # a typo fails here, not on the cluster
    for flag, value in (("BRIEFS", parsed.briefs), ("--dam", parsed.dam)):
        if not str(value).startswith("s3://"):
            print(f"paddock submit: warning: {flag} {value} is a path on the cluster's nodes, not on this "
                  "machine; a multi-node cluster wants s3:// here", file=sys.stderr)
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CliError(f"--address {address}: cannot reach the Ray job server ({exc})") from None
    job_id = client.submit_job(entrypoint=campaign_entrypoint(job, run_args))
    print(f"submitted {job_id} to {address}: {campaign_entrypoint(job, run_args)}")
    if not wait:
        print(f"follow it with: ray job logs --address {address} --follow {job_id}")
        return 0
    shown = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        sys.stdout.write(logs[shown:])
        shown = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            print(f"job {job_id}: {status.value}")
            return 0 if status == JobStatus.SUCCEEDED else 1
        time.sleep(poll_s)
