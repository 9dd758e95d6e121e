"""Settings, manifest parsing, engine helpers and the command-line entry point."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from swin_serve.artifact.contract import ManifestError, manifest_from_metadata, parse_manifest
from swin_serve.server.runtime.engine import is_fatal_device_error, warmup_batch_sizes
from swin_serve.server.settings import Settings
from tests.support import checkout_env

ROOT = Path(__file__).resolve().parents[2]


def test_settings_read_swin_env(monkeypatch):
    monkeypatch.setenv("SWIN_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("SWIN_PROVIDERS", "cpu")
    monkeypatch.setenv("SWIN_MODEL_PATH", "/models/x.onnx")
    s = Settings()
    assert (
        s.max_batch_size == 32 and s.providers == "cpu" and s.model_path == Path("/models/x.onnx")
    )
    assert s.host == "127.0.0.1" and s.port == 8000


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SWIN_MAX_BATCH_SIZE", "-1"),
        ("SWIN_PORT", "70000"),
        ("SWIN_PROVIDERS", "tpu"),
        ("SWIN_QUEUE_CAPACITY", "-1"),
        ("SWIN_REQUEST_TIMEOUT_MS", "0"),
        ("SWIN_MAX_BATCH_DELAY_MS", "nan-ish"),
        ("SWIN_LOG_LEVEL", "loud"),
    ],
)
def test_invalid_settings_name_the_field(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert var.removeprefix("SWIN_").lower() in str(err.value)


def test_request_larger_than_queue_is_a_config_error():
    with pytest.raises(ValidationError, match="queue_capacity"):
        Settings(queue_capacity=4, max_images_per_request=8)


def test_auto_threads_give_every_cpu_to_one_pool_the_parallel_batches_share(monkeypatch):
    import swin_serve.server.settings as settings_mod

    monkeypatch.setattr(settings_mod, "available_cpus", lambda: 8)
    s = Settings()
    assert s.resolved_parallel_batches(on_gpu=False) == 4  # capped at 4
    assert s.resolved_parallel_batches(on_gpu=True) == 1  # the GPU serialises runs anyway
    assert s.resolved_intra_op_threads() == 8 and s.resolved_inter_op_threads() == 1
    assert Settings(parallel_batches=1).resolved_intra_op_threads() == 8
    assert Settings(intra_op_threads=3).resolved_intra_op_threads() == 3
    assert Settings(parallel_batches=3).resolved_parallel_batches(on_gpu=True) == 3
    monkeypatch.setattr(settings_mod, "available_cpus", lambda: 2)
    assert Settings().resolved_parallel_batches(on_gpu=False) == 2
    assert Settings().resolved_intra_op_threads() == 2
    monkeypatch.setattr(settings_mod, "available_cpus", lambda: 1)
    assert Settings().resolved_intra_op_threads() == 1
    assert Settings().resolved_parallel_batches(on_gpu=False) == 1


def test_pool_threads_sleep_rather_than_spin_where_runs_overlap(monkeypatch):
    import swin_serve.server.settings as settings_mod

    monkeypatch.setattr(settings_mod, "available_cpus", lambda: 2)
    assert Settings().resolved_intra_op_spinning(on_gpu=False) is False  # two runs at once
    assert Settings().resolved_intra_op_spinning(on_gpu=True) is False  # CUDA runs the model
    assert Settings(parallel_batches=1).resolved_intra_op_spinning(on_gpu=False) is True
    assert Settings(intra_op_spinning="on").resolved_intra_op_spinning(on_gpu=False) is True
    assert Settings(intra_op_spinning="on").resolved_intra_op_spinning(on_gpu=True) is True
    monkeypatch.setattr(settings_mod, "available_cpus", lambda: 1)
    assert Settings().resolved_intra_op_spinning(on_gpu=False) is True


def test_warmup_covers_powers_of_two_and_the_max():
    assert warmup_batch_sizes(1) == [1]
    assert warmup_batch_sizes(8) == [1, 2, 4, 8]
    assert warmup_batch_sizes(12) == [1, 2, 4, 8, 12]


@pytest.mark.parametrize(
    ("message", "fatal"),
    [
        ("CUDA error: an illegal memory access was encountered", True),
        ("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 719: unspecified launch failure", True),
        ("CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR ; illegal instruction", True),
        ("CUDA out of memory", False),
        ("Got invalid dimensions for input: pixel_values", False),
        ("illegal memory access", False),  # not a device error without CUDA in it
    ],
)
def test_fatal_device_errors_are_told_apart(message, fatal):
    assert is_fatal_device_error(RuntimeError(message)) is fatal


def test_manifest_parses_the_contract_example(manifest):
    text = manifest.model_dump_json()
    again = parse_manifest(text)
    assert again.image_size == 32 and again.num_classes == 10
    assert again.feature_shape("stage2") == (16, 4, 4)


def test_missing_manifest_says_what_to_do():
    with pytest.raises(ManifestError, match=r"swin\.manifest.*swin-export"):
        manifest_from_metadata({"other": "x"}, source="m.onnx")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["labels"].pop(),  # labels != num_classes
        lambda d: d["outputs"].pop("stage3"),
        lambda d: d.update(format_version=3),
        lambda d: d["preprocess"].update(resize_mode="squash"),  # version 1 cannot say it
        lambda d: d["preprocess"].update(resize_shorter=10),
        lambda d: d["preprocess"].update(mean=[float("nan"), 0.4, 0.4]),
        lambda d: d["preprocess"].update(std=[float("inf"), 0.2, 0.2]),
    ],
)
def test_inconsistent_manifest_is_refused(manifest, mutate):
    data = json.loads(manifest.model_dump_json())
    mutate(data)
    with pytest.raises(ManifestError):
        parse_manifest(json.dumps(data))


def test_a_version_1_manifest_refusal_names_the_fields_it_cannot_state(manifest):
    data = json.loads(manifest.model_dump_json())
    data["preprocess"].update(resize_mode="squash", interpolation="box")
    with pytest.raises(ManifestError, match="resize_mode=squash, interpolation=box"):
        parse_manifest(json.dumps(data))


def _run_main(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in checkout_env().items() if not k.startswith("SWIN_")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "swin_serve.server", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_rejects_bad_settings_with_exit_2():
    proc = _run_main({"SWIN_MAX_BATCH_SIZE": "-1"})
    assert proc.returncode == 2
    assert "max_batch_size" in proc.stderr


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_setting_with_its_default_and_starts_nothing(flag):
    # A model that does not exist: were the server to start, it would exit 3.
    proc = _run_main({"SWIN_MODEL_PATH": "/nonexistent.onnx"}, flag)
    assert proc.returncode == 0, proc.stderr
    for name in Settings.model_fields:
        assert f"SWIN_{name.upper()}" in proc.stdout, name
    assert "default 'artefacts/swin_tiny_patch4_window7_224.onnx'" in proc.stdout
    assert "ready: serving" not in proc.stdout + proc.stderr


def test_an_argument_the_server_would_ignore_is_refused_with_exit_2():
    proc = _run_main({}, "--port", "9000")
    assert proc.returncode == 2
    assert "takes no arguments but --help" in proc.stderr and "SWIN_PORT" in proc.stderr


def test_cli_exits_non_zero_with_a_clear_message_when_the_model_is_missing(tmp_path):
    proc = _run_main({"SWIN_MODEL_PATH": str(tmp_path / "nope.onnx"), "SWIN_PORT": "0"})
    assert proc.returncode == 3, proc.stderr
    assert "model file not found" in proc.stderr


def test_cli_refuses_a_corrupt_model_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    proc = _run_main({"SWIN_MODEL_PATH": str(bad), "SWIN_PORT": "0"})
    assert proc.returncode == 3, proc.stderr
    assert "cannot load ONNX model" in proc.stderr


def test_grpc_needs_a_port_of_its_own():
    with pytest.raises(ValidationError, match="give gRPC its own port"):
        Settings(port=9000, grpc_port=9000)
    assert Settings(port=9000, grpc_port=0).grpc_port == 0  # off: no clash


def test_cli_exits_3_with_a_clear_message_when_the_grpc_port_is_taken(tiny_model_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run_main(
            {"SWIN_MODEL_PATH": str(tiny_model_path), "SWIN_PORT": "0", "SWIN_GRPC_PORT": str(port)}
        )
    assert proc.returncode == 3, proc.stderr
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in proc.stderr


def test_auto_batch_size_is_small_on_cpu_and_large_on_cuda():
    assert Settings().resolved_max_batch_size(on_gpu=False) == 4
    assert Settings().resolved_max_batch_size(on_gpu=True) == 32
    assert Settings(max_batch_size=12).resolved_max_batch_size(on_gpu=False) == 12


@pytest.mark.parametrize(("host", "says"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_the_start_banner_says_when_every_interface_listens(host, says, caplog):
    from swin_serve.server.__main__ import _log_banner

    caplog.set_level(logging.INFO, logger="swin_serve.server")
    _log_banner(Settings(model_path="m.onnx", host=host), grpc_port=None)
    assert ("bound to 0.0.0.0: every interface" in caplog.text) is says


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),  # cgroup v2: 2 CPUs
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # not in a cgroup that limits CPU
    ],
)
def test_the_cgroup_cpu_quota_is_read_from_either_cgroup_version(tmp_path, files, quota):
    from swin_serve.server.settings import cgroup_cpu_quota

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_threads_follow_a_cpu_limit_below_the_cores_a_pod_sees(monkeypatch, tmp_path):
    """Kubernetes' default CPU manager policy: every node core in the affinity, a 2-CPU quota."""
    from swin_serve.server import settings as settings_module

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    monkeypatch.setattr(settings_module, "CGROUP", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert settings_module.available_cpus() == 2  # 1.5 CPUs of time: 2 threads, not 64
    assert Settings(model_path="m.onnx").resolved_intra_op_threads() == 2
