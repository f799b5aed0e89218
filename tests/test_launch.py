"""The launch scripts' dry runs print exactly the gcloud/pip/python commands they would run."""

import importlib.util
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parent.parent / "launch"


def _load(name):
    # By path: launch/ is a folder of scripts, not a package on sys.path.
    spec = importlib.util.spec_from_file_location(f"launch_{name}", LAUNCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tpu_vm = _load("tpu_vm")
gpu_host = _load("gpu_host")
VM = ["--name=ip", "--zone=us-central2-b"]
PYTHON = shlex.quote(sys.executable)


@pytest.fixture(autouse=True)
def no_subprocess(monkeypatch):
    """Nothing here may reach gcloud: a test that means to run a command patches this again."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"subprocess.run called: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


def dry_run(module, capsys, *argv):
    module.main([*argv, "--dry_run"])
    return capsys.readouterr().out.splitlines()


def remote_command(line):
    """The shell command that a printed `gcloud ... ssh` line runs on the workers."""
    argv = shlex.split(line)
    return argv[argv.index("--command") + 1]


@pytest.mark.parametrize(
    "accelerator_type, workers",
    [
        ("v4-8", 1),
        ("v4-32", 4),
        ("v3-8", 1),
        ("v5p-16", 2),
        ("v5litepod-8", 1),
        ("v5litepod-16", 4),
        ("v6e-8", 1),
        ("v6e-256", 64),
        ("v9x-8", 2),
    ],
)
def test_num_workers(accelerator_type, workers):
    assert tpu_vm.num_workers(accelerator_type) == workers


def test_create_v4_8(capsys):
    assert dry_run(tpu_vm, capsys, "create", *VM, "--accelerator_type=v4-8") == [
        "gcloud compute tpus tpu-vm create ip --zone=us-central2-b --accelerator-type=v4-8 "
        "--version=tpu-ubuntu2204-base"
    ]


def test_create_queued_spot_pod(capsys):
    assert dry_run(
        tpu_vm,
        capsys,
        "create",
        *VM,
        "--accelerator_type=v4-32",
        "--queued",
        "--spot",
        "--project=my-proj",
    ) == [
        "gcloud compute tpus queued-resources create ip --node-id=ip --zone=us-central2-b "
        "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --spot --project=my-proj"
    ]


def test_create_v6e_runtime(capsys):
    lines = dry_run(
        tpu_vm,
        capsys,
        "create",
        "--name=ip",
        "--zone=us-east5-b",
        "--accelerator_type=v6e-8",
        "--runtime_version=v2-alpha-tpuv6e",
    )
    assert lines == [
        "gcloud compute tpus tpu-vm create ip --zone=us-east5-b "
        "--accelerator-type=v6e-8 --version=v2-alpha-tpuv6e"
    ]


def test_setup_repo_url(capsys):
    lines = dry_run(
        tpu_vm, capsys, "setup", *VM, "--repo_url=https://github.com/org/infoprompt_jax"
    )
    assert len(lines) == 1
    assert lines[0].startswith(
        "gcloud compute tpus tpu-vm ssh ip --zone=us-central2-b --worker=all --command "
    )
    assert remote_command(lines[0]) == (
        "if [ -d infoprompt_jax/.git ]; then git -C infoprompt_jax pull --ff-only; "
        "else git clone https://github.com/org/infoprompt_jax infoprompt_jax; fi"
        " && python3 -m pip install --user --quiet uv"
        " && (test -x infoprompt_venv/bin/python || "
        "python3 -m uv venv --seed --python=3.12 infoprompt_venv)"
        " && cd infoprompt_jax && ~/infoprompt_venv/bin/pip install -e '.[tpu]' gcsfs"
    )


def test_setup_local_repo(capsys):
    lines = dry_run(
        tpu_vm, capsys, "setup", *VM, "--local_repo=/src/infoprompt_jax", "--project=my-proj"
    )
    archive = os.path.join(tempfile.gettempdir(), "ip-infoprompt_jax.tar.gz")
    assert lines[:2] == [
        f"tar -czf {archive} --exclude=.git --exclude=.venv --exclude=runs --exclude=.whl "
        "--exclude=__pycache__ --exclude=.pytest_cache '--exclude=*.egg-info' "
        "-C /src/infoprompt_jax .",
        f"gcloud compute tpus tpu-vm scp {archive} ip:infoprompt_jax.tar.gz --zone=us-central2-b "
        "--worker=all --project=my-proj",
    ]
    assert lines[2].endswith(" --project=my-proj")
    assert remote_command(lines[2]).startswith(
        "mkdir -p infoprompt_jax && tar -xzf infoprompt_jax.tar.gz -C infoprompt_jax && "
        "rm infoprompt_jax.tar.gz && python3 -m pip install --user --quiet uv"
    )


def test_setup_needs_one_source(capsys):
    with pytest.raises(SystemExit):
        tpu_vm.main(["setup", *VM, "--dry_run"])
    with pytest.raises(SystemExit):
        tpu_vm.main(["setup", *VM, "--repo_url=u", "--local_repo=.", "--dry_run"])


def test_run_single_host(capsys):
    lines = dry_run(
        tpu_vm,
        capsys,
        "run",
        *VM,
        "--accelerator_type=v4-8",
        "--config=configs/rte.py",
        "--workdir=runs/rte",
    )
    assert lines == [
        "gcloud compute tpus tpu-vm ssh ip --zone=us-central2-b --worker=all --command "
        "'cd infoprompt_jax && { nohup ~/infoprompt_venv/bin/python -m infoprompt_jax.main "
        "--config=configs/rte.py --workdir=runs/rte > ~/infoprompt.log 2>&1 < /dev/null & }'"
    ]


def test_run_pod_overrides_survive_quoting(capsys):
    overrides = [
        "--config.optim.lr=3e-4",
        """--config.data.template=<s> {premise} Question: "{hypothesis}"? it's [MASK]""",
        "--config.model.name=$HOME/models/roberta; rm -rf /",
    ]
    lines = dry_run(
        tpu_vm,
        capsys,
        "run",
        *VM,
        "--accelerator_type=v4-32",
        "--config=configs/rte.py:tiny",
        "--workdir=gs://bucket/runs/rte",
        *overrides,
        "--project=my-proj",
    )
    assert len(lines) == 1
    argv = shlex.split(lines[0])
    assert argv[:8] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "ip",
        "--zone=us-central2-b",
        "--worker=all",
    ]
    assert argv[-1] == "--project=my-proj"
    remote = shlex.split(remote_command(lines[0]))
    assert remote[:6] == [
        "cd",
        "infoprompt_jax",
        "&&",
        "{",
        "nohup",
        "~/infoprompt_venv/bin/python",
    ]
    assert remote[remote.index("infoprompt_jax.main") + 1 : remote.index(">")] == [
        "--config=configs/rte.py:tiny",
        "--workdir=gs://bucket/runs/rte",
        "--multihost",
        *overrides,
    ]
    assert remote[remote.index(">") :] == [
        ">",
        "~/infoprompt.log",
        "2>&1",
        "<",
        "/dev/null",
        "&",
        "}",
    ]


