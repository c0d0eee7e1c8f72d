"""Concurrency and load: one runner shared by 16 threads, and racing writers of the same artifact.

The soak runs a few seconds by default; ``SEDEPLOY_SOAK_SECONDS=30`` gives the
long one from issue 11 (opt-in, not in CI's default run).
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from manifests import make_manifest
from onnx import numpy_helper

import sedeploy
from sedeploy.artifacts.manifest import (
    BuildManifest,
    ManifestError,
    checked_manifest,
    commit_with_manifests,
    read_manifest,
)
from sedeploy.backends.onnxruntime import create_session
from sedeploy.files import sha256_of_file, temp_path_beside

THREADS = 16
SOAK_SECONDS = float(os.environ.get("SEDEPLOY_SOAK_SECONDS", "3"))
WARM_UP_SECONDS = min(2.0, SOAK_SECONDS / 3)
MAX_RSS_GROWTH = 0.05


def _rss_bytes() -> int:
    """Resident memory of this process, from /proc/self/status (VmRSS, in kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(
    not Path("/proc/self/status").is_file(), reason="reads resident memory from Linux's /proc"
)
def test_runner_shared_by_16_threads_matches_single_threaded_output(trained_digits) -> None:  # type: ignore[no-untyped-def]
    """Zero errors; every output bit-identical to the single-threaded one for that input; RSS flat after warm-up.

    Bitwise, not approximately: ONNX Runtime on the CPU runs the same kernels with
    the same blocking for the same batch shape whatever the other callers do, so a
    difference would be a real data race, not rounding. Each input is therefore
    compared with the single-threaded output of the very same batch.
    """
    images = trained_digits.test_images
    rng = np.random.default_rng(0)
    inputs = [
        images[rng.choice(len(images), size=int(rows), replace=False)] for rows in rng.integers(1, 9, 24)
    ]
    with sedeploy.load(trained_digits.onnx_path, device="cpu") as runner:
        expected = [runner(batch) for batch in inputs]
        stop = threading.Event()
        errors: list[str] = []
        calls = [0] * THREADS

        def work(worker: int) -> None:
            picker = np.random.default_rng(worker)
            while not stop.is_set():
                index = int(picker.integers(len(inputs)))
                try:
                    output = runner(inputs[index])
                except Exception as error:  # every error counts, whatever its type
                    errors.append(f"thread {worker}: {type(error).__name__}: {error}")
                    return
                if not np.array_equal(output, expected[index]):
                    errors.append(
                        f"thread {worker}: input {index} differs by {np.abs(output - expected[index]).max()}"
                    )
                    return
                calls[worker] += 1

        threads = [threading.Thread(target=work, args=(worker,), daemon=True) for worker in range(THREADS)]
        for thread in threads:
            thread.start()
        time.sleep(WARM_UP_SECONDS)
        gc.collect()
        rss_after_warm_up = _rss_bytes()
        time.sleep(SOAK_SECONDS - WARM_UP_SECONDS)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        gc.collect()
        rss_at_end = _rss_bytes()
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert all(count > 0 for count in calls), calls  # every thread got to run
    growth = (rss_at_end - rss_after_warm_up) / rss_after_warm_up
    assert growth < MAX_RSS_GROWTH, (
        f"resident memory grew {growth:.1%} ({rss_after_warm_up >> 20} -> {rss_at_end >> 20} MiB) "
        f"over {sum(calls)} calls"
    )


def _other_weights(source: Path, destination: Path) -> Path:
    """A copy of the ONNX model at ``source`` with its largest weight scaled: same graph, other outputs."""
    proto = onnx.load(str(source))
    weights = max(proto.graph.initializer, key=lambda tensor: len(tensor.raw_data))
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * 1.5, weights.name))
    onnx.save_model(proto, str(destination))
    return destination


def test_two_build_engine_processes_writing_one_path_leave_one_complete_artifact(
    trained_digits, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Two real ``build-engine`` runs of two different models onto the same ``-o``: both succeed, and the
    artifact on disk is exactly one of them, with that one's manifest (never A's file with B's manifest)."""
    first = tmp_path / "a" / "digits.onnx"
    first.parent.mkdir()
    shutil.copy(trained_digits.onnx_path, first)
    (tmp_path / "b").mkdir()
    second = _other_weights(first, tmp_path / "b" / "digits.onnx")
    output = tmp_path / "out" / "model.ort.onnx"
    sources = {sha256_of_file(first): first, sha256_of_file(second): second}
    env = {**os.environ, "SEDEPLOY_TEST_DELAY_PUBLISH": "0.5"}  # both reach the publish step together
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sedeploy",
                "build-engine",
                str(model),
                "--backend",
                "onnxruntime",
                "-o",
                str(output),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for model in (first, second)
    ]
    results = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [stderr for _, stderr in results]
    assert sorted(path.name for path in output.parent.iterdir()) == [
        "model.ort.onnx",
        "model.ort.onnx.manifest.json",
    ]
    manifest = read_manifest(output)
    manifest.check_artifact(output)
    source = sources[manifest.source_onnx_sha256]
    batch = trained_digits.test_images[:8]
    with sedeploy.load(output, device="cpu") as runner:
        published = runner(batch)
    reference = create_session(source, ["CPUExecutionProvider"]).run(None, {"input": batch})[0]
    np.testing.assert_allclose(published, reference, rtol=1e-5, atol=1e-5)


def _manifest_for(artifact: Path, staged: Path, writer: str) -> BuildManifest:
    return make_manifest(
        artifact,
        artifact_sha256=sha256_of_file(staged),
        source_onnx_sha256=writer,
        device={"description": writer},
    )


def test_racing_commits_never_pair_one_writers_file_with_anothers_manifest(tmp_path: Path) -> None:
    """Many rounds of two threads publishing an artifact + manifest pair to the same path at the same instant."""
    artifact = tmp_path / "model.onnx"
    for round_ in range(100):
        barrier = threading.Barrier(2)

        def publish(writer: str, round_: int = round_, barrier: threading.Barrier = barrier) -> None:
            staged = temp_path_beside(artifact)
            staged.write_bytes(f"{writer} {round_}".encode() * 1000)
            manifest = _manifest_for(artifact, staged, writer)
            barrier.wait()
            commit_with_manifests([(staged, artifact)], [(manifest, artifact)])

        threads = [threading.Thread(target=publish, args=(writer,)) for writer in ("A", "B")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        manifest = read_manifest(artifact)
        manifest.check_artifact(artifact)
        assert artifact.read_bytes().startswith(manifest.source_onnx_sha256.encode())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx", "model.onnx.manifest.json"]


def test_a_reader_never_sees_a_half_published_pair(tmp_path: Path) -> None:
    """Loading while a build publishes: the manifest check waits for the publish instead of refusing the file."""
    artifact = tmp_path / "model.onnx"

    def publish(writer: str) -> None:
        staged = temp_path_beside(artifact)
        staged.write_bytes(writer.encode() * 1000)
        commit_with_manifests([(staged, artifact)], [(_manifest_for(artifact, staged, writer), artifact)])

    publish("first")
    stop = threading.Event()
    refusals: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                checked_manifest(artifact, required=True)
            except ManifestError as error:
                refusals.append(str(error))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(300):
            publish(f"writer {round_}")
    finally:
        stop.set()
        reader.join()
    assert refusals == []
