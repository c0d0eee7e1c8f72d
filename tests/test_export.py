"""The export stage end to end: real exports, real ONNX Runtime sessions, real files."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import helper
from onnx.reference import ReferenceEvaluator
from reference_nets import randomize

from sedeploy import create_model, estimate_complexity
from sedeploy.artifacts.metadata import read_metadata
from sedeploy.cli import cli
from sedeploy.compare import Comparison, compare_logits
from sedeploy.errors import ConfigError, ParityError
from sedeploy.export import DEFAULT_OPSET, MIN_COSINE, count_batchnorms, export_onnx
from sedeploy.files import sha256_of_file
from sedeploy.models.checkpoint import save_checkpoint
from sedeploy.models.senet import Bottleneck, ResNet, SEOptions

TINY_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinySENet(nn.Module):
        def __init__(self, num_classes=3, in_chans=3):
            super().__init__()
            self.conv = nn.Conv2d(in_chans, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.fc1 = nn.Conv2d(8, 2, 1)
            self.fc2 = nn.Conv2d(2, 8, 1)
            self.head = nn.Linear(8, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            x = x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
            return self.head(x.mean((2, 3)))


    class ExportsSomethingElse(TinySENet):
        # Computes other logits once traced for export: what a broken exporter would produce.
        def forward(self, x):
            logits = super().forward(x)
            return logits.flip(1) if torch.compiler.is_exporting() else logits


    class InterruptedDuringParity(TinySENet):
        # Ctrl-C arriving after the file was written but before it was validated.
        def forward(self, x):
            if x.shape[0] == 4 and not torch.compiler.is_exporting():
                raise KeyboardInterrupt
            return super().forward(x)


    def _randomized(model):
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.is_floating_point():
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.1)
        return model.eval()


    def build(num_classes=3):
        return _randomized(TinySENet(num_classes))


    def build_divergent():
        return _randomized(ExportsSomethingElse())


    def build_interrupted():
        return _randomized(InterruptedDuringParity())


    def not_a_module():
        return "a string"
    """
)


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    """A folder holding ``tiny_senet.py``: a user's own model, importable via ``--model``."""
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "tiny_senet.py").write_text(TINY_MODULE, encoding="utf-8")
    return folder


@pytest.fixture
def previous_output(tmp_path):
    """An existing output file that failed exports must leave untouched."""
    path = tmp_path / "out" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"previous good model")
    return path


def _assert_untouched(previous_output):
    assert previous_output.read_bytes() == b"previous good model"
    assert [p.name for p in previous_output.parent.iterdir()] == ["model.onnx"]


def _run_cli(*args: str):
    return CliRunner().invoke(cli, ["export", *args])


def _one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def _ort_session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _shallow_se_resnext() -> torch.nn.Module:
    # One SE-ResNeXt bottleneck per stage: the family's graph at a quarter of se_resnext50's export time.
    return ResNet(Bottleneck, (1, 1, 1, 1), num_classes=10, groups=32, base_width=4, se=SEOptions())


FAMILIES = [
    pytest.param("se_resnet18", {"stem": "small"}, 32, id="basic-block-se-resnet"),
    pytest.param("se_resnet50", {}, 64, id="bottleneck-se-resnet"),
    pytest.param(_shallow_se_resnext, {}, 64, id="se-resnext-module"),
    pytest.param("resnet18", {}, 64, id="plain-resnet"),
]


