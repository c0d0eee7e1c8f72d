"""``build-engine --int8`` of a quantization-aware export, every-tensor INT8 for PTQ, and the DLA's split (issue 34).

The QAT runs fine-tune the shipped digits checkpoint for one epoch through the CLI (a few seconds each): the export
is then built as it is, without a calibration folder, gated against its float twin on the fine-tuning's validation
images, and verified like any INT8 artifact. Last, what the benchmark of issue 34 ran into: the start kept when
fine-tuning only hurts, and an INT8 output named like the optimized graph.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner, Result
from precision.int8_outliers import (
    RESIDUAL_BLOCKS,
    RESIDUAL_CHANNELS,
    SHIPPED,
    residual_outlier,
    shipped_digits_onnx,
    write_variant,
)

from sedeploy.artifacts.manifest import read_manifest
from sedeploy.artifacts.qat_export import read_qat_export
from sedeploy.build import BuildOptions, build_engine
from sedeploy.building.qat import qat_gate
from sedeploy.cli import cli
from sedeploy.compare import compare_logits
from sedeploy.measure.verification import find_reference
from sedeploy.precision import PrecisionError, lint_tensorrt_qdq
from sedeploy.precision.placement import placement_of, recipe_placement
from sedeploy.precision.recipe import Int8Recipe
from sedeploy.training.qat import activation_scales, read_qat_checkpoint
from sedeploy.verify import verify

REPOSITORY = Path(__file__).resolve().parents[2]
CALIBRATION = REPOSITORY / "calibration"
ORT = ("--backend", "onnxruntime")


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _ptq(target: str, calib_size: int = 64, every_tensor_int8: bool = False) -> BuildOptions:
    """A post-training INT8 build on ONNX Runtime from the shipped calibration folder."""
    return BuildOptions(
        precision="int8",
        backend="onnxruntime",
        target=target,
        calib_dir=CALIBRATION,
        calib_size=calib_size,
        every_tensor_int8=every_tensor_int8,
    )


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPOSITORY / "tests"))
    from digits_images import write_digits_imagefolder

    # a quarter of the digits to fine-tune on (449 images: a few seconds per epoch), the rest held out
    train, heldout, _ = write_digits_imagefolder(tmp_path_factory.mktemp("digits"), heldout_share=0.75)
    return train, heldout


def _qat_run(root: Path, train: Path, *flags: str) -> Path:
    result = _cli(
        "train",
        "--qat",
        "--weights",
        str(SHIPPED / "model.safetensors"),
        str(train),
        "--epochs",
        "1",
        "-o",
        str(root),
        *flags,
    )
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def cpu_qat(digit_folders: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _qat_run(tmp_path_factory.mktemp("qat-cpu"), digit_folders[0])


def test_a_qat_export_builds_int8_without_calibration_and_verifies(
    cpu_qat: Path, digit_folders: tuple[Path, Path], tmp_path: Path
) -> None:
    exported = cpu_qat / "model.int8-cpu.qat.onnx"
    qdq = onnx.load(str(exported))
    assert (cpu_qat / "curves.png").read_bytes()[
        :8
    ] == b"\x89PNG\r\n\x1a\n"  # the run's curves, PTQ start at 0
    # the learned scales in the ONNX are the checkpoint's, on the PTQ recipe's placement node for node
    _, learned = read_qat_checkpoint(cpu_qat / "model.qat.safetensors")
    written = activation_scales(qdq)
    assert set(written) == set(learned) and learned
    for tensor, (scale, zero_point) in learned.items():
        assert written[tensor] == (pytest.approx(scale, rel=1e-7), zero_point), tensor
    assert placement_of(qdq) == recipe_placement(cpu_qat / "model.fp32.onnx", Int8Recipe(flavour="cpu"))

    result = _cli("build-engine", "--int8", str(exported), "--backend", "onnxruntime", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    artifact = Path(report["artifacts"][-1])
    assert report["calibration"] is None and report["precision"] == "int8"
    manifest = read_manifest(artifact)
    assert manifest.precision == "int8"
    assert manifest.recipe["qat"] is True and manifest.recipe["flavour"] == "cpu"
    assert manifest.recipe["parity_check"]["kind"] == "validation"
    assert manifest.recipe["parity_gate"] == "passed"
    assert manifest.recipe["repair"]["status"] == "not run"
    assert manifest.precision_audit is not None and manifest.precision_audit["shares"]["int8"] > 0.9
    # the same speed as PTQ of the same placement: ONNX Runtime's optimized graph runs the same INT8 share
    ptq = build_engine(cpu_qat / "model.fp32.onnx", _ptq("cpu"), output=tmp_path / "ptq.int8-cpu.onnx")
    assert ptq.precision_audit is not None
    assert manifest.precision_audit["shares"] == pytest.approx(ptq.precision_audit.shares())
    judged = read_qat_export(qdq)
    assert judged is not None and manifest.recipe["parity_check"]["images"] == min(
        300, len(judged.validation["files"])
    )
    # verify's own reference for it is the float twin (its source, the QAT file, is INT8 itself)
    assert find_reference(artifact) == cpu_qat / "model.qat-fp32.onnx"
    outcome = verify(artifact, data=digit_folders[1])
    assert outcome.passed, outcome.failures


def test_a_qat_export_runs_on_openvino(cpu_qat: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    folder = tmp_path / "run"
    shutil.copytree(cpu_qat, folder)
    built = build_engine(
        folder / "model.int8-cpu.qat.onnx", BuildOptions(precision="int8", backend="openvino")
    )
    manifest = built.manifests[0]
    assert manifest.recipe["qat"] is True and manifest.recipe["parity_gate"] == "passed"
    assert built.precision_audit is not None and built.precision_audit.shares()["int8"] > 0.9
    assert built.fidelity is not None and built.fidelity.top1_agreement >= 0.99


def test_the_tensorrt_flavour_every_tensor_int8_passes_lint(
    digit_folders: tuple[Path, Path], tmp_path: Path
) -> None:
    run = _qat_run(tmp_path / "trt", digit_folders[0], "--target", "tensorrt", "--every-tensor-int8")
    exported = run / "model.int8-tensorrt.qat.onnx"
    qdq = onnx.load(str(exported))
    assert lint_tensorrt_qdq(qdq, high_precision="fp16") == []
    recipe = Int8Recipe(flavour="tensorrt", every_tensor_int8=True)
    placement = placement_of(qdq)
    assert placement == recipe_placement(run / "model.fp32.onnx", recipe)
    quantized = set(placement.quantized_nodes)
    assert {n.name for n in qdq.graph.node if n.op_type in ("Gemm", "Sigmoid")} <= quantized  # head, SE gate
    _, learned = read_qat_checkpoint(run / "model.qat.safetensors")
    for tensor, (scale, _) in learned.items():  # the file is FP16-typed: its scales too
        assert activation_scales(qdq)[tensor][0] == pytest.approx(scale, rel=1e-3), tensor
    built = build_engine(exported, BuildOptions(precision="int8", backend="onnxruntime"))
    assert built.manifests[-1].recipe["every_tensor_int8"] is True
    assert any("portable one for TensorRT" in note for note in built.notes)


def test_what_a_qat_export_settled_is_refused(cpu_qat: Path, tmp_path: Path) -> None:
    exported = cpu_qat / "model.int8-cpu.qat.onnx"
    result = _cli(
        "build-engine", "--int8", str(exported), "--target", "tensorrt", "--calib-method", "entropy"
    )
    assert result.exit_code == 2
    assert "quantization-aware export for the cpu flavour" in result.output
    assert "--target, --calib-method cannot apply" in result.output
    result = _cli("build-engine", "--int8", str(exported), "--calib-size", "50")
    assert result.exit_code == 2 and "--calib-size cannot apply" in result.output
    # a post-training INT8 file stays refused for --int8: there is nothing to re-quantize
    ptq = tmp_path / "model.onnx"
    shutil.copy(shipped_digits_onnx(), ptq)
    built = build_engine(ptq, _ptq("cpu"))
    result = _cli("build-engine", "--int8", str(built.artifacts[0]))
    assert result.exit_code == 2 and "is already int8" in result.output


def test_the_gate_needs_the_float_twin_and_the_validation_images(
    cpu_qat: Path, digit_folders: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "moved"
    folder.mkdir()
    shutil.copy(cpu_qat / "model.int8-cpu.qat.onnx", folder)
    result = _cli("build-engine", "--int8", str(folder / "model.int8-cpu.qat.onnx"), *ORT)
    assert result.exit_code == 1 and "model.qat-fp32.onnx (the gate's reference" in result.output
    twin = folder / "model.qat-fp32.onnx"
    shutil.copy(cpu_qat / "model.fp32.onnx", twin)  # the pre-QAT export is not the twin: its weights differ
    result = _cli("build-engine", "--int8", str(folder / "model.int8-cpu.qat.onnx"), *ORT)
    assert result.exit_code == 1 and "changed since" in result.output
    shutil.copy(cpu_qat / "model.qat-fp32.onnx", twin)
    # validation images that changed are refused, never swapped for others; calib_dir judges instead
    exported = onnx.load(str(folder / "model.int8-cpu.qat.onnx"))
    record = read_qat_export(exported)
    assert record is not None and record.validation is not None
    assert Path(record.validation["folder"]) == digit_folders[0].resolve()
    copy = tmp_path / "train-copy"
    shutil.copytree(digit_folders[0], copy)
    (next(copy.glob("3/*.png"))).unlink()
    from sedeploy.artifacts.qat_export import write_qat_export

    moved = type(record)(**{**record.__dict__, "validation": {**record.validation, "folder": str(copy)}})
    write_qat_export(exported, moved)
    onnx.save_model(exported, str(folder / "model.int8-cpu.qat.onnx"))
    result = _cli("build-engine", "--int8", str(folder / "model.int8-cpu.qat.onnx"), *ORT)
    assert result.exit_code == 1 and "changed since the fine-tuning" in result.output
    assert "--calib-dir" in result.output
    result = _cli(
        "build-engine",
        "--int8",
        str(folder / "model.int8-cpu.qat.onnx"),
        "--calib-dir",
        str(digit_folders[1]),
        *ORT,
    )
    assert result.exit_code == 0, result.output
    assert "images of calib_dir" in result.output


def test_a_qat_export_that_misses_its_gate_names_fine_tuning(cpu_qat: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((200, 10)).astype(np.float32)
    wrong = compare_logits(logits, rng.standard_normal((200, 10)).astype(np.float32))
    with pytest.raises(PrecisionError, match="fine-tuning longer") as caught:
        qat_gate(wrong, BuildOptions(precision="int8"))
    assert "repair=True" not in str(caught.value) and "calib_size" not in str(caught.value)
    assert "published anyway" in str(qat_gate(wrong, BuildOptions(precision="int8", gate=False)))


def test_every_tensor_int8_ptq_quantizes_the_se_gate_and_the_head(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    shutil.copy(shipped_digits_onnx(), source)
    result = _cli(
        "build-engine",
        "--int8",
        str(source),
        "--every-tensor-int8",
        "--target",
        "tensorrt",
        "--backend",
        "onnxruntime",
        "--calib-dir",
        str(CALIBRATION),
        "--json",
        "-",
    )
    assert result.exit_code == 0, result.output
    precision_file = Path(json.loads(result.stdout)["artifacts"][0])
    qdq = onnx.load(str(precision_file))
    assert read_manifest(precision_file).recipe["every_tensor_int8"] is True
    assert placement_of(qdq) == recipe_placement(
        source, Int8Recipe(flavour="tensorrt", every_tensor_int8=True)
    )
    quantized = set(placement_of(qdq).quantized_nodes)
    assert {n.name for n in qdq.graph.node if n.op_type in ("Gemm", "Sigmoid")} <= quantized
    assert lint_tensorrt_qdq(qdq, high_precision="fp16") == []
    result = _cli("build-engine", "--int8", str(source), "--every-tensor-int8", "--float-se")
    assert result.exit_code == 2 and "--every-tensor-int8" in result.output


def test_an_every_tensor_int8_repair_keeps_no_layer_float(tmp_path: Path) -> None:
    """The residual-stream outlier needs float layers to pass; an every-tensor build equalizes only and refuses."""
    model = onnx.load(str(shipped_digits_onnx()))
    source = write_variant(
        residual_outlier(model, RESIDUAL_BLOCKS, RESIDUAL_CHANNELS, 200.0), tmp_path / "model.onnx"
    )
    options = _ptq("cpu", calib_size=128, every_tensor_int8=True)
    with pytest.raises(PrecisionError, match="no layer may stay float") as caught:
        build_engine(source, options)
    assert "quantize_se=False" not in str(caught.value) and "min_int8_mac_share" not in str(caught.value)
    assert "train qat with every_tensor_int8" in str(caught.value)
    assert not list(tmp_path.glob("model.int8*"))


def test_a_dla_build_says_why_the_dla_would_split_the_network(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    shutil.copy(shipped_digits_onnx(), source)
    result = _cli("build-engine", "--int8", str(source), "--dla-core", "0", "--backend", "tensorrt")
    assert result.exit_code == 2
    assert "the DLA runs only tensors with INT8 scales in one region" in result.output
    assert "--every-tensor-int8" in result.output and "--gpu-fallback" in result.output
    # an INT8 file built as it is: judged by its own graph (the tensorrt flavour keeps its head and SE gate float)
    plain = build_engine(source, _ptq("tensorrt")).artifacts[0]
    result = _cli("build-engine", str(plain), "--dla-core", "1", "--backend", "tensorrt")
    assert result.exit_code == 2 and "keeps layer1.0.se.gate" in result.output, result.output
    assert "build the INT8 file with --every-tensor-int8" in result.output
    every = build_engine(
        source, _ptq("tensorrt", every_tensor_int8=True), output=tmp_path / "every.int8-tensorrt.onnx"
    ).artifacts[0]
    result = _cli("build-engine", str(every), "--dla-core", "1", "--backend", "tensorrt")
    assert "DLA runs only" not in result.output and result.exit_code == 1
    for accepted in (
        ["--every-tensor-int8"],
        ["--gpu-fallback"],
    ):  # past the rule: TensorRT itself is missing
        result = _cli(
            "build-engine", "--int8", str(source), "--dla-core", "0", "--backend", "tensorrt", *accepted
        )
        assert "DLA runs only" not in result.output
        assert result.exit_code == 1 and "tensorrt" in result.output


def test_fine_tuning_that_only_hurts_keeps_the_post_training_start(
    cpu_qat: Path, digit_folders: tuple[Path, Path], tmp_path: Path
) -> None:
    from sedeploy.training.loop import TrainConfig
    from sedeploy.training.qat import train_qat

    source = cpu_qat / "model.fp32.onnx"
    config = TrainConfig(
        arch="se_preact_resnet", epochs=1, lr=1.0, batch_size=64, augment=False, device="cpu"
    )
    result = train_qat(source, digit_folders[0], tmp_path / "qat", Int8Recipe(flavour="cpu"), config)
    assert result.history[0].val_accuracy < result.ptq_val_accuracy  # lr 1.0 wrecks the network
    assert result.best_epoch == 0 and "no epoch beat it" in result.to_text()
    weights, _ = read_qat_checkpoint(result.checkpoint)
    start = {init.name: onnx.numpy_helper.to_array(init) for init in onnx.load(str(source)).graph.initializer}
    assert weights and all((weights[name] == start[name]).all() for name in weights)


def test_an_int8_output_names_the_precision_onnx_not_the_optimized_graph(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    shutil.copy(shipped_digits_onnx(), source)
    wanted = tmp_path / "out.ort.onnx"
    result = _cli(
        "build-engine", "--int8", str(source), *ORT, "--calib-dir", str(CALIBRATION), "-o", str(wanted)
    )
    assert result.exit_code == 2, result.output
    assert f"give --output {tmp_path / 'out.onnx'}" in result.output
    assert not wanted.exists() and not list(tmp_path.glob("out*"))
