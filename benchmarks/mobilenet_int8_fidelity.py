"""INT8 fidelity of a small trained SE-MobileNet (depthwise convolutions: a known INT8 trouble spot).

    python benchmarks/mobilenet_int8_fidelity.py [--epochs 15] [--width 0.5]

Trains ``se_mobilenet_v1`` and ``se_preact_resnet`` side by side on scikit-learn's digits
(32x32 grayscale, the same split as the shipped example) with ``sedeploy.train``, exports
each, builds INT8 in both flavours with every calibration method on ``calibration/``-style
images from the training split, and verifies each against its FP32 ONNX on the held-out
images. Writes ``benchmarks/results/mobilenet_int8.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from sedeploy.build import BuildOptions, build_engine
from sedeploy.export import export_onnx
from sedeploy.host import describe_machine
from sedeploy.precision import CALIBRATION_METHODS, FLAVOURS
from sedeploy.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the digits image folders
from digits_images import write_digits_imagefolder

from sedeploy.verify import verify

MODELS = {
    "se_mobilenet_v1": {},
    "se_preact_resnet": {"depths": (2, 2, 2), "widths": (32, 64, 128), "reduction": 8},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--width", type=float, default=0.5, help="MobileNet width multiplier")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mobilenet_int8.md")
    args = parser.parse_args()
    MODELS["se_mobilenet_v1"] = {"width_multiplier": args.width}
    lines = [
        "# INT8 fidelity on a trained small model: SE-MobileNet v1 vs SE-ResNet (digits, 32x32 grayscale)",
        "",
        f"Machine: {describe_machine()['description']}. Command: "
        f"`python benchmarks/mobilenet_int8_fidelity.py --epochs {args.epochs} --width {args.width}`",
        "",
        "| model | params | FP32 held-out acc | INT8 flavour | method | INT8 acc | drop (points) | min cosine | verify |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="sedeploy-mobilenet-") as work:
        root = Path(work)
        train_dir, heldout_dir, calib_dir = write_digits_imagefolder(root / "digits", calibration_count=256)
        assert calib_dir is not None
        for arch, options in MODELS.items():
            config = TrainConfig(
                arch=arch, img_size=(32, 32), in_chans=1, options=options, epochs=args.epochs, val_split=0.1
            )
            result = train(train_dir, config, root / arch)
            model_path = export_onnx(
                arch,
                weights=result.checkpoint,
                img_size=32,
                in_chans=1,
                num_classes=10,
                labels=result.labels,
                options=options,
                output=root / arch / "model.onnx",
            ).path
            for flavour in FLAVOURS:
                for method in CALIBRATION_METHODS:
                    built = build_engine(
                        model_path,
                        BuildOptions(
                            precision="int8",
                            backend="onnxruntime",
                            target=flavour,
                            calib_method=method,
                            calib_dir=calib_dir,
                        ),
                        output=root / arch / f"model.int8-{flavour}-{method}.onnx",
                    )
                    report = verify(built.artifact, model_path, data=heldout_dir)
                    lines.append(
                        f"| {arch} | {result.params:,} | {100 * (report.reference_accuracy or 0):.2f}% | {flavour} "
                        f"| {method} | {100 * (report.artifact_accuracy or 0):.2f}% | {report.accuracy_drop:.2f} "
                        f"| {report.comparison.min_cosine:.4f} | {'pass' if report.passed else 'FAIL'} |"
                    )
                    print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
