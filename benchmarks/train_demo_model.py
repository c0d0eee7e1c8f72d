"""Rebuild the embedded example: scikit-learn's digits -> a small grayscale SE-ResNet in models/, images in calibration/.

    python benchmarks/train_demo_model.py            # writes models/digits_se_resnet/ and calibration/

Steps: write the 1,797 bundled 8x8 digits as 32x32 grayscale PNGs in ImageFolder
layout with a fixed split (seed 0: 449 held out, 1,348 for training); train
``se_preact_resnet`` on the training share with ``sedeploy.train`` (10% of it for
validation and best-epoch choice; the held-out images are never seen in
training); evaluate the best checkpoint once on the held-out images; copy the
weights, labels, training record, curves and held-out images into the model
folder and a few hundred training images into ``calibration/``; write both READMEs.
Needs scikit-learn (``pip install 'sedeploy[test]'``). Deterministic on the CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the digits image folders
import torch
from digits_images import write_digits_imagefolder

from sedeploy.artifacts.metadata import Preprocessing
from sedeploy.data import load_image_set
from sedeploy.info import model_info
from sedeploy.models.checkpoint import build_model
from sedeploy.models.registry import model_defaults
from sedeploy.train import (
    CHECKPOINT_NAME,
    CURVES_NAME,
    LABELS_NAME,
    RECORD_NAME,
    TrainConfig,
    train,
)

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "digits_se_resnet"
ARCH = "se_preact_resnet"
IMAGE_SIZE = 32
OPTIONS = {"depths": (2, 2, 2), "widths": (32, 64, 128), "reduction": 8}
SETTINGS = {"epochs": 30, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.05, "val_split": 0.1, "seed": 0}
CALIBRATION_COUNT = 300
REQUIRED_ACCURACY = 0.985


def heldout_accuracy(checkpoint: Path, heldout_dir: Path) -> tuple[float, int]:
    """Top-1 accuracy of the checkpoint on the held-out ImageFolder, through sedeploy's own preprocessing."""
    model, _ = build_model(ARCH, checkpoint, img_size=IMAGE_SIZE)
    defaults = model_defaults(model)
    assert defaults is not None
    image_set = load_image_set(heldout_dir, Preprocessing.from_defaults(defaults), 1)
    assert image_set.labels is not None
    with torch.no_grad():
        predicted = model(torch.from_numpy(image_set.images)).argmax(1).numpy()
    return float(np.mean(predicted == image_set.labels)), len(image_set.labels)


def model_card(record: dict, accuracy: float, heldout: int, seconds: float, command: str) -> str:
    """The model folder's README: data, how it was trained, figures, how to export it."""
    info = model_info(ARCH, img_size=(IMAGE_SIZE, IMAGE_SIZE), in_chans=1, num_classes=10, **OPTIONS)
    cx = info.complexity
    best = record["best"]
    options = ", ".join(f"{key}={value}" for key, value in OPTIONS.items())
    return f"""# {MODEL_NAME}: a small grayscale SE-ResNet for handwritten digits

sedeploy's embedded example: a real, trained SE-ResNet small enough to ship in the repository, so that
FP16 and INT8 fidelity can be judged on actual predictions (a randomly initialised network's logits are
nearly constant).

| | |
|---|---|
| architecture | `{ARCH}` ({options}, in_chans=1, num_classes=10) |
| input | 1x{IMAGE_SIZE}x{IMAGE_SIZE} grayscale; mean {record["preprocessing"]["mean"]}, std {record["preprocessing"]["std"]}, resize {record["preprocessing"]["resize"]} then center crop {record["preprocessing"]["crop"]} ({record["preprocessing"]["interpolation"]}) |
| parameters | {cx.params:,} ({cx.params / 1e6:.2f} M) |
| compute | {cx.gmacs:.4f} GMACs = {cx.gflops:.4f} GFLOPs per image (`sedeploy info`) |
| held-out accuracy | **{100 * accuracy:.2f}%** ({round(accuracy * heldout)} / {heldout} images in `heldout/`) |
| validation accuracy | {100 * best["val_accuracy"]:.2f}% (best epoch {record["best_epoch"]} of {len(record["history"])}) |
| training time | {seconds:.0f} s on 2 CPU cores |

## Data
scikit-learn's bundled handwritten digits (`sklearn.datasets.load_digits`: 1,797 8x8 images, 16 grey
levels, BSD-3-Clause), scaled to 0-255 and resized to 32x32 (bilinear), written as PNG. A fixed permutation
(numpy seed 0) puts 449 images in `heldout/` (ImageFolder: one folder per digit) and 1,348 in the training
share, of which 10% (seed 0) served for validation and best-epoch choice. The held-out images were never
used in training or model selection. `calibration/` at the repository root holds {CALIBRATION_COUNT} of the
training images.

## Training
`sedeploy.train`: AdamW (lr {SETTINGS["lr"]}, weight decay {SETTINGS["weight_decay"]}, none on biases and
BatchNorm), batch {SETTINGS["batch_size"]}, {SETTINGS["epochs"]} epochs, cosine schedule after a 5% warm-up, random
affine augmentation (scale 0.9-1.1, rotation +-10 degrees, shift up to 10%), no flips, seed {SETTINGS["seed"]}.
Loss and accuracy per epoch are in `model.json` and `curves.png`. Rebuild everything with:

    {command}

## Files
- `model.safetensors`: the weights, with sedeploy's arch/options record
- `labels.txt`: the class names `0`..`9`, one per line
- `model.json`: the training record (options, preprocessing, settings, every epoch's metrics)
- `curves.png`: loss and accuracy per epoch
- `heldout/`: the {heldout} held-out evaluation images

## Export

    sedeploy export {ARCH} --weights models/{MODEL_NAME}/model.safetensors --img-size {IMAGE_SIZE} \\
        --labels models/{MODEL_NAME}/labels.txt -o models/{MODEL_NAME}/model.onnx
"""


