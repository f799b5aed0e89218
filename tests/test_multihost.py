"""Multi-host for real on one machine: 2 processes x 4 CPU devices equal 1 process x 8 devices."""

import json
import socket
import subprocess
import sys

import commands
import numpy as np
import sentiment_fixture

from infoprompt_jax.workdir import workdir_files

REPO = commands.REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def command(model_dir, data_dir, workdir) -> list[str]:
    return [
        sys.executable,
        "-m",
        "infoprompt_jax.main",
        *commands.tiny_run_args(
            model_dir,
            data_dir,
            workdir,
            "--config.data.few_shot=32",
            "--config.train.batch_size=8",
            "--config.train.eval_batch_size=8",
        ),
    ]


def test_two_processes_of_4_devices_match_one_process_of_8(tiny_roberta_dir, tmp_path):
    data_dir = sentiment_fixture.write_sst2(tmp_path / "data", 32, 16)
    port = free_port()
    workers = [
        subprocess.Popen(
            command(tiny_roberta_dir, data_dir, tmp_path / "multi"),
            cwd=REPO,
            env=commands.env(
                4,
                JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate()[1] for w in workers]
    for worker, stderr in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    assert "JAX process 1/2" in outputs[1] and "4 local devices of 8" in outputs[1]
    subprocess.run(
        command(tiny_roberta_dir, data_dir, tmp_path / "single"),
        cwd=REPO,
        env=commands.env(8),
        check=True,
        capture_output=True,
    )
    multi = workdir_files.read_metrics(tmp_path / "multi")
    single = workdir_files.read_metrics(tmp_path / "single")
    assert [r["step"] for r in multi] == [r["step"] for r in single] and len(single) == 10
    for m, s in zip(multi, single):
        for key in s:
            np.testing.assert_allclose(m[key], s[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # Only process 0 writes: one summary, one metrics file, no duplicated lines.
    assert json.loads((tmp_path / "multi" / "summary.json").read_text())["step"] == 8