def test_run_remote_command_in_a_real_shell(tmp_path, monkeypatch, capsys):
    """Through bash, the workers' command starts training with the intended argv and returns
    without waiting for it."""
    overrides = ["--config.data.template=a \"b\" 'c' $d `e`"]
    (line,) = dry_run(
        tpu_vm,
        capsys,
        "run",
        *VM,
        "--accelerator_type=v4-8",
        "--config=c.py",
        "--workdir=w",
        *overrides,
    )
    # A fake home: the repo directory and a "python" that logs its arguments, then trains for 2 s.
    (tmp_path / "infoprompt_jax").mkdir()
    stub = tmp_path / "infoprompt_venv" / "bin" / "python"
    stub.parent.mkdir(parents=True)
    stub.write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
        "'import json, sys, time; print(json.dumps(sys.argv[1:]), flush=True); "
        'time.sleep(2)\' "$@"\n'
    )
    stub.chmod(0o755)
    monkeypatch.undo()  # The real subprocess.run, for bash only.
    start = time.perf_counter()
    shell = subprocess.run(
        ["bash", "-c", remote_command(line)],
        cwd=tmp_path,
        capture_output=True,
        timeout=5,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert time.perf_counter() - start < 1.5  # ssh would return before training ends.
    assert shell.returncode == 0 and shell.stdout == b""
    log = tmp_path / "infoprompt.log"
    for _ in range(100):
        if log.exists() and log.read_text().endswith("\n"):
            break
        time.sleep(0.02)
    assert json.loads(log.read_text()) == [
        "-m",
        "infoprompt_jax.main",
        "--config=c.py",
        "--workdir=w",
        *overrides,
    ]


@pytest.mark.parametrize("accelerator_type", ["v4-32", "v5litepod-16"])
def test_run_pod_needs_gs_workdir(accelerator_type, capsys):
    with pytest.raises(SystemExit, match="every host must see the same checkpoint directory"):
        tpu_vm.main(
            [
                "run",
                *VM,
                f"--accelerator_type={accelerator_type}",
                "--config=configs/rte.py",
                "--workdir=runs/rte",
                "--dry_run",
            ]
        )
    assert capsys.readouterr().out == ""


def test_run_rejects_other_flags(capsys):
    with pytest.raises(SystemExit):
        tpu_vm.main(
            [
                "run",
                *VM,
                "--accelerator_type=v4-8",
                "--config=configs/rte.py",
                "--workdir=w",
                "--learning_rate=1",
                "--dry_run",
            ]
        )
    assert "unrecognized arguments: --learning_rate=1" in capsys.readouterr().err


def test_logs(capsys):
    assert dry_run(tpu_vm, capsys, "logs", *VM) == [
        "gcloud compute tpus tpu-vm ssh ip --zone=us-central2-b --worker=0 --command "
        "'tail -n 100 ~/infoprompt.log'"
    ]
    assert dry_run(tpu_vm, capsys, "logs", *VM, "--worker=3", "--follow") == [
        "gcloud compute tpus tpu-vm ssh ip --zone=us-central2-b --worker=3 --command "
        "'tail -n 100 -f ~/infoprompt.log'"
    ]


def test_delete(capsys):
    assert dry_run(tpu_vm, capsys, "delete", *VM) == [
        "gcloud compute tpus tpu-vm delete ip --zone=us-central2-b"
    ]
    assert dry_run(tpu_vm, capsys, "delete", *VM, "--queued", "--project=my-proj") == [
        "gcloud compute tpus queued-resources delete ip --zone=us-central2-b --force "
        "--project=my-proj"
    ]


def test_without_dry_run_echoes_then_runs(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(
        subprocess, "run", lambda command, **kwargs: calls.append((command, kwargs))
    )
    tpu_vm.main(["delete", *VM])
    assert (
        capsys.readouterr().out == "+ gcloud compute tpus tpu-vm delete ip --zone=us-central2-b\n"
    )
    assert calls == [
        (
            ["gcloud", "compute", "tpus", "tpu-vm", "delete", "ip", "--zone=us-central2-b"],
            {"check": True},
        )
    ]


def test_failed_command_stops(monkeypatch, capsys):
    def fail(command, **kwargs):
        raise subprocess.CalledProcessError(1, command)

    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(SystemExit, match="Failed with status 1"):
        tpu_vm.main(["setup", *VM, "--local_repo=."])
    assert len(capsys.readouterr().out.splitlines()) == 1  # The scp and ssh never started.


def test_gpu_setup(capsys):
    repo = str(LAUNCH.parent)
    assert dry_run(gpu_host, capsys, "setup") == [
        f"{PYTHON} -m pip install -e {shlex.quote(repo + '[cuda]')}"
    ]


def test_gpu_run_one_host(capsys):
    assert dry_run(
        gpu_host,
        capsys,
        "run",
        "--config=configs/rte.py",
        "--workdir=runs/rte",
        "--config.train.batch_size=32",
    ) == [
        f"{PYTHON} -m infoprompt_jax.main --config=configs/rte.py --workdir=runs/rte "
        "--config.mesh.data=-1 --config.train.batch_size=32"
    ]


def test_gpu_run_several_hosts(capsys):
    lines = dry_run(
        gpu_host,
        capsys,
        "run",
        "--config=configs/rte.py",
        "--workdir=/shared/rte",
        "--num_processes=2",
        "--coordinator=10.0.0.1:1234",
        "--process_id=1",
        "--config.data.template=a 'b' c",
    )
    assert lines == [
        "JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 "
        f"{PYTHON} -m infoprompt_jax.main --config=configs/rte.py --workdir=/shared/rte "
        "--config.mesh.data=-1 --multihost '--config.data.template=a '\"'\"'b'\"'\"' c'"
    ]
    assert shlex.split(lines[0])[-1] == "--config.data.template=a 'b' c"


def test_gpu_run_exports_environment(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(
        subprocess, "run", lambda command, **kwargs: calls.append((command, kwargs))
    )
    gpu_host.main(
        [
            "run",
            "--config=configs/rte.py",
            "--workdir=w",
            "--num_processes=4",
            "--coordinator=head:1234",
            "--process_id=0",
        ]
    )
    assert capsys.readouterr().out.startswith("+ JAX_COORDINATOR_ADDRESS=head:1234 ")
    ((command, kwargs),) = calls
    assert command[-2:] == ["--config.mesh.data=-1", "--multihost"]
    assert kwargs["check"] is True
    assert {
        name: kwargs["env"][name]
        for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    } == {"JAX_COORDINATOR_ADDRESS": "head:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "0"}
    assert kwargs["env"]["PATH"] == os.environ["PATH"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num_processes=2", "--process_id=0"], "needs --coordinator"),
        (["--num_processes=2", "--coordinator=h:1", "--process_id=2"], "not in"),
    ],
)
def test_gpu_run_bad_process_flags(flags, message):
    with pytest.raises(SystemExit, match=message):
        gpu_host.main(["run", "--config=c", "--workdir=w", *flags, "--dry_run"])


def test_scripts_run_as_files(monkeypatch):
    monkeypatch.undo()  # The real subprocess.run, for python itself; --dry_run keeps gcloud out.
    result = subprocess.run(
        [sys.executable, str(LAUNCH / "tpu_vm.py"), "delete", *VM, "--queued", "--dry_run"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == (
        "gcloud compute tpus queued-resources delete ip --zone=us-central2-b --force\n"
    )
