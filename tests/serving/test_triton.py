"""``sedeploy triton``: repositories for an ONNX model and an engine, parsed with Triton's own schema."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from manifests import make_manifest
from tritonclient.grpc import model_config_pb2

from sedeploy.artifacts.manifest import read_manifest, write_manifest
from sedeploy.artifacts.metadata import read_metadata
from sedeploy.build import BuildOptions, build_engine
from sedeploy.cli import cli
from sedeploy.errors import ConfigError
from sedeploy.export import export_onnx
from sedeploy.files import sha256_of_file
from sedeploy.serving.repository import ServingOptions, TritonConfigError, parse_config, read_artifact
from sedeploy.serving.triton import ModelExistsError, check_repository, write_repository

LABELS = ["cat", "dog", "bird", "fish"]
MAX_BATCH = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SE-ResNet exported by sedeploy (FP32), with its FP16 ONNX Runtime build beside it."""
    folder = tmp_path_factory.mktemp("triton_model")
    result = export_onnx(
        "se_preact_resnet",
        img_size=16,
        options={"depths": (1, 1, 1), "widths": (16, 16, 32)},
        num_classes=len(LABELS),
        labels=LABELS,
        max_batch=MAX_BATCH,
        check=False,
        output=folder / "tiny.onnx",
    )
    build_engine(result.path, BuildOptions(precision="fp16", backend="onnxruntime"))
    return result.path


@pytest.fixture
def model(exported: Path, tmp_path: Path) -> Path:
    """A private copy of the exported model and its FP16 artifacts (with manifests)."""
    for path in exported.parent.iterdir():
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / exported.name


@pytest.fixture
def engine(model: Path) -> Path:
    """A synthetic (not built) TensorRT engine: opaque bytes with a manifest such as a real build writes."""
    path = model.with_name("tiny.int8.engine")
    path.write_bytes(b"not really a TensorRT plan \x00\x01\x02" * 64)
    metadata = read_metadata(model)
    manifest = make_manifest(
        path,
        kind="engine",
        precision="int8",
        source_onnx_sha256=sha256_of_file(model),
        source_metadata=metadata.to_dict(),
        device={"description": "NVIDIA L4, compute capability 8.9", "gpu_name": "NVIDIA L4"},
        recipe={"flavour": "tensorrt"},
        engine={
            "tensorrt_version": "10.3.0",
            "profile": {"min": 1, "opt": 4, "max": 8},
            "hardware_compat": False,
            "version_compat": False,
        },
    )
    write_manifest(manifest, path)
    return path


def _parse(path: Path) -> Any:
    """Parse a config.pbtxt with Triton's schema directly (not through sedeploy) and check it round-trips."""
    message = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(encoding="utf-8"), message)
    again = model_config_pb2.ModelConfig()
    text_format.Parse(text_format.MessageToString(message), again)
    assert again == message
    assert again.SerializeToString(deterministic=True) == message.SerializeToString(deterministic=True)
    return message


def test_onnx_repository_parses_with_tritons_schema_and_matches_the_model(
    model: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    options = ServingOptions(preferred_batch=(8, 4), max_queue_delay_us=250, instances=2)
    result = write_repository([model], repo, options=options)

    folder = repo / "se_preact_resnet"
    assert [m.folder for m in result.models] == [folder]
    config = _parse(folder / "config.pbtxt")
    metadata = read_metadata(model)
    assert config.name == "se_preact_resnet" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == metadata.max_batch == MAX_BATCH
    (model_input,) = config.input
    assert model_input.name == metadata.input_name
    assert model_input.data_type == model_config_pb2.TYPE_FP32
    assert list(model_input.dims) == list(metadata.input_size) == [3, 16, 16]
    assert model_input.format == model_config_pb2.ModelInput.FORMAT_NCHW
    (model_output,) = config.output
    assert model_output.name == metadata.output_name
    assert list(model_output.dims) == [len(LABELS)]
    assert model_output.label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines() == LABELS
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert not config.HasField("optimization")
    assert sha256_of_file(folder / "1" / "model.onnx") == sha256_of_file(model)
    assert not (folder / "1" / "model.onnx.manifest.json").exists()  # the exported ONNX has none

    report = check_repository(repo)
    assert report.ok, report.to_text()
    assert report.models[0].versions == [1]


def test_engine_repository_reads_the_manifest_and_copies_it(engine: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repository([engine], repo, name="classifier", version=3)

    folder = repo / "classifier"
    config = _parse(folder / "config.pbtxt")
    manifest = read_manifest(engine)
    source = manifest.source_metadata
    assert config.platform == "tensorrt_plan"
    assert manifest.engine is not None
    assert config.max_batch_size == manifest.engine["profile"]["max"] == 8
    assert [(t.name, list(t.dims)) for t in config.input] == [(source["input_name"], source["input_size"])]
    assert [(t.name, list(t.dims)) for t in config.output] == [(source["output_name"], [len(LABELS)])]
    assert config.input[0].data_type == config.output[0].data_type == model_config_pb2.TYPE_FP32
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU

    plan = folder / "3" / "model.plan"
    assert plan.read_bytes() == engine.read_bytes()
    copied = read_manifest(plan)  # beside the model, where the serving side looks
    copied.check_artifact(plan)
    assert copied == manifest
    report = check_repository(repo)
    assert report.ok and not report.models[0].notes, report.to_text()

    with pytest.raises(ConfigError, match="only on a GPU"):
        write_repository([engine], tmp_path / "cpu", options=ServingOptions(kind="cpu"))
    with pytest.raises(ConfigError, match="exceeds"):
        write_repository([engine], tmp_path / "big", options=ServingOptions(max_batch=16))


def test_several_artifacts_become_versions_or_one_model_per_precision(model: Path, tmp_path: Path) -> None:
    fp16 = model.with_name("tiny.fp16.onnx")
    assert read_artifact(fp16).precision == "fp16" and read_artifact(model).precision == "fp32"

    versions = write_repository([model, fp16], tmp_path / "versions", name="tiny")
    assert versions.models[0].versions == (1, 2)
    folder = tmp_path / "versions" / "tiny"
    assert sha256_of_file(folder / "2" / "model.onnx") == sha256_of_file(fp16)
    read_manifest(folder / "2" / "model.onnx").check_artifact(folder / "2" / "model.onnx")
    assert check_repository(tmp_path / "versions").ok

    accelerated = ServingOptions(ort_trt_accelerator=True)
    split = write_repository(
        [model, fp16], tmp_path / "split", name="tiny", per_precision=True, options=accelerated
    )
    assert [m.name for m in split.models] == ["tiny_fp32", "tiny_fp16"]
    config = _parse(tmp_path / "split" / "tiny_fp16" / "config.pbtxt")
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert check_repository(tmp_path / "split").ok

    with pytest.raises(ConfigError, match="one precision per model"):
        write_repository([model, fp16], tmp_path / "mixed", options=accelerated)
    with pytest.raises(
        ConfigError, match=r"give the portable tiny\.fp16\.onnx"
    ):  # ORT's graph for this machine
        write_repository([model.with_name("tiny.fp16.ort.onnx")], tmp_path / "ort")
    assert not (tmp_path / "mixed").exists() and not (tmp_path / "ort").exists()


def _break_dims(folder: Path) -> None:
    config = parse_config((folder / "config.pbtxt").read_text())
    config.input[0].dims[1] = 17
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))


