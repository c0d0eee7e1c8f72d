"""Scoring image sets: the pipelined predict, JSON lines output that survives a kill, and the Ray Data path."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from digits import TrainedDigits

from sedeploy.cli import cli
from sedeploy.errors import ConfigError
from sedeploy.predict import predict
from sedeploy.runtime import load
from sedeploy.scoring import ScoringStalledError, _watched, pool_size

RAY = importlib.util.find_spec("ray") is not None
KEYS = ["path", "indices", "labels", "probabilities"]


def _digit_folder(trained_digits: TrainedDigits, folder: Path, copies: int) -> dict[str, Path]:
    """``copies`` hard links of the first test images of each class (regular files, distinct paths), with
    each link's source, so a prediction can be checked against its source's."""
    sources = sorted(trained_digits.test_dir.glob("*/*.png"))[:20]
    folder.mkdir(parents=True)
    made = {}
    for index in range(copies):
        source = sources[index % len(sources)]
        target = folder / f"{index:05d}.png"
        os.link(source, target)
        made[str(target)] = source
    return made


def _lines(path: Path) -> list[dict[str, object]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_pipelined_predict_matches_the_sequential_loop_and_writes_one_entry_per_line(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    _digit_folder(trained_digits, folder, 45)
    (folder / "broken.png").write_bytes(b"not a png")
    with load(trained_digits.onnx_path) as runner:
        sequential = predict(runner, [folder], batch=4, workers=0)
        pipelined = predict(runner, [folder], batch=4, workers=3)
        written = predict(runner, [folder], batch=4, workers=2, output=tmp_path / "out.jsonl")
    assert [p.to_dict() for p in pipelined.predictions] == [p.to_dict() for p in sequential.predictions]
    assert [s.path for s in pipelined.skipped] == [str(folder / "broken.png")]
    assert (
        written.predictions == () and written.scored == 45 and written.output == str(tmp_path / "out.jsonl")
    )
    lines = _lines(tmp_path / "out.jsonl")
    assert lines == [p.to_dict() for p in sequential.predictions]
    assert all(list(line) == KEYS for line in lines)
    with pytest.raises(ConfigError, match="already holds results; pass resume=True"):
        predict(trained_digits.onnx_path, [folder], output=tmp_path / "out.jsonl")
    resumed = predict(trained_digits.onnx_path, [folder], output=tmp_path / "out.jsonl", resume=True)
    with pytest.raises(ConfigError, match=r"output .*00003.png is an image"):
        predict(trained_digits.onnx_path, [folder], output=folder / "00003.png", resume=True)
    assert (resumed.scored, resumed.resumed) == (0, 45) and len(_lines(tmp_path / "out.jsonl")) == 45


def test_a_killed_predict_output_resumes_and_scores_every_image_exactly_once(
    trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    made = _digit_folder(trained_digits, tmp_path / "images", 2000)
    out = tmp_path / "scores.jsonl"
    command = [sys.executable, "-m", "sedeploy", "--quiet", "predict", str(trained_digits.onnx_path),
               str(tmp_path / "images"), "--output", str(out), "--batch", "2", "--workers", "1", "--top-k", "3"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 20:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "predict finished before it could be killed"
    before = _lines(out)  # valid JSON lines after the kill: every batch is one write
    assert 20 <= len(before) < 2000
    with out.open("a") as handle:  # what a kill in the middle of a write would leave
        handle.write('{"path": "' + str(tmp_path / "images" / "01999.png") + '", "indi')
    result = subprocess.run(
        [*command, "--resume", "--batch", "32", "--workers", "2"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    after = _lines(out)
    assert after[: len(before)] == before
    assert sorted(str(line["path"]) for line in after) == sorted(made)  # each image exactly once
    with load(trained_digits.onnx_path) as runner:
        expected = {str(source): runner.classify(source, 3)[0].indices for source in set(made.values())}
    assert all(tuple(line["indices"]) == expected[str(made[str(line["path"])])] for line in after)  # type: ignore[arg-type]


def test_the_ray_pool_leaves_reads_a_cpu_and_a_stall_names_the_resources() -> None:
    assert pool_size(4.0, 1)[0] == 1 and pool_size(4.0, 1)[1] <= 3.0
    actors, per_actor = pool_size(2.0, 2)
    assert actors == 2 and actors * per_actor <= 1.0  # 2 CPUs, 2 actors: one CPU stays for the read tasks
    with pytest.raises(ConfigError, match="1 CPU: too few for 1 scoring actor"):
        pool_size(1.0, None)

    def slow() -> Iterator[int]:
        yield 1
        time.sleep(5)
        yield 2

    seen = []
    with pytest.raises(ScoringStalledError, match="8 CPU"):
        for item in _watched(slow(), 0.3, lambda: "the cluster has 8 CPU"):
            seen.append(item)
    assert seen == [1]


@pytest.mark.ray
@pytest.mark.slow  # about 45 s here: each Ray Data run starts actors that import sedeploy and ONNX Runtime
@pytest.mark.skipif(not RAY, reason="ray is not installed (pip install 'sedeploy[ray]')")
def test_ray_data_scores_like_predict_image_for_image(trained_digits: TrainedDigits, tmp_path: Path) -> None:
    import ray

    from sedeploy.scoring import score_dataset

    folder = tmp_path / "images"
    _digit_folder(trained_digits, folder, 40)
    (folder / "broken.png").write_bytes(b"not a png")
    plain = predict(trained_digits.onnx_path, [folder], batch=8, top_k=3, output=tmp_path / "plain.jsonl")
    assert plain.scored == 40
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, object_store_memory=80 << 20)
    try:
        paths = [str(p) for p in sorted(folder.iterdir())]
        scores = score_dataset(trained_digits.onnx_path, paths, top_k=3, batch=8, concurrency=2)
        assert scores.actors == 2 and 2 * scores.cpus_per_actor <= 2.0  # one of the 3 CPUs stays for reads
        assert [p.to_dict() for p in scores.predictions] == _lines(tmp_path / "plain.jsonl")
        assert [s.path for s in scores.skipped] == [str(folder / "broken.png")]
        result = CliRunner().invoke(
            cli,
            ["predict", str(trained_digits.onnx_path), str(folder), "--ray", "--batch", "8", "--top-k", "3",
             "--output", str(tmp_path / "ray.jsonl")],
        )  # fmt: skip
        assert result.exit_code == 0, result.output  # one actor: one per node
        assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "plain.jsonl").read_text()
    finally:
        ray.shutdown()