CALIBRATION_README = """# Calibration images for the embedded example

{count} grayscale 32x32 PNG images of handwritten digits, used to calibrate INT8 builds of
`models/{model}` (`sedeploy build-engine ... --int8` reads `calibration/` by default).

Source: scikit-learn's bundled handwritten digits dataset (`sklearn.datasets.load_digits`, a copy of the
test set of the UCI ML hand-written digits datasets, E. Alpaydin and C. Kaynak), distributed with
scikit-learn under the BSD-3-Clause licence. The 8x8 images were scaled to 0-255, resized to 32x32
(bilinear) and written as PNG by `benchmarks/train_demo_model.py`. They come from the training share only:
none is among the held-out images in `models/{model}/heldout/`. File names are the digits' indices in the
dataset.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=REPO, help="repository root to write models/ and calibration/"
    )
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    parser.add_argument("--progress", action="store_true", help="show a progress bar per epoch")
    args = parser.parse_args(argv)
    model_dir, calibration_dir = args.out / "models" / MODEL_NAME, args.out / "calibration"
    with tempfile.TemporaryDirectory(prefix="sedeploy-digits-") as scratch:
        root = Path(scratch)
        train_dir, heldout_dir, calibration_source = write_digits_imagefolder(
            root, calibration_count=CALIBRATION_COUNT, image_size=IMAGE_SIZE
        )
        assert calibration_source is not None
        config = TrainConfig(
            arch=ARCH,
            img_size=(IMAGE_SIZE, IMAGE_SIZE),
            in_chans=1,
            options=dict(OPTIONS),
            **{**SETTINGS, "epochs": args.epochs},
        )
        started = time.perf_counter()
        result = train(
            train_dir,
            config,
            root / "run",
            progress=args.progress,
            on_epoch=lambda m: print(
                f"epoch {m.epoch}: loss {m.train_loss:.4f}, val accuracy {100 * m.val_accuracy:.2f}%, {m.seconds:.1f} s",
                flush=True,
            ),
        )
        seconds = time.perf_counter() - started
        accuracy, heldout = heldout_accuracy(result.checkpoint, heldout_dir)
        print(f"held-out accuracy {100 * accuracy:.2f}% on {heldout} images; trained in {seconds:.0f} s")
        for folder in (model_dir, calibration_dir):
            if folder.exists():
                shutil.rmtree(folder)
        model_dir.mkdir(parents=True)
        for name in (CHECKPOINT_NAME, LABELS_NAME, RECORD_NAME, CURVES_NAME):
            shutil.copy2(result.record.parent / name, model_dir / name)
        shutil.copytree(heldout_dir, model_dir / "heldout")
        shutil.copytree(calibration_source, calibration_dir)
    record = json.loads((model_dir / RECORD_NAME).read_text())
    record["heldout"] = {"accuracy": accuracy, "images": heldout, "folder": "heldout"}
    for key in ("train_dir", "val_dir"):
        record["data"].pop(key, None)
    (model_dir / RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    command = "python benchmarks/train_demo_model.py" + (
        f" --epochs {args.epochs}" if args.epochs != SETTINGS["epochs"] else ""
    )
    (model_dir / "README.md").write_text(model_card(record, accuracy, heldout, seconds, command))
    (calibration_dir / "README.md").write_text(
        CALIBRATION_README.format(count=CALIBRATION_COUNT, model=MODEL_NAME)
    )
    if accuracy < REQUIRED_ACCURACY:
        print(
            f"held-out accuracy {100 * accuracy:.2f}% is below {100 * REQUIRED_ACCURACY:.1f}%",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
