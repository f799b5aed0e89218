"""Runs InfoPrompt on a GPU host, or on several with one process each.

  python launch/gpu_host.py setup
  python launch/gpu_host.py run --config=configs/rte.py --workdir=runs/rte --config.optim.lr=3e-4
  # Two hosts: the same command on each, with its own --process_id.
  python launch/gpu_host.py run --config=configs/rte.py --workdir=/shared/rte \
      --num_processes=2 --coordinator=10.0.0.1:1234 --process_id=0

One process drives all of a host's GPUs: JAX puts them all in the mesh, so there is no process
per GPU. `--dry_run` prints the commands, one per line, and runs nothing. Any `--config.*` flag
of `run` is passed to `infoprompt_jax.main` as is. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_commands(args) -> list[tuple[dict, list[str]]]:
    del args
    # Installs into the interpreter running this script, the one `run` starts training with.
    return [({}, [sys.executable, "-m", "pip", "install", "-e", f"{REPO_ROOT}[cuda]"])]


def run_commands(args) -> list[tuple[dict, list[str]]]:
    env = {}
    # data=-1: every GPU of every process does data parallelism (overridable after it).
    train_flags = [f"--config={args.config}", f"--workdir={args.workdir}", "--config.mesh.data=-1"]
    if args.num_processes > 1:
        if args.coordinator is None or args.process_id is None:
            raise SystemExit(
                "--num_processes > 1 needs --coordinator=HOST:PORT (process 0's host) "
                "and this host's --process_id."
            )
        if not 0 <= args.process_id < args.num_processes:
            raise SystemExit(f"--process_id={args.process_id} is not in [0, {args.num_processes}).")
        env = {
            "JAX_COORDINATOR_ADDRESS": args.coordinator,
            "JAX_NUM_PROCESSES": str(args.num_processes),
            "JAX_PROCESS_ID": str(args.process_id),
        }
        # Explicit, so that a missing variable fails loudly instead of training alone.
        train_flags.append("--multihost")
    train_flags += args.overrides
    return [(env, [sys.executable, "-m", "infoprompt_jax.main", *train_flags])]


def execute(commands: list[tuple[dict, list[str]]], dry_run: bool) -> None:
    """Prints each command as a shell line (variables first); unless `dry_run`, runs it."""
    for env, command in commands:
        line = " ".join(
            [f"{name}={shlex.quote(value)}" for name, value in env.items()] + [shlex.join(command)]
        )
        print(("" if dry_run else "+ ") + line, flush=True)
        if not dry_run:
            try:
                subprocess.run(command, check=True, env={**os.environ, **env})
            except subprocess.CalledProcessError as error:
                raise SystemExit(f"Failed with status {error.returncode}: {line}") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--dry_run", action="store_true", help="Print the commands, run nothing.")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    subparsers = parser.add_subparsers(dest="subcommand", required=True)
    sub = {}
    sub["setup"] = subparsers.add_parser(
        "setup", parents=[common], allow_abbrev=False, help="pip install the repo with CUDA JAX."
    )
    sub["run"] = subparsers.add_parser(
        "run",
        parents=[common],
        allow_abbrev=False,
        help="Train in the foreground. Extra --config.* flags are passed to infoprompt_jax.main.",
    )
    sub["run"].add_argument("--config", required=True, help="e.g. configs/rte.py.")
    sub["run"].add_argument(
        "--workdir",
        required=True,
        help="With several hosts, a directory all of them see (gs://, NFS).",
    )
    sub["run"].add_argument(
        "--num_processes", type=int, default=1, help="Hosts taking part, one process each."
    )
    sub["run"].add_argument("--coordinator", help="HOST:PORT of process 0, reachable by all.")
    sub["run"].add_argument("--process_id", type=int, help="This host's index, 0 to N-1.")

    args, extra = parser.parse_known_args(argv)
    # Only `run` forwards flags, and only config overrides: anything else is a typo.
    unknown = [
        flag for flag in extra if args.subcommand != "run" or not flag.startswith("--config.")
    ]
    if unknown:
        sub[args.subcommand].error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = extra
    return args


BUILDERS = {"setup": setup_commands, "run": run_commands}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    execute(BUILDERS[args.subcommand](args), args.dry_run)


if __name__ == "__main__":
    main()