@pytest.mark.parametrize(("arch", "options", "size"), FAMILIES)
def test_round_trip_of_each_family(tmp_path, arch, options, size):
    output = tmp_path / "out" / "model.onnx"
    if isinstance(arch, str):
        source = randomize(create_model(arch, num_classes=10, img_size=size, **options))
        weights = save_checkpoint(source, tmp_path / "weights.safetensors")
        result = export_onnx(arch, weights=weights, img_size=size, max_batch=8, output=output)
    else:
        source, weights = randomize(arch()), None
        result = export_onnx(source, img_size=size, max_batch=8, output=output)

    # The parity gate ran at batch 1 and a larger batch and passed the FP32 thresholds.
    assert [check.samples for check in result.parity] == [1, 4]
    assert all(check.min_cosine >= MIN_COSINE and check.top1_agreement == 1.0 for check in result.parity)
    # One self-contained file, nothing else left in the folder.
    assert [p.name for p in output.parent.iterdir()] == ["model.onnx"]
    assert result.size_bytes == output.stat().st_size
    model = onnx.load(str(output))
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}
    assert {o.domain: o.version for o in model.opset_import}[""] == DEFAULT_OPSET
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    # Batches 1, 3 and 8 all run on the file and match PyTorch.
    session = _ort_session(output)
    for batch_size in (1, 3, 8):
        inputs = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(batch_size))
        with torch.no_grad():
            expected = source(inputs).numpy()
        (got,) = session.run(["logits"], {"input": inputs.numpy()})
        check = compare_logits(expected, got)
        assert check.passed(MIN_COSINE) and check.max_rel_error < 1e-4, check
    # The metadata describes what was exported.
    metadata = read_metadata(output)
    assert metadata == result.metadata
    assert metadata.num_classes == 10 and metadata.input_size == (3, size, size)
    assert metadata.max_batch == 8 and metadata.opset == DEFAULT_OPSET
    if weights is not None:
        assert metadata.arch == arch
        assert metadata.weights_sha256 == sha256_of_file(weights) and metadata.weights_layout == "sedeploy"
    else:
        assert metadata.arch == "sedeploy.models.senet:ResNet" and metadata.weights_sha256 is None
    complexity = estimate_complexity(source, (3, size, size))
    assert (metadata.params, metadata.macs) == (complexity.params, complexity.macs)


def test_grayscale_four_class_473_model_via_cli(tmp_path):
    source = randomize(create_model("se_resnet18", in_chans=1, num_classes=4))
    weights = tmp_path / "chairs.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 9}, weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("armchair\nbar stool\nrocking chair\nswivel chair\n", encoding="utf-8")
    output = tmp_path / "chairs" / "model.onnx"

    result = _run_cli(
        "se_resnet18", "--weights", str(weights), "--in-chans", "1", "--num-classes", "4",
        "--img-size", "473", "--labels", str(labels), "--max-batch", "2", "-o", str(output), "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["path"] == str(output) and report["size_bytes"] == output.stat().st_size
    assert report["export_seconds"] > 0 and len(report["parity"]) == 2
    metadata = read_metadata(output)
    assert metadata.in_chans == 1 and metadata.grayscale and metadata.channel_order == "GRAY"
    assert metadata.input_size == (1, 473, 473) and metadata.num_classes == 4
    assert metadata.labels == ("armchair", "bar stool", "rocking chair", "swivel chair")
    assert len(metadata.preprocessing.mean) == 1 and metadata.preprocessing.crop == (473, 473)
    assert report["metadata"]["input_size"] == [1, 473, 473]
    dims = onnx.load(str(output)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 473, 473]


def test_user_model_via_cli_and_a_second_consumer_agrees(tiny_package, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_package)
    result = _run_cli("--model", "tiny_senet:build", "--img-size", "16", "-O", "num_classes=5")
    assert result.exit_code == 0, result.output
    assert "exported tiny_senet:build" in result.stdout and "MB" in result.stdout
    output = tiny_package / "models" / "tiny_senet.build" / "model.onnx"
    metadata = read_metadata(output)
    assert metadata.arch == "tiny_senet:build" and metadata.options == {"num_classes": 5}
    assert metadata.num_classes == 5 and metadata.input_size == (3, 16, 16)
    model = onnx.load(str(output))
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}

    inputs = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    (reference_logits,) = ReferenceEvaluator(model).run(None, {"input": inputs})
    (ort_logits,) = _ort_session(output).run(["logits"], {"input": inputs})
    np.testing.assert_allclose(reference_logits, ort_logits, rtol=1e-5, atol=1e-5)


