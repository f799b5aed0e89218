"""Runs InfoPrompt on a Cloud TPU VM or pod slice through gcloud.

  python launch/tpu_vm.py create --name=ip --zone=us-central2-b --accelerator_type=v4-8
  python launch/tpu_vm.py setup --name=ip --zone=us-central2-b --repo_url=https://github.com/ORG/infoprompt_jax
  python launch/tpu_vm.py run --name=ip --zone=us-central2-b --accelerator_type=v4-8 \
      --config=configs/rte.py --workdir=gs://BUCKET/rte --config.optim.lr=3e-4
  python launch/tpu_vm.py logs --name=ip --zone=us-central2-b
  python launch/tpu_vm.py delete --name=ip --zone=us-central2-b

`--dry_run` prints the commands, one per line, and runs nothing. Any `--config.*` flag of `run`
is passed to `infoprompt_jax.main` as is. Standard library only: it runs wherever gcloud does.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

# Paths on every worker, relative to the home directory that gcloud's ssh starts in.
REMOTE_REPO = "infoprompt_jax"
REMOTE_VENV = "infoprompt_venv"
REMOTE_LOG = "~/infoprompt.log"

DEFAULT_RUNTIME = "tpu-ubuntu2204-base"
RUNTIME_HELP = (
    f"TPU software version (default {DEFAULT_RUNTIME}, for v4 and older); "
    "v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e."
)

# What the local copy leaves out: version control, virtual environments and run outputs are
# large and host-specific.
LOCAL_COPY_EXCLUDES = (
    ".git",
    ".venv",
    "runs",
    ".whl",
    "__pycache__",
    ".pytest_cache",
    "*.egg-info",
)


def num_workers(accelerator_type: str) -> int:
    """Hosts in a slice (one training process each), read from its accelerator type.

    v2, v3, v4 and v5p count TensorCores (8 a host); v5e (v5litepod) and v6e count chips, up to 8
    on one host, else 4 a host. An unknown type counts as several hosts, the case that needs the
    stricter checks.
    """
    generation, _, size = accelerator_type.rpartition("-")
    if not size.isdigit():
        raise SystemExit(
            f"Cannot read the size of accelerator type {accelerator_type!r}; "
            "expected e.g. v4-8, v5litepod-16, v6e-8."
        )
    size = int(size)
    if generation in ("v2", "v3", "v4", "v5p"):
        return max(1, size // 8)
    if generation in ("v5litepod", "v6e"):
        return 1 if size <= 8 else size // 4
    return 2


def gcloud(*args: str, project: str | None) -> list[str]:
    """A `gcloud compute tpus ...` argv, with `--project` appended when given."""
    return ["gcloud", "compute", "tpus", *args] + ([f"--project={project}"] if project else [])


def ssh(args, command: str, worker: str = "all") -> list[str]:
    """Runs a shell command on one worker or, with "all", on every worker at once."""
    return gcloud(
        "tpu-vm",
        "ssh",
        args.name,
        f"--zone={args.zone}",
        f"--worker={worker}",
        "--command",
        command,
        project=args.project,
    )


def create_commands(args) -> list[list[str]]:
    spot = ["--spot"] if args.spot else []
    if args.queued:
        # A queued resource waits for capacity instead of failing when the zone has none; its node
        # takes the same name, so every other subcommand addresses it like a plain TPU VM.
        return [
            gcloud(
                "queued-resources",
                "create",
                args.name,
                f"--node-id={args.name}",
                f"--zone={args.zone}",
                f"--accelerator-type={args.accelerator_type}",
                f"--runtime-version={args.runtime_version}",
                *spot,
                project=args.project,
            )
        ]
    return [
        gcloud(
            "tpu-vm",
            "create",
            args.name,
            f"--zone={args.zone}",
            f"--accelerator-type={args.accelerator_type}",
            f"--version={args.runtime_version}",
            *spot,
            project=args.project,
        )
    ]


def setup_commands(args) -> list[list[str]]:
    commands = []
    if args.repo_url:
        # Pull when already cloned, so rerunning setup updates the code instead of failing.
        get_repo = (
            f"if [ -d {REMOTE_REPO}/.git ]; then git -C {REMOTE_REPO} pull --ff-only; "
            f"else git clone {shlex.quote(args.repo_url)} {REMOTE_REPO}; fi"
        )
    else:
        # One archive instead of `scp --recurse` of the directory: that would copy the local
        # virtual environment and .git to every worker, file by file.
        archive = os.path.join(tempfile.gettempdir(), f"{args.name}-{REMOTE_REPO}.tar.gz")
        excludes = [f"--exclude={pattern}" for pattern in LOCAL_COPY_EXCLUDES]
        commands.append(["tar", "-czf", archive, *excludes, "-C", args.local_repo, "."])
        commands.append(
            gcloud(
                "tpu-vm",
                "scp",
                archive,
                f"{args.name}:{REMOTE_REPO}.tar.gz",
                f"--zone={args.zone}",
                "--worker=all",
                project=args.project,
            )
        )
        get_repo = (
            f"mkdir -p {REMOTE_REPO} && tar -xzf {REMOTE_REPO}.tar.gz -C {REMOTE_REPO} "
            f"&& rm {REMOTE_REPO}.tar.gz"
        )
    steps = [
        get_repo,
        # TPU VM images ship Ubuntu's Python 3.10 and the package needs >= 3.11: uv fetches a
        # standalone interpreter for the virtual environment.
        "python3 -m pip install --user --quiet uv",
        f"(test -x {REMOTE_VENV}/bin/python || python3 -m uv venv --seed "
        f"--python={args.python_version} {REMOTE_VENV})",
        # gcsfs: Orbax reaches gs:// workdirs through etils.epath, which needs it.
        f"cd {REMOTE_REPO} && ~/{REMOTE_VENV}/bin/pip install -e '.[tpu]' gcsfs",
    ]
    commands.append(ssh(args, " && ".join(steps)))
    return commands


def run_commands(args) -> list[list[str]]:
    workers = num_workers(args.accelerator_type)
    if workers > 1 and not args.workdir.startswith("gs://"):
        raise SystemExit(
            f"--workdir={args.workdir} is not a gs:// path, but {args.accelerator_type} has "
            f"{workers} hosts: every host must see the same checkpoint directory, and a local path "
            "is a different directory on each host. Use --workdir=gs://BUCKET/PATH."
        )
    train_flags = [f"--config={args.config}", f"--workdir={args.workdir}"]
    if workers > 1:
        # TPU VMs carry the slice's layout in their metadata, not in the environment main.py reads.
        train_flags.append("--multihost")
    train_flags += args.overrides
    # nohup and the redirects (stdin included) detach training from the ssh session, which then
    # returns at once and the run outlives it. The braces background training alone: with
    # `cd && nohup ... &`, a background subshell would keep ssh's output open until training ends.
    command = (
        f"cd {REMOTE_REPO} && {{ nohup ~/{REMOTE_VENV}/bin/python -m infoprompt_jax.main "
        f"{shlex.join(train_flags)} > {REMOTE_LOG} 2>&1 < /dev/null & }}"
    )
    return [ssh(args, command)]


def logs_commands(args) -> list[list[str]]:
    tail = f"tail -n {args.lines}{' -f' if args.follow else ''} {REMOTE_LOG}"
    return [ssh(args, tail, worker=str(args.worker))]


def delete_commands(args) -> list[list[str]]:
    if args.queued:
        # --force also deletes the TPU VM that the queued resource holds.
        return [
            gcloud(
                "queued-resources",
                "delete",
                args.name,
                f"--zone={args.zone}",
                "--force",
                project=args.project,
            )
        ]
    return [gcloud("tpu-vm", "delete", args.name, f"--zone={args.zone}", project=args.project)]


def execute(commands: list[list[str]], dry_run: bool) -> None:
    """Prints each command as a shell line; unless `dry_run`, runs it and stops at a failure."""
    for command in commands:
        print(("" if dry_run else "+ ") + shlex.join(command), flush=True)
        if not dry_run:
            try:
                subprocess.run(command, check=True)
            except subprocess.CalledProcessError as error:
                raise SystemExit(
                    f"Failed with status {error.returncode}: {shlex.join(command)}"
                ) from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--name", required=True, help="TPU VM (and queued resource) name.")
    common.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e).")
    common.add_argument("--project", help="Google Cloud project (default: gcloud's own).")
    common.add_argument("--dry_run", action="store_true", help="Print the commands, run nothing.")
    accelerator = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    accelerator.add_argument(
        "--accelerator_type",
        required=True,
        help="e.g. v4-8 (one host), v4-32 (4 hosts), v5litepod-16, v6e-8.",
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    subparsers = parser.add_subparsers(dest="subcommand", required=True)
    sub = {}
    sub["create"] = subparsers.add_parser(
        "create", parents=[common, accelerator], allow_abbrev=False, help="Create the TPU VM."
    )
    sub["create"].add_argument("--runtime_version", default=DEFAULT_RUNTIME, help=RUNTIME_HELP)
    sub["create"].add_argument(
        "--queued", action="store_true", help="Create a queued resource: waits for capacity."
    )
    sub["create"].add_argument(
        "--spot",
        action="store_true",
        help="Spot capacity: cheaper, preemptible (runs resume from the "
        "workdir's latest checkpoint).",
    )

    sub["setup"] = subparsers.add_parser(
        "setup",
        parents=[common],
        allow_abbrev=False,
        help=f"Put the repo in ~/{REMOTE_REPO} on every worker and install it.",
    )
    source = sub["setup"].add_mutually_exclusive_group(required=True)
    source.add_argument("--repo_url", help="git URL to clone (pulled again on a rerun).")
    source.add_argument("--local_repo", help="Local checkout to copy, e.g. `.`.")
    sub["setup"].add_argument(
        "--python_version",
        default="3.12",
        help="Python of the workers' virtual environment (>= 3.11).",
    )

    sub["run"] = subparsers.add_parser(
        "run",
        parents=[common, accelerator],
        allow_abbrev=False,
        help=f"Start training on every worker in the background (log: {REMOTE_LOG}). "
        "Extra --config.* flags are passed to infoprompt_jax.main.",
    )
    sub["run"].add_argument("--config", required=True, help="e.g. configs/rte.py.")
    sub["run"].add_argument(
        "--workdir", required=True, help="gs://BUCKET/PATH; a local path only on a one-host slice."
    )

    sub["logs"] = subparsers.add_parser(
        "logs",
        parents=[common],
        allow_abbrev=False,
        help=f"Print the end of a worker's {REMOTE_LOG}.",
    )
    sub["logs"].add_argument(
        "--worker", type=int, default=0, help="Worker index (0 logs the metrics)."
    )
    sub["logs"].add_argument("--lines", type=int, default=100)
    sub["logs"].add_argument("--follow", action="store_true", help="Keep printing (tail -f).")

    sub["delete"] = subparsers.add_parser(
        "delete",
        parents=[common],
        allow_abbrev=False,
        help="Delete the TPU VM or the queued resource.",
    )
    sub["delete"].add_argument(
        "--queued",
        action="store_true",
        help="It was created with --queued: delete the queued resource.",
    )

    args, extra = parser.parse_known_args(argv)
    # Only `run` forwards flags, and only config overrides: anything else is a typo.
    unknown = [
        flag for flag in extra if args.subcommand != "run" or not flag.startswith("--config.")
    ]
    if unknown:
        sub[args.subcommand].error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = extra
    return args


BUILDERS = {
    "create": create_commands,
    "setup": setup_commands,
    "run": run_commands,
    "logs": logs_commands,
    "delete": delete_commands,
}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    execute(BUILDERS[args.subcommand](args), args.dry_run)


if __name__ == "__main__":
    main()
