"""``sedeploy serve`` and ``sedeploy loadtest`` against a real Triton (PyTriton's tritonserver) on loopback.

One module-scoped server serves the trained digits model as FP32 and CPU INT8 (its last test breaks the INT8
runner on purpose); ``test_serve_signals.py`` starts ``sedeploy serve`` as its own process.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bad_inputs_cases import png_header_only
from click.testing import CliRunner
from digits import TrainedDigits
from PIL import Image

import sedeploy
from sedeploy.build import BuildOptions, build_engine
from sedeploy.cli import cli
from sedeploy.errors import BadInputError, ConfigError, MissingDependencyError
from sedeploy.serving.loadtest import _metrics_counts, loadtest, parse_url
from sedeploy.serving.repository import ServingOptions, model_config, read_artifact
from sedeploy.serving.server import ServeError, Server, _described, _first_error, free_port

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton) is not installed")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def artifacts(trained_digits: TrainedDigits) -> dict[str, Path]:
    """The digits model as FP32 ONNX and as CPU INT8 (ONNX Runtime's graph, with its manifest)."""
    options = BuildOptions(
        precision="int8", backend="onnxruntime", target="cpu", calib_dir=trained_digits.calib_dir
    )
    return {
        "fp32": trained_digits.onnx_path,
        "int8": build_engine(trained_digits.onnx_path, options).artifact,
    }


@pytest.fixture(scope="module")
def server(artifacts: dict[str, Path]) -> Iterator[Server]:
    with sedeploy.serve(
        [artifacts["fp32"], artifacts["int8"]], name="digits", http_port=0, grpc_port=0, metrics_port=0
    ) as running:
        yield running
    assert running.stopped and not running.is_alive()


def _client(server: Server, protocol: str) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    return grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")


def _infer(
    client: Any, model: str, batch: np.ndarray, name: str = "input", datatype: str | None = None
) -> Any:
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    tensor = module.InferInput(
        name, list(batch.shape), datatype or ("FP64" if batch.dtype == np.float64 else "FP32")
    )
    tensor.set_data_from_numpy(batch)
    return client.infer(model, [tensor]).as_numpy("logits")


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _classify_request(client: Any, model: str, images: list[bytes], top_k: int | None = None) -> Any:
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    tensor = module.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    inputs = [tensor]
    if top_k is not None:
        k = module.InferInput("top_k", [1], "INT32")
        k.set_data_from_numpy(np.array([top_k], dtype=np.int32))
        inputs.append(k)
    return client.infer(model, inputs)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_outputs_equal_the_runner(
    server: Server, artifacts: dict[str, Path], trained_digits: TrainedDigits, protocol: str
) -> None:
    client = _client(server, protocol)
    batch = trained_digits.test_images[:8]
    for precision in ("fp32", "int8"):
        with sedeploy.load(artifacts[precision]) as runner:
            expected = runner(batch)
        served = _infer(client, f"digits_{precision}", batch)
        assert served.dtype == np.float32 and served.shape == expected.shape
        if precision == "fp32":
            np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(served, expected)
    # The config Triton serves is the one `sedeploy triton` writes for config.pbtxt.
    config = client.get_model_config("digits_fp32")
    config = config if protocol == "http" else client.get_model_config("digits_fp32", as_json=True)["config"]
    assert config["max_batch_size"] == 32
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == [
        ("input", "TYPE_FP32", [1, 32, 32])
    ]
    assert config["output"][0]["name"] == "logits"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_sixteen_clients_are_batched_and_answered_correctly(server: Server, precision: str) -> None:
    report = loadtest(server.http_url, f"digits_{precision}", concurrency=(16,), duration_s=2.0)
    level = report.levels[0]
    assert level.requests > 16 and level.errors == 0 and level.first_error is None
    # Every response is compared with the answer its input got alone, before the load.
    assert level.mismatches == 0
    if precision == "int8":
        assert level.max_difference == 0.0
    else:
        assert level.max_difference <= 1e-5
    assert report.batch_source == "statistics" and level.batch_sizes is not None
    assert max(level.batch_sizes) > 1 and level.mean_batch is not None and level.mean_batch > 1
    assert sum(size * count for size, count in level.batch_sizes.items()) >= level.requests
    inferences, executions = _metrics_counts(server.metrics_url, f"digits_{precision}")
    assert inferences > executions > 0


def test_loadtest_over_grpc_and_from_the_cli(server: Server, tmp_path: Path) -> None:
    report = loadtest(server.grpc_url, "digits_fp32", concurrency=(1, 2), duration_s=0.5, max_requests=40)
    assert [level.concurrency for level in report.levels] == [1, 2]
    assert all(0 < level.requests <= 40 and level.errors == 0 for level in report.levels)
    assert report.levels[0].batch_sizes == {1: report.levels[0].requests}

    out = tmp_path / "load.json"
    result = CliRunner().invoke(
        cli,
        [
            "loadtest",
            server.http_url,
            "--model",
            "digits_int8",
            "--concurrency",
            "2",
            "--duration",
            "0.5",
            "--batch",
            "3",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["batch"] == 3 and saved["levels"][0]["images"] == 3 * saved["levels"][0]["requests"]
    assert "| concurrency |" in result.output


def _expect_error(call: Any, match: str) -> None:
    """The call fails with a Triton error whose text matches the regular expression ``match``."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert re.search(match, str(caught.value)), str(caught.value)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_fail_alone(server: Server, trained_digits: TrainedDigits, protocol: str) -> None:
    client = _client(server, protocol)
    good = trained_digits.test_images[:2]
    expected = _infer(client, "digits_fp32", good)
    bad: list[tuple[Any, str]] = [
        (
            lambda: _infer(client, "digits_fp32", np.zeros((2, 1, 31, 32), np.float32)),
            "unexpected shape for input 'input'",
        ),
        (lambda: _infer(client, "digits_fp32", good.astype(np.float64)), "data-type"),
        (lambda: _infer(client, "digits_fp32", good, name="pixels"), "pixels"),
        (lambda: _infer(client, "digits_fp32", np.zeros((0, 1, 32, 32), np.float32)), r"input 'input'|batch"),
        (
            lambda: _infer(client, "digits_fp32", np.zeros((33, 1, 32, 32), np.float32)),
            "batch-size must be <= 32",
        ),
    ]
    for call, match in bad:
        _expect_error(call, match)
        np.testing.assert_array_equal(_infer(client, "digits_fp32", good), expected)


def test_image_endpoint_preprocesses_on_the_server(
    server: Server, artifacts: dict[str, Path], trained_digits: TrainedDigits, tmp_path: Path
) -> None:
    client = _client(server, "http")
    folder = trained_digits.test_dir
    files = sorted(p for p in folder.rglob("*.png"))[:3]
    with sedeploy.load(artifacts["fp32"]) as runner:
        expected = runner.classify(files, top_k=3)
    result = _classify_request(client, "digits_fp32_images", [p.read_bytes() for p in files], top_k=3)
    labels, scores, indices = result.as_numpy("labels"), result.as_numpy("scores"), result.as_numpy("indices")
    assert labels.shape == scores.shape == indices.shape == (3, 3)
    for row, classification in enumerate(expected):
        assert [label.decode() for label in labels[row]] == list(classification.labels)
        assert indices[row].tolist() == list(classification.indices)
        np.testing.assert_allclose(scores[row], classification.probabilities, atol=1e-6)
    default_k = _classify_request(client, "digits_fp32_images", [files[0].read_bytes()])
    assert default_k.as_numpy("labels").shape == (1, 5)

    _expect_error(
        lambda: _classify_request(client, "digits_fp32_images", [files[0].read_bytes(), b"\x89PNG broken"]),
        r"image 1 \(11 bytes\): not a readable image",
    )
    # The server decodes through the shared loader: an image over the pixel limit is refused before decoding,
    # and one request cannot hold more images than the model's max batch.
    bomb = png_header_only(tmp_path / "bomb.png", 9000, 9000).read_bytes()
    _expect_error(lambda: _classify_request(client, "digits_fp32_images", [bomb]), r"image 0 .*too large")
    _expect_error(
        lambda: _classify_request(client, "digits_fp32_images", [files[0].read_bytes()] * 33),
        "send at most 32 per request",
    )
    _expect_error(
        lambda: _classify_request(client, "digits_fp32_images", []), "input 'image' holds no elements"
    )
    again = _classify_request(client, "digits_fp32_images", [files[0].read_bytes()], top_k=3)
    assert [label.decode() for label in again.as_numpy("labels")[0]] == list(expected[0].labels)


def _post(server: Server, model: str, inputs: list[dict[str, Any]]) -> tuple[int, str]:
    """A raw KServe v2 JSON request, as any HTTP client sends it: the status and the body's text."""
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/{model}/infer",
        data=json.dumps({"inputs": inputs}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _one_line_without_paths(message: str) -> str:
    """An error text, checked to be one line with no traceback and no file path."""
    assert "\n" not in message and "Traceback" not in message and ".py" not in message, message
    assert not re.search(r"(^|[\s'\"(=])/[\w.-]+/", message), message  # no absolute path
    return message


def test_a_refused_request_is_400_with_sedeploys_one_line(
    server: Server, trained_digits: TrainedDigits, caplog: pytest.LogCaptureFixture
) -> None:
    png = sorted(trained_digits.test_dir.rglob("*.png"))[0].read_bytes()
    client = _client(server, "http")
    caplog.set_level(logging.INFO)
    refused = {
        "image 1 (7 bytes): not a readable image; send the file's bytes": ([png, b"\x89PNG\r\n\x1a"], None),
        "top_k must be at least 1, got 0": ([png], 0),
        "the request holds 33 images; send at most 32 per request": ([png] * 33, None),
        "input 'image' holds no elements; send at least one": ([], None),
    }
    for expected, (images, top_k) in refused.items():
        with pytest.raises(InferenceServerException) as caught:
            _classify_request(client, "digits_fp32_images", images, top_k)
        assert caught.value.status() == "400", caught.value
        assert _one_line_without_paths(caught.value.message()).startswith(expected)
    # What curl shows: HTTP 400 and a JSON body holding only sedeploy's line.
    text = [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not a png"]}]
    status, body = _post(server, "digits_fp32_images", text)
    assert status == 400 and list(json.loads(body)) == ["error"], body
    assert _one_line_without_paths(json.loads(body)["error"]).startswith(
        "image 0 (9 bytes): not a readable image;"
    )
    # gRPC: the same line with INVALID_ARGUMENT; and the server answers the next request.
    with pytest.raises(InferenceServerException) as caught:
        _classify_request(_client(server, "grpc"), "digits_fp32_images", [b"not a png"])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert _one_line_without_paths(caught.value.message()).startswith(
        "image 0 (9 bytes): not a readable image;"
    )
    assert _classify_request(client, "digits_fp32_images", [png]).as_numpy("labels").shape == (1, 5)
    # The server's log holds one line per refusal, not PyTriton's traceback.
    assert "digits_fp32_images refused a request: image 1 (7 bytes): not a readable image" in caplog.text
    assert "Traceback" not in caplog.text


def test_triton_picks_the_cause_of_a_failed_start_from_its_log() -> None:
    log = (
        'E1206 05:04:57.184128 16342 server.cc:241] "CudaDriverHelper has not been initialized."\n'
        'E1206 05:04:58.201348 16342 model_repository_manager.cc:470] "Failed to set config modification time"\n'
        "E1206 05:04:59.100000 16342 model_lifecycle.cc:654] \"failed to load 'digits' version 1: boom\"\n"
    )
    assert _first_error(log) == "\"failed to load 'digits' version 1: boom\""
    assert _first_error("I1206 started\nI1206 stopping\n") == "I1206 stopping"


def test_busy_port_missing_extra_and_broken_artifact_are_one_line(
    artifacts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        with pytest.raises(ServeError, match=f"port {busy} on 127.0.0.1 is in use; .* http_port"):
            sedeploy.serve(artifacts["fp32"], http_port=busy, grpc_port=0, metrics_port=0)
        result = CliRunner().invoke(
            cli,
            [
                "serve",
                str(artifacts["fp32"]),
                "--grpc-port",
                str(busy),
                "--http-port",
                "0",
                "--metrics-port",
                "0",
            ],
        )
        assert result.exit_code == 1 and result.output.count("\n") == 1
        assert result.output.startswith(f"error: port {busy} on 127.0.0.1 is in use")

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(ServeError, match=f"cannot serve {broken}: ") as caught:
        sedeploy.serve(broken, http_port=0, grpc_port=0, metrics_port=0)
    assert isinstance(caught.value.__cause__, BadInputError)

    with pytest.raises(ConfigError, match="exceeds what the artifacts serve"):
        sedeploy.serve(artifacts["fp32"], max_batch=64, http_port=0, grpc_port=0, metrics_port=0)

    monkeypatch.setitem(sys.modules, "pytriton.triton", None)  # what an environment without the extra sees
    with pytest.raises(MissingDependencyError, match=r"pip install 'sedeploy\[serve\]'"):
        sedeploy.serve(artifacts["fp32"], http_port=0, grpc_port=0, metrics_port=0)


def test_a_pytorch_runner_is_described_like_its_onnx(trained_digits: TrainedDigits, tmp_path: Path) -> None:
    """Artifacts Triton cannot open itself (PyTorch weights, OpenVINO IR) get their tensors from the metadata."""
    options = {"depths": (1, 1, 1), "widths": (16, 32, 64), "in_chans": 1, "num_classes": 10}
    model = sedeploy.create_model("se_preact_resnet", img_size=32, **options)
    weights = sedeploy.save_checkpoint(model, tmp_path / "digits.safetensors")
    onnx_served = read_artifact(trained_digits.onnx_path)
    # A weights file does not record the input size: the ONNX's metadata supplies it, as for `sedeploy verify`.
    with sedeploy.load(weights, metadata=sedeploy.read_metadata(trained_digits.onnx_path)) as runner:
        described = _described(weights, runner)
    assert (described.inputs, described.outputs) == (onnx_served.inputs, onnx_served.outputs)
    assert described.precision == "fp32" and described.max_batch == runner.input_spec.max_batch
    config = model_config([described], "digits_torch", ServingOptions(kind="cpu"))
    assert config["input"][0]["dims"] == [1, 32, 32] and config["output"][0]["dims"] == [10]


def test_loadtest_stays_on_loopback_and_needs_a_server() -> None:
    assert parse_url("localhost:8000").protocol == "http"
    assert parse_url("grpc://127.0.0.1:8001").port == 8001
    with pytest.raises(ConfigError, match="not a loopback address"):
        parse_url("http://192.0.2.1:8000")
    with pytest.raises(ConfigError, match="protocol must be http or grpc"):
        parse_url("ftp://127.0.0.1:21")
    with pytest.raises(sedeploy.SedeployError, match="no Triton server answers"):
        loadtest(f"127.0.0.1:{free_port()}", "digits", concurrency=(1,), duration_s=0.1)


def test_loadtest_tolerance_and_a_statistics_source_that_changes_mid_level() -> None:
    from sedeploy.serving.loadtest import _BatchCounter, _Tally

    strict, loose = _Tally(), _Tally(tolerance=1e-3)
    for tally in (strict, loose):
        tally.answered(0.01, 5e-4)  # e.g. a GPU kernel chosen for another batch size
    assert (strict.mismatches, loose.mismatches) == (1, 0)
    counter = _BatchCounter.__new__(_BatchCounter)
    # statistics before the level, metrics after it (the statistics API refused the second read)
    assert counter.difference({1: 3}, (10.0, 4.0)) == (None, None)
    assert counter.difference({1: 3}, {1: 5, 4: 2}) == ({1: 2, 4: 2}, 2.5)  # 2 runs of 1 and 2 of 4
    with pytest.raises(ConfigError, match="tolerance must be a number"):
        loadtest("http://127.0.0.1:9", "m", tolerance=-1.0)


def test_an_unexpected_failure_is_a_generic_500_and_its_details_stay_in_the_log(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Runs last in this module: it closes the INT8 runner under the running server, as a failing device would."""
    index = [model.name for model in server.models].index("digits_int8")
    server._runners[index].close()
    tensor = [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0.0] * 1024}]
    with caplog.at_level(logging.WARNING, logger="pytriton"):
        status, body = _post(server, "digits_int8", tensor)
    assert status == 500, body
    assert (
        _one_line_without_paths(json.loads(body)["error"])
        == "model digits_int8 failed on this request; the server's log has the details"
    )
    assert "RunnerClosedError" in caplog.text  # the details, in the server's own log
    status, body = _post(server, "digits_fp32", tensor)
    assert status == 200, body