def _remove_version(folder: Path) -> None:
    shutil.rmtree(folder / "1")


def _wrong_platform(folder: Path) -> None:
    config = parse_config((folder / "config.pbtxt").read_text())
    config.platform = "tensorrt_plan"
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    (folder / "1" / "model.onnx").rename(folder / "1" / "model.plan")


def _malform(folder: Path) -> None:
    (folder / "config.pbtxt").write_text('name: "tiny"\nmax_batch_size: sixteen\n')


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_break_dims, "input 'input': config dims [3, 17, 16] disagree with the model's [3, 16, 16]"),
        (_remove_version, "no version folder"),
        (_wrong_platform, "model.plan is an ONNX model but the platform is tensorrt_plan"),
        (_malform, "does not parse with Triton's ModelConfig schema"),
    ],
)
def test_check_finds_what_triton_would_reject(
    model: Path, tmp_path: Path, damage: Callable[[Path], None], expected: str
) -> None:
    repo = tmp_path / "repo"
    write_repository([model], repo, name="tiny")
    assert check_repository(repo).ok
    damage(repo / "tiny")

    report = check_repository(repo)
    assert not report.ok
    assert any(expected in problem for problem in report.models[0].problems), report.to_text()
    result = CliRunner().invoke(cli, ["triton", "--check", str(repo), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["ok"] is False


def test_malformed_config_is_one_clear_error() -> None:
    with pytest.raises(TritonConfigError, match="does not parse"):
        parse_config("input { dims: [3, 16 }")


def test_different_model_of_the_same_name_needs_force(model: Path, engine: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repository([model], repo, name="tiny")
    config_before = (repo / "tiny" / "config.pbtxt").read_text()
    write_repository([model], repo, name="tiny")  # the same model again: allowed
    write_repository([model], repo, name="tiny", version=2)  # a new version under the same config: allowed
    assert check_repository(repo).models[0].versions == [1, 2]

    for artifact, options in ((model, ServingOptions(max_batch=4)), (engine, None)):
        with pytest.raises(ModelExistsError, match=r"force=True"):
            write_repository([artifact], repo, name="tiny", options=options)
    assert (repo / "tiny" / "config.pbtxt").read_text() == config_before
    assert sorted(p.name for p in repo.iterdir()) == ["tiny"]  # no staging folder left behind

    write_repository([engine], repo, name="tiny", force=True)
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert _parse(repo / "tiny" / "config.pbtxt").platform == "tensorrt_plan"
    assert check_repository(repo).ok


def test_cli_writes_and_checks_a_repository(model: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    runner = CliRunner()
    args = [
        "triton",
        str(model),
        "-o",
        str(repo),
        "--name",
        "tiny",
        "--preferred-batch",
        "4,8",
        "--kind",
        "cpu",
    ]
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["models"][0]["config"]["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    assert _parse(repo / "tiny" / "config.pbtxt").dynamic_batching.preferred_batch_size == [4, 8]

    checked = runner.invoke(cli, ["triton", "--check", str(repo)])
    assert checked.exit_code == 0 and "tiny: ok" in checked.stdout

    again = runner.invoke(cli, ["triton", str(model), "-o", str(repo), "--name", "tiny", "--max-batch", "2"])
    assert again.exit_code == 1 and "already holds a different model" in again.stderr
    assert runner.invoke(cli, ["triton", str(model)]).exit_code == 2  # no -o
    assert runner.invoke(cli, [*args, "--preferred-batch", "4,x"]).exit_code == 2
    too_big = runner.invoke(
        cli, ["triton", str(model), "-o", str(tmp_path / "r2"), "--preferred-batch", "64"]
    )
    assert too_big.exit_code == 2 and "exceed the max batch" in too_big.stderr