def test_parity_failure_writes_nothing(tiny_package, previous_output, monkeypatch):
    monkeypatch.chdir(tiny_package)

    with pytest.raises(ParityError, match=r"top-1 agreement .*no file written"):
        export_onnx("tiny_senet:build_divergent", img_size=16, output=previous_output)
    _assert_untouched(previous_output)

    result = _run_cli("--model", "tiny_senet:build_divergent", "--img-size", "16", "-o", str(previous_output))
    assert result.exit_code == 1
    assert "cosine" in _one_line_error(result)
    _assert_untouched(previous_output)


def test_interrupted_export_leaves_the_previous_file(tiny_package, previous_output, monkeypatch):
    monkeypatch.chdir(tiny_package)

    with pytest.raises(KeyboardInterrupt):
        export_onnx("tiny_senet:build_interrupted", img_size=16, output=previous_output)

    _assert_untouched(previous_output)


def test_no_check_skips_parity_and_replaces_the_previous_file(tiny_package, previous_output, monkeypatch):
    monkeypatch.chdir(tiny_package)

    result = export_onnx("tiny_senet:build", img_size=16, output=previous_output, check=False, max_batch=1)

    assert result.parity == ()
    assert read_metadata(previous_output).max_batch == 1
    assert [p.name for p in previous_output.parent.iterdir()] == ["model.onnx"]


def test_pickled_custom_class_is_refused(tmp_path, previous_output):
    weights = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "config": Comparison(1, 0.0, 0.0, 1.0, 1.0, 1.0, True)}, weights)

    result = _run_cli("se_resnet18", "--weights", str(weights), "-o", str(previous_output))

    assert result.exit_code == 1
    line = _one_line_error(result)
    assert "execute code" in line and "safetensors" in line
    _assert_untouched(previous_output)


def test_truncated_checkpoint_fails_cleanly(tmp_path, previous_output):
    weights = save_checkpoint(create_model("se_resnet18", num_classes=4), tmp_path / "w.safetensors")
    weights.write_bytes(weights.read_bytes()[:-1000])

    result = _run_cli("se_resnet18", "--weights", str(weights), "-o", str(previous_output))

    assert result.exit_code == 1
    assert "truncated" in _one_line_error(result)
    _assert_untouched(previous_output)


def test_checkpoint_of_another_architecture_fails_cleanly(tmp_path, previous_output):
    weights = tmp_path / "r34.pt"
    torch.save(create_model("se_resnet34", num_classes=4).state_dict(), weights)

    result = _run_cli("se_resnet18", "--weights", str(weights), "-o", str(previous_output))

    assert result.exit_code == 1
    line = _one_line_error(result)
    assert "do not fit the model" in line and "unexpected" in line
    _assert_untouched(previous_output)


@pytest.mark.parametrize("target", ["weights", "record", "labels beside the record", "labels file"])
def test_output_over_an_input_is_refused_before_reading_it(tmp_path, monkeypatch, target):
    """The output path, spelt through a link and a ``..``, names one of export's inputs: refused, untouched."""
    weights = tmp_path / "run" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    (weights.parent / "model.json").write_text("{}", encoding="utf-8")
    (weights.parent / "labels.txt").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "names.txt").write_text("a\nb\n", encoding="utf-8")
    inputs = {
        "weights": weights,
        "record": weights.parent / "model.json",
        "labels beside the record": weights.parent / "labels.txt",
        "labels file": tmp_path / "names.txt",
    }
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link.onnx").symlink_to(inputs[target])
    before = {path: path.read_bytes() for path in inputs.values()}
    monkeypatch.setattr("sedeploy.export.read_checkpoint", lambda path: pytest.fail("read before the check"))
    for output in (
        tmp_path / "out" / "link.onnx",
        tmp_path / "out" / ".." / inputs[target].relative_to(tmp_path),
    ):
        with pytest.raises(ConfigError, match=rf"output {output} is the .* \(the same file\)") as error:
            export_onnx(
                "se_resnet18", weights=weights, labels=tmp_path / "names.txt", img_size=32, output=output
            )
        assert error.value.params == ("output",)
    assert {path: path.read_bytes() for path in inputs.values()} == before


