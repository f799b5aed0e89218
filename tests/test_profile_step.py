"""Tests of the step profiler (profile_step.py): trace reading and a real CPU trace."""

import dataclasses

import pytest
import sentiment_fixture

from infoprompt_jax.tools import profile_step


@dataclasses.dataclass
class Event:
    name: str
    duration_ns: int


@dataclasses.dataclass
class Line:
    name: str
    events: list


@dataclasses.dataclass
class Plane:
    name: str
    lines: list


GPU_TRACE = [
    Plane(
        "/device:GPU:0",
        [
            Line(
                "Stream #14(Compute,Memset)",
                [Event("gemm_fusion", 300), Event("loop_add", 100), Event("gemm_fusion", 500)],
            ),
            Line("Stream #15(MemcpyH2D)", [Event("MemcpyH2D", 40)]),
            # Spans over the ops above: counting them would count every kernel twice.
            Line("XLA Modules", [Event("jit_train_step", 1000)]),
        ],
    ),
    Plane("/host:CPU", [Line("tf_XLACpu", [Event("host_op", 7000)])]),
]


def test_gpu_trace_reads_the_streams_alone():
    timelines = profile_step.op_times(GPU_TRACE)
    assert set(timelines) == {
        "/device:GPU:0/Stream #14(Compute,Memset)",
        "/device:GPU:0/Stream #15(MemcpyH2D)",
    }
    compute = timelines["/device:GPU:0/Stream #14(Compute,Memset)"]
    assert compute == {"busy_ns": 900, "ops": {"gemm_fusion": [800, 2], "loop_add": [100, 1]}}


def test_cpu_trace_reads_xla_threads_without_their_wrappers():
    planes = [
        Plane(
            "/host:CPU",
            [
                Line(
                    "tf_XLAEigen/1",
                    [
                        Event("ThunkExecutor::Execute", 900),
                        Event("dot_fusion", 600),
                        Event("SlinkyThreadPool::Await", 50),
                        Event("add_fusion", 200),
                    ],
                ),
                Line("python", [Event("train_step", 5000)]),
                # A thread that only marked instants (seen in a CI trace): no time, no timeline.
                Line("tf_XLAEigen/2", [Event("wrapped_copy", 0), Event("bitcast", 0)]),
            ],
        )
    ]
    assert profile_step.op_times(planes) == {
        "/host:CPU/tf_XLAEigen/1": {
            "busy_ns": 800,
            "ops": {"dot_fusion": [600, 1], "add_fusion": [200, 1]},
        }
    }


def test_summary_is_per_step_and_ranked():
    timelines = profile_step.op_times(GPU_TRACE)
    result = profile_step.summary(timelines, steps=2, wall_s=2e-6, top=1)
    assert result["wall_ms_per_step"] == pytest.approx(1e-3)
    compute = result["timelines"]["/device:GPU:0/Stream #14(Compute,Memset)"]
    assert compute["busy_ms_per_step"] == pytest.approx(450e-6)
    assert compute["busy_share_of_wall"] == pytest.approx(0.45)
    assert (compute["distinct_ops"], compute["ops_per_step"]) == (2, 1.5)
    assert compute["top"] == [
        {
            "op": "gemm_fusion",
            "ms_per_step": pytest.approx(400e-6),
            "share": pytest.approx(800 / 900),
            "count_per_step": 1.0,
        }
    ]


def test_a_real_trace_of_the_tiny_step(tiny_roberta_dir, tmp_path, capsys):
    config = sentiment_fixture.tiny_config(tiny_roberta_dir)
    result = profile_step.profile(
        config, batch_size=8, seq_len=16, steps=2, warmup_steps=0, top=5, trace_dir=str(tmp_path)
    )
    assert list(tmp_path.rglob("*.xplane.pb")), "the trace is kept where --trace_dir says"
    assert result["steps"] == 2 and result["wall_ms_per_step"] > 0
    ops = [op for line in result["timelines"].values() for op in line["top"]]
    assert ops, "the CPU trace has XLA ops"
    # XLA names its compiled ops after their fusions; the wrappers are gone.
    assert any("fusion" in op["op"] for op in ops)
    assert not any(op["op"].startswith(("ThunkExecutor", "SlinkyThreadPool")) for op in ops)
    assert all(op["ms_per_step"] >= 0 and op["count_per_step"] > 0 for op in ops)
    profile_step.print_table(result)
    assert "ms/step" in capsys.readouterr().out