def test_unwritable_output_folder_fails_before_exporting(tmp_path, previous_output):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be", encoding="utf-8")

    result = _run_cli(
        "se_resnet18", "--img-size", "32", "-O", "stem=small", "-o", str(blocker / "model.onnx")
    )

    assert result.exit_code == 1
    assert "cannot write to folder" in _one_line_error(result)
    assert blocker.read_text(encoding="utf-8") == "a file where the folder should be"
    _assert_untouched(previous_output)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("no_such_package.nets:build", "cannot import no_such_package.nets"),
        ("tiny_senet:no_such_factory", "has no callable no_such_factory"),
        ("tiny_senet:not_a_module", "returned a str, not an nn.Module"),
    ],
)
def test_unknown_model_target_fails_cleanly(tiny_package, previous_output, monkeypatch, target, expected):
    monkeypatch.chdir(tiny_package)

    result = _run_cli("--model", target, "-o", str(previous_output))

    assert result.exit_code == 2
    assert expected in _one_line_error(result)
    _assert_untouched(previous_output)


def test_arch_and_model_are_exclusive_and_model_needs_a_factory():
    assert _run_cli().exit_code == 2
    assert _run_cli("se_resnet18", "--model", "x:y").exit_code == 2
    result = _run_cli("--model", "tiny_senet")
    assert result.exit_code == 2 and "is not package.module:factory" in result.stderr


def test_requests_that_cannot_be_honoured_are_refused_early(tmp_path):
    with pytest.raises(ConfigError, match="opset 17 is below 18"):
        export_onnx("se_resnet18", opset=17, output=tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="3 labels given for a model with 4 classes"):
        export_onnx("se_resnet18", num_classes=4, labels=["a", "b", "c"], output=tmp_path / "m.onnx")
    training = create_model("resnet18", num_classes=2, stem="small").train()
    with pytest.raises(ConfigError, match="1 labels given"):
        export_onnx(training, img_size=32, labels=["only one"], output=tmp_path / "m.onnx")
    assert training.training  # the caller's module is left in the mode it came in
    assert list(tmp_path.iterdir()) == []


def test_parity_figures():
    reference = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])

    same = compare_logits(reference, reference.copy())
    flipped = compare_logits(reference, reference[:, ::-1])

    assert same.passed(MIN_COSINE) and same.max_abs_error == 0 and same.min_cosine == pytest.approx(1.0)
    assert not flipped.passed(MIN_COSINE)
    assert flipped.top1_agreement == 0.0 and flipped.max_abs_error == 2.0 and flipped.max_rel_error == 1.0
    assert flipped.min_cosine == pytest.approx(10 / 14)


def test_preactivation_batchnorm_stays_and_parity_holds(tmp_path):
    # BatchNorm after an addition (pre-activation blocks) has no convolution to fold into.
    output = tmp_path / "preact.onnx"

    result = export_onnx(
        "se_preact_resnet",
        options={"depths": (1, 1, 1), "widths": (16, 32, 64)},
        in_chans=1,
        num_classes=10,
        img_size=28,
        output=output,
    )

    assert all(check.passed(MIN_COSINE) for check in result.parity)
    foldable, unfoldable = count_batchnorms(onnx.load(str(output)).graph)
    assert foldable == 0 and unfoldable > 0


def test_batchnorm_count_tells_foldable_from_unfoldable():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv_out"]),
        helper.make_node("BatchNormalization", ["conv_out", "s", "b", "m", "v"], ["bn1_out"]),
        helper.make_node("Add", ["bn1_out", "x"], ["sum"]),
        helper.make_node("BatchNormalization", ["sum", "s", "b", "m", "v"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [], [])

    assert count_batchnorms(graph) == (1, 1)


def test_export_stderr_holds_only_sedeploys_own_lines_and_names_a_replaced_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    shipped = Path(__file__).resolve().parents[1] / "models" / "digits_se_resnet" / "model.safetensors"
    output = tmp_path / "d.onnx"
    output.write_bytes(b"an earlier export")
    result = subprocess.run(
        [sys.executable, "-m", "sedeploy", "export", "--weights", str(shipped), "-o", str(output)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith(("INFO sedeploy", "WARNING sedeploy")) for line in lines), lines
    assert any(f"export replaces {output}" in line for line in lines)
