"""Quantization-aware fine-tuning, measured (issue 34 item 4): PTQ, PTQ + repairs and QAT per Q/DQ placement, a peer.

    # the peer: torchao's PT2E QAT in its own virtual environment (torch 2.13 CPU from the local wheel)
    python3.11 -m venv /work/venvs/torchao
    /work/venvs/torchao/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    /work/venvs/torchao/bin/pip install torchao==0.18.0 numpy
    .venv/bin/python benchmarks/qat.py --peer-python /work/venvs/torchao/bin/python          # ~40-60 min
    .venv/bin/python benchmarks/qat.py --quick --peer-python /work/venvs/torchao/bin/python  # smoke, minutes
    .venv/bin/python benchmarks/qat.py --render                                              # .md from .json

The task is harder than the shipped digits: cluttered, tilted digits (``benchmarks/qat_data.py``: 20 classes, the
digit and which way it leans, over a fragment of another digit, noise and random contrast; held-out images from
other source digits), and the network is deeper and narrower than the shipped one (``se_preact_resnet``, 12
pre-activation SE blocks, widths 8/16/32), trained here with ``sedeploy.train`` (cached under
benchmarks/.work/qat/, git-ignored). Per INT8 flavour (cpu: what ONNX Runtime runs in INT8 here; tensorrt:
reported for fidelity, ONNX Runtime's CPU kernels run its Q/DQ in float) and placement (SE float, SE
quantized, every tensor INT8): post-training INT8 (``calibrate`` + ``quantize_int8`` on 256 training images),
PTQ + the build's repair (``build_engine`` with ``repair=True``; every-tensor files may only be equalized), and
QAT (``train_qat`` + ``export_qat``). Every file is scored on the held-out images against the FP32 model's
logits (top-1, drop, min cosine); QAT files also against their own float twin (same fine-tuned weights).
cpu-flavour files are timed interleaved with FP32 (``sedeploy.measure.bench``, batch 8, ONNX Runtime) and
audited (``backends.audit``: the INT8 share of MACs that runs). The peer: torchao's PT2E QAT
(``benchmarks/qat_torchao.py``) in its own venv, same data, epochs, optimizer and learning rate.

Writes benchmarks/results/qat.{md,json} (``--quick``: benchmarks/.work/qat/quick.{md,json}).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from int8_repair import _commit, _outliers, load_average  # noqa: E402 - run stamps, the tests' outliers
from qat_data import write_cluttered_digits  # noqa: E402

from sedeploy.backends.audit import audit_onnxruntime  # noqa: E402
from sedeploy.backends.onnxruntime import create_session  # noqa: E402
from sedeploy.build import BuildOptions, build_engine  # noqa: E402
from sedeploy.compare import compare_logits  # noqa: E402
from sedeploy.data import load_image_set, preprocessing_for  # noqa: E402
from sedeploy.errors import SedeployError  # noqa: E402
from sedeploy.host import describe_machine  # noqa: E402
from sedeploy.measure.bench import bench  # noqa: E402
from sedeploy.measure.layers import int8_mac_share  # noqa: E402
from sedeploy.precision import Int8Recipe, calibrate, quantize_int8  # noqa: E402
from sedeploy.precision.equalize import equalize_file  # noqa: E402
from sedeploy.precision.placement import placement_of, recipe_placement  # noqa: E402

logger = logging.getLogger("qat_bench")

WORK = HERE / ".work" / "qat"
RESULTS = HERE / "results"
ARCH = "se_preact_resnet"
OPTIONS: dict[str, Any] = {"depths": (4, 4, 4), "widths": (8, 16, 32), "reduction": 8}
FP32_SETTINGS: dict[str, Any] = {
    "epochs": 30,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 0.0,
    "val_split": 0.1,
    "seed": 0,
}
QAT_SETTINGS: dict[str, Any] = {"lr": 1e-4, "batch_size": 64, "val_split": 0.1, "seed": 0, "augment": False}
"""``train --qat``'s learning rate; no augmentation for the short fine-tune (the peer gets none either)."""
FLAVOURS = ("cpu", "tensorrt")
PLACEMENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("SE float", {"quantize_se": False}),
    ("SE quantized", {"quantize_se": True}),
    ("every tensor INT8", {"every_tensor_int8": True}),
)
BATCH = 8
CASES = ("trained", "residual-x60", "residual-x200")
"""The trained model as it is, and with outlier channels in its residual stream (function-preserving), at the two
strengths benchmarks/int8_repair.py uses."""
DIAGNOSTIC_LR = 1e-3
"""A second, labelled QAT row (every tensor INT8) on the outlier cases: 10x ``train --qat``'s learning rate."""
RESIDUAL_CHANNELS = (3, 17, 29)
TARGET_PTQ_LOSS = 1.0
TARGET_QAT_DROP = 0.3
TARGET_QAT_EPOCHS = 3
SAME_SPEED = 0.9
"""A QAT file runs "at the same speed" as the PTQ file of its placement when its img/s is at least this share of
the PTQ file's in the same interleaved run (run-to-run spread on these shared cores is ~10-15%) and its audited
INT8 share is the same."""


def _slug(text: str) -> str:
    return text.lower().replace(" ", "-")


# --- the task and the FP32 model ---------------------------------------------------------------------------


@dataclasses.dataclass
class Setting:
    data: Path
    source: Path
    """The FP32 ONNX (exported from the trained checkpoint)."""
    checkpoint: Path
    heldout: np.ndarray
    labels: np.ndarray
    calibration: np.ndarray
    reference: np.ndarray
    """FP32 logits on the held-out images (ONNX Runtime)."""
    fp32: dict[str, Any]
    case: str = "trained"
    files: Path = WORK / "files"


def _key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def prepare(args: argparse.Namespace) -> Setting:
    """The cluttered digits and the FP32 model trained on them (both cached in WORK by their settings)."""
    from sedeploy.export import export_onnx
    from sedeploy.train import TrainConfig, train

    variants = (args.train_variants, args.heldout_variants)
    data = WORK / f"data-{variants[0]}x{variants[1]}"
    if not (data / "heldout").is_dir():
        shutil.rmtree(data, ignore_errors=True)
        write_cluttered_digits(data, train_variants=variants[0], heldout_variants=variants[1])
    settings = {**FP32_SETTINGS, "epochs": args.fp32_epochs}
    folder = WORK / f"fp32-{_key({'arch': ARCH, 'options': OPTIONS, 'data': variants, **settings})}"
    summary_path = folder / "fp32.json"
    if not summary_path.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        config = TrainConfig(arch=ARCH, img_size=(32, 32), in_chans=1, options=dict(OPTIONS), **settings)
        started = time.perf_counter()
        result = train(
            data / "train",
            config,
            folder,
            on_epoch=lambda m: logger.info(
                "fp32 epoch %d: val %.2f%% (%.1f s)", m.epoch, 100 * m.val_accuracy, m.seconds
            ),
        )
        seconds = time.perf_counter() - started
        export_onnx(ARCH, weights=result.checkpoint, output=folder / "model.onnx")
        best = result.history[result.best_epoch - 1]
        summary_path.write_text(
            json.dumps(
                {
                    "train_minutes": seconds / 60,
                    "epochs": len(result.history),
                    "best_epoch": result.best_epoch,
                    "val_accuracy": best.val_accuracy,
                    "settings": settings,
                },
                indent=1,
            ),
            encoding="utf-8",
        )
    source = folder / "model.onnx"
    preprocessing, channels = preprocessing_for(source)
    heldout = load_image_set(data / "heldout", preprocessing, channels)
    calibration = load_image_set(data / "calibration", preprocessing, channels)
    assert heldout.labels is not None
    images = np.ascontiguousarray(heldout.images, np.float32)
    reference = _logits(source, images, "all")
    fp32 = json.loads(summary_path.read_text(encoding="utf-8"))
    fp32["heldout_accuracy"] = float(np.mean(reference.argmax(1) == heldout.labels))
    fp32["heldout_images"] = len(images)
    fp32["train_images"] = sum(1 for _ in (data / "train").glob("*/*.png"))
    fp32["classes"] = int(reference.shape[1])
    return Setting(
        data,
        source,
        folder / "model.safetensors",
        images,
        heldout.labels,
        np.ascontiguousarray(calibration.images, np.float32),
        reference,
        fp32,
    )


def _logits(path: Path, images: np.ndarray, level: str) -> np.ndarray:
    session = create_session(path, ["CPUExecutionProvider"], optimization_level=level)
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + 128]})[0] for i in range(0, len(images), 128)]
    )


def score(setting: Setting, logits: np.ndarray, reference: np.ndarray | None = None) -> dict[str, Any]:
    """Top-1, drop against FP32 (points) and the cosine figures of ``logits`` against FP32 (or ``reference``)."""
    accuracy = float(np.mean(logits.argmax(1) == setting.labels))
    comparison = compare_logits(setting.reference if reference is None else reference, logits)
    return {
        "accuracy": accuracy,
        "drop_pt": 100 * (setting.fp32["heldout_accuracy"] - accuracy),
        "min_cosine": comparison.min_cosine,
        "mean_cosine": comparison.mean_cosine,
        "top1_agreement": comparison.top1_agreement,
    }


def evaluate(setting: Setting, path: Path, flavour: str) -> dict[str, Any]:
    """The file on the held-out images: cpu flavour as ONNX Runtime runs it (level all); tensorrt flavour with
    ONNX Runtime's rewrites off (the Q/DQ graph's own numerics, what TensorRT reads)."""
    figures = score(setting, _logits(path, setting.heldout, "all" if flavour == "cpu" else "disable"))
    figures["int8_mac_share"] = int8_mac_share(path)
    return figures


def _recipe(flavour: str, placement: dict[str, Any]) -> Int8Recipe:
    return Int8Recipe(flavour=flavour, **placement)


# --- the rows ------------------------------------------------------------------------------------------------


def ptq_row(setting: Setting, flavour: str, label: str, placement: dict[str, Any]) -> dict[str, Any]:
    recipe = _recipe(flavour, placement)
    output = setting.files / f"ptq-{flavour}-{_slug(label)}.onnx"
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ranges = calibrate(setting.source, setting.calibration, "input", recipe, "qat-bench-calibration")
    quantize_int8(setting.source, output, ranges, recipe)
    seconds = time.perf_counter() - started
    return {
        "case": setting.case,
        "flavour": flavour,
        "placement": label,
        "kind": "PTQ",
        "file": str(output),
        "seconds": seconds,
        "quantized_nodes": len(placement_of(onnx.load(str(output))).quantized_nodes),
        **evaluate(setting, output, flavour),
    }


def equalized_row(
    setting: Setting, flavour: str, label: str, placement: dict[str, Any], folder: Path
) -> dict[str, Any]:
    """Cross-layer equalization alone (the one repair an every-tensor file may take), from the library's pieces:
    the figures of the repair's first variant, shown where the build refused to publish any."""
    recipe = _recipe(flavour, placement)
    equalized, output = folder / "model.equalized.onnx", folder / f"model.equalized.int8-{flavour}.onnx"
    record = equalize_file(setting.source, equalized, setting.calibration[:64])
    ranges = calibrate(equalized, setting.calibration, "input", recipe, "qat-bench-calibration")
    quantize_int8(equalized, output, ranges, dataclasses.replace(recipe, equalize=True))
    return {"equalized": {"summary": record.summary(), **evaluate(setting, output, flavour)}}


def repair_row(setting: Setting, flavour: str, label: str, placement: dict[str, Any]) -> dict[str, Any]:
    """``build_engine`` INT8 with its repair (``BuildOptions.every_tensor_int8`` for every-tensor files: equalized
    only); where the build refuses, also the figures of equalization alone."""
    folder = setting.files / f"repair-{flavour}-{_slug(label)}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    source = Path(shutil.copy2(setting.source, folder / "model.onnx"))
    row: dict[str, Any] = {
        "case": setting.case,
        "flavour": flavour,
        "placement": label,
        "kind": "PTQ + repair",
    }
    started = time.perf_counter()
    try:
        built = build_engine(
            source,
            BuildOptions(
                precision="int8",
                backend="onnxruntime",
                target=flavour,
                calib_dir=setting.data / "calibration",
                repair=True,
                **placement,
            ),
            output=folder / f"model.int8-{flavour}.onnx",  # the precision file; the .ort.onnx beside it
        )
    except SedeployError as error:
        row.update(seconds=time.perf_counter() - started, refused=str(error).splitlines()[0])
        row.update(equalized_row(setting, flavour, label, placement, folder))
        return row
    manifest = json.loads(Path(f"{built.artifacts[0]}.manifest.json").read_text(encoding="utf-8"))
    repair = (manifest.get("recipe") or {}).get("repair") or {}
    row.update(
        file=str(built.artifacts[0]),
        seconds=time.perf_counter() - started,
        repair=repair.get("summary") or repair.get("status") or "no repair recorded",
        **evaluate(setting, built.artifacts[0], flavour),
    )
    return row


def qat_row(
    setting: Setting,
    flavour: str,
    label: str,
    placement: dict[str, Any],
    epochs: int,
    lr: float | None = None,
) -> dict[str, Any]:
    from sedeploy.training.loop import TrainConfig
    from sedeploy.training.qat import export_qat, train_qat

    recipe = _recipe(flavour, placement)
    folder = setting.files / f"qat-{flavour}-{_slug(label)}{'' if lr is None else f'-lr{lr:g}'}"
    shutil.rmtree(folder, ignore_errors=True)
    config = TrainConfig(arch=ARCH, epochs=epochs, **{**QAT_SETTINGS, **({} if lr is None else {"lr": lr})})
    result = train_qat(
        setting.source,
        setting.data / "train",
        folder,
        recipe,
        config,
        on_epoch=lambda m: logger.info(
            "QAT %s %s epoch %d: val %.2f%% (%.1f s)",
            flavour,
            label,
            m.epoch,
            100 * m.val_accuracy,
            m.seconds,
        ),
    )
    output = export_qat(folder, folder / f"model.int8-{flavour}.qat.onnx", folder / "model.qat-fp32.onnx")
    twin = _logits(folder / "model.qat-fp32.onnx", setting.heldout, "all")
    figures = evaluate(setting, output, flavour)
    logits = _logits(output, setting.heldout, "all" if flavour == "cpu" else "disable")
    history = [dataclasses.asdict(m) for m in result.history]
    best_seconds = sum(m["seconds"] for m in history[: result.best_epoch])
    ptq_placement = recipe_placement(setting.source, recipe)
    return {
        "case": setting.case,
        "flavour": flavour,
        "placement": label,
        "kind": f"QAT ({epochs} epoch{'s' if epochs > 1 else ''})"
        if lr is None
        else f"diagnostic: QAT lr {lr:g} ({epochs} epochs)",
        "file": str(output),
        "seconds": result.seconds,
        "fine_tune_minutes": result.seconds / 60,
        "best_epoch": result.best_epoch,
        "minutes_to_best_epoch": best_seconds / 60,
        "ptq_val_accuracy": result.ptq_val_accuracy,
        "val_accuracy_per_epoch": [m["val_accuracy"] for m in history],
        "quantizers": result.quantizers,
        "placement_equals_ptq": placement_of(onnx.load(str(output))) == ptq_placement,
        "vs_float_twin": score(setting, logits, twin),
        "float_twin_accuracy": float(np.mean(twin.argmax(1) == setting.labels)),
        **figures,
    }


def peer_row(setting: Setting, args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    """torchao's PT2E QAT (X86InductorQuantizer) in its own venv, on the very tensors sedeploy's QAT trains on."""
    import torch

    from sedeploy.models.checkpoint import build_model
    from sedeploy.training.loop import TrainConfig, load_data

    row: dict[str, Any] = {
        "case": setting.case,
        "flavour": "peer",
        "placement": "torchao PT2E (x86 inductor)",
        "kind": "peer QAT",
    }
    if not args.peer_python:
        row["refused"] = "not run: no --peer-python given"
        return row
    folder = setting.files / "peer-torchao"
    folder.mkdir(parents=True, exist_ok=True)
    preprocessing, channels = preprocessing_for(setting.source)
    config = TrainConfig(arch=ARCH, epochs=epochs, **QAT_SETTINGS)
    data = load_data(setting.data / "train", config, preprocessing, channels, False)
    np.savez(
        folder / "data.npz",
        train_images=data.train_images.numpy(),
        train_labels=data.train_labels.numpy(),
        val_images=data.val_images.numpy(),
        val_labels=data.val_labels.numpy(),
        heldout_images=setting.heldout,
    )
    model, _ = build_model(ARCH, setting.checkpoint, img_size=32)
    torch.save(model.state_dict(), folder / "fp32.pt")
    options = {**OPTIONS, "in_chans": 1, "num_classes": setting.reference.shape[1]}
    command = [
        args.peer_python,
        str(HERE / "qat_torchao.py"),
        "--state",
        str(folder / "fp32.pt"),
        "--options",
        json.dumps(options),
        "--data",
        str(folder / "data.npz"),
        "--epochs",
        str(epochs),
        "--lr",
        str(QAT_SETTINGS["lr"]),
        "--weight-decay",
        str(config.weight_decay),
        "--batch-size",
        str(QAT_SETTINGS["batch_size"]),
        "--time-batch",
        str(BATCH),
        "--train-threads",
        str(args.train_threads),
        "--out",
        str(folder / "logits.npz"),
    ]
    if args.quick:
        command += ["--time-seconds", "1"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.peer_timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        row["refused"] = f"{type(error).__name__}: {error}"
        return row
    if done.returncode != 0:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-3:]
        row["refused"] = f"exit {done.returncode}: " + " | ".join(tail)[:400]
        return row
    peer = json.loads(done.stdout.strip().splitlines()[-1])
    logits = np.load(folder / "logits.npz")
    row.update(
        seconds=peer["fine_tune_seconds"],
        fine_tune_minutes=peer["fine_tune_seconds"] / 60,
        peer=peer,
        peer_fp32_vs_ort=compare_logits(setting.reference, logits["fp32_logits"]).min_cosine,
        **score(setting, logits["int8_logits"]),
    )
    return row


# --- timing and audit ----------------------------------------------------------------------------------------


def time_and_audit(setting: Setting, rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Audit every cpu-flavour file (what ONNX Runtime runs in INT8) and time the distinct ones interleaved with
    FP32 at batch 8; identical files (same bytes) share one timing."""
    timed = [row for row in rows if row["flavour"] == "cpu" and row.get("file")]
    for row in timed:
        shares = audit_onnxruntime(row["file"], setting.source).shares()
        row["audit_int8_share"] = shares.get("int8", 0.0)
    by_hash: dict[str, str] = {}
    artifacts = [str(setting.source)]
    for row in timed:
        digest = hashlib.sha256(Path(row["file"]).read_bytes()).hexdigest()
        if digest not in by_hash:
            by_hash[digest] = row["file"]
            artifacts.append(row["file"])
        row["timed_as"] = by_hash[digest]
    report = bench(
        artifacts,
        [BATCH],
        duration=args.seconds * args.rounds,
        rounds=args.rounds,
        warmup=3,
        probe_seconds=0.3,
    )
    rates = {row.artifact: row.stats.images_per_s for row in report.rows}
    fp32_rate = rates[str(setting.source)]
    for row in timed:
        row["img_s"] = rates[row["timed_as"]]
        row["x_fp32"] = row["img_s"] / fp32_rate
    return {
        "fp32_img_s": fp32_rate,
        "distinct_files": len(artifacts),
        "settings": vars(args) | {"batch": BATCH},
    }


# --- the run ---------------------------------------------------------------------------------------------------


def outlier_setting(base: Setting, case: str) -> Setting:
    """The trained model with channels of its last stage's residual stream ``k`` times wider (``residual-x<k>``),
    readers compensating: the FP32 function is unchanged (checked), INT8 with per-tensor scales is not. The
    tests' own construction (``tests/precision/int8_outliers.py``, int8_repair's residual cases), which no
    equalization can reach: the kind of case the issue's every-tensor target is about."""
    k = float(case.removeprefix("residual-x"))
    folder = base.source.parent.with_name(f"{base.source.parent.name}-{case}")
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "model.onnx"
    blocks = tuple(f"layer{len(OPTIONS['depths'])}.{i}" for i in range(OPTIONS["depths"][-1]))
    rewritten = _outliers().residual_outlier(onnx.load(str(base.source)), blocks, RESIDUAL_CHANNELS, k)
    onnx.save_model(rewritten, str(source))
    reference = _logits(source, base.heldout, "all")
    fp32 = {
        **base.fp32,
        "heldout_accuracy": float(np.mean(reference.argmax(1) == base.labels)),
        "rewrite": f"channels {list(RESIDUAL_CHANNELS)} of the residual stream x{k:g} from {blocks[0]} "
        f"({', '.join(blocks)}), readers compensating",
        "function_preserved_max_abs_diff": float(np.abs(reference - base.reference).max()),
        "function_preserved_min_cosine": compare_logits(base.reference, reference).min_cosine,
    }
    return dataclasses.replace(
        base, source=source, reference=reference, fp32=fp32, case=case, files=WORK / "files" / case
    )


def case_rows(setting: Setting, args: argparse.Namespace) -> list[dict[str, Any]]:
    """PTQ, PTQ + repair and QAT for every flavour and placement of one case."""
    rows: list[dict[str, Any]] = []
    for flavour in args.flavours:
        placements: dict[str, Any] = {}
        for label, placement in PLACEMENTS:
            placements[label] = recipe_placement(setting.source, _recipe(flavour, placement))
            rows.append(ptq_row(setting, flavour, label, placement))
            logger.info("%s PTQ %s %s: %.2f%%", setting.case, flavour, label, 100 * rows[-1]["accuracy"])
        for label, placement in PLACEMENTS:
            rows.append(repair_row(setting, flavour, label, placement))
            logger.info(
                "%s repair %s %s: %s",
                setting.case,
                flavour,
                label,
                rows[-1].get("repair") or rows[-1].get("refused"),
            )
        for label, placement in PLACEMENTS:
            same = next(
                (
                    row
                    for row in rows
                    if row["flavour"] == flavour
                    and row["kind"].startswith("QAT")
                    and placements[row["placement"]] == placements[label]
                ),
                None,
            )
            if same is not None:  # the same Q/DQ edges: the same deterministic run, not trained twice
                rows.append({**same, "placement": label, "same_run_as": same["placement"]})
                continue
            rows.append(qat_row(setting, flavour, label, placement, args.qat_epochs))
            logger.info("%s QAT %s %s: %.2f%%", setting.case, flavour, label, 100 * rows[-1]["accuracy"])
        if (
            setting.case != "trained"
        ):  # is the miss the default learning rate? (not a setting the target judges)
            label, placement = PLACEMENTS[-1]
            rows.append(qat_row(setting, flavour, label, placement, args.qat_epochs, DIAGNOSTIC_LR))
            logger.info(
                "%s QAT lr %g %s: %.2f%%", setting.case, DIAGNOSTIC_LR, flavour, 100 * rows[-1]["accuracy"]
            )
    return rows


def run(args: argparse.Namespace, record: dict[str, Any]) -> None:
    base = prepare(args)
    logger.info("FP32: held-out %.2f%% (%s)", 100 * base.fp32["heldout_accuracy"], base.source)
    record["fp32"] = base.fp32
    record["task"] = {
        "data": "cluttered tilted digits (benchmarks/qat_data.py)",
        "train_variants": args.train_variants,
        "heldout_variants": args.heldout_variants,
        "arch": ARCH,
        "options": OPTIONS,
        "calibration_images": len(base.calibration),
    }
    kept = [row for row in record.get("rows", []) if row.get("case", "trained") not in args.cases]
    cases = record.setdefault("cases", {})
    for case in args.cases:
        started = time.perf_counter()
        setting = base if case == "trained" else outlier_setting(base, case)
        rows = case_rows(setting, args)
        if (
            case == "trained" and not args.no_peer
        ):  # the peer fine-tunes the PyTorch model, not a rewritten ONNX
            rows.append(peer_row(setting, args, args.qat_epochs))
            logger.info("peer: %s", rows[-1].get("accuracy", rows[-1].get("refused")))
        timing = time_and_audit(setting, rows, args) if not args.no_timing else None
        cases[case] = {
            "fp32": setting.fp32,
            "timing": timing,
            "placements_equal": {
                flavour: [
                    [a, b]
                    for i, (a, pa) in enumerate(PLACEMENTS)
                    for b, pb in PLACEMENTS[i + 1 :]
                    if recipe_placement(setting.source, _recipe(flavour, pa))
                    == recipe_placement(setting.source, _recipe(flavour, pb))
                ]
                for flavour in args.flavours
            },
            "minutes": (time.perf_counter() - started) / 60,
        }
        kept += rows
    record["rows"] = kept


def normalize(record: dict[str, Any]) -> dict[str, Any]:
    """A record written before cases existed (one case, ``trained``) in today's form."""
    if "rows" in record and "cases" not in record:
        for row in record["rows"]:
            row.setdefault("case", "trained")
        record["cases"] = {
            "trained": {
                "fp32": record.get("fp32"),
                "timing": record.pop("timing", None),
                "placements_equal": record.pop("placements_equal", {}),
                "minutes": record.pop("total_minutes", None),
            }
        }
    return record


# --- output ----------------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{scale * float(value):.{digits}f}{suffix}"


def _find(
    rows: list[dict[str, Any]], case: str, flavour: str, placement: str, kind: str
) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in rows
            if r.get("case", "trained") == case
            and r["flavour"] == flavour
            and r["placement"] == placement
            and r["kind"].startswith(kind)
        ),
        None,
    )


def target_checks(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = record.get("rows", [])
    checks = []
    for case, flavour in ((c, f) for c in record.get("cases", {}) for f in FLAVOURS):
        ptq = _find(rows, case, flavour, "every tensor INT8", "PTQ")
        qat = _find(rows, case, flavour, "every tensor INT8", "QAT")
        if ptq is None or qat is None or "accuracy" not in qat:
            continue
        target = f"{case}, {flavour} flavour, every tensor INT8: PTQ loses >= {TARGET_PTQ_LOSS:g} pt -> QAT drop <= {TARGET_QAT_DROP:g} pt in <= {TARGET_QAT_EPOCHS} epochs"
        evidence = (
            f"PTQ drop {_num(ptq['drop_pt'])} pt (min cosine {_num(ptq['min_cosine'], 4)}); QAT drop "
            f"{_num(qat['drop_pt'])} pt after {len(qat['val_accuracy_per_epoch'])} epoch(s) (best epoch "
            f"{qat['best_epoch']}, {_num(qat['fine_tune_minutes'], 1)} min)"
        )
        if ptq["drop_pt"] < TARGET_PTQ_LOSS:
            verdict = "n/a"
            evidence = (
                f"PTQ loses {_num(ptq['drop_pt'])} pt (< {TARGET_PTQ_LOSS:g}: not a target case). " + evidence
            )
        else:
            met = (
                qat["drop_pt"] <= TARGET_QAT_DROP and len(qat["val_accuracy_per_epoch"]) <= TARGET_QAT_EPOCHS
            )
            verdict = "met" if met else "MISSED"
        checks.append((target, verdict, evidence))
    for case, label in ((c, p) for c in record.get("cases", {}) for p, _ in PLACEMENTS):
        ptq, qat = _find(rows, case, "cpu", label, "PTQ"), _find(rows, case, "cpu", label, "QAT")
        if ptq is None or qat is None or "img_s" not in qat or "img_s" not in ptq:
            continue
        ratio = qat["img_s"] / ptq["img_s"]
        same_share = abs(qat["audit_int8_share"] - ptq["audit_int8_share"]) < 1e-9
        met = ratio >= SAME_SPEED and same_share
        checks.append(
            (
                f"{case}, cpu flavour, {label}: QAT artifact as fast as PTQ (>= {SAME_SPEED:.0%} of its img/s), same audited INT8 share",
                "met" if met else "MISSED",
                f"QAT {_num(qat['img_s'], 1)} vs PTQ {_num(ptq['img_s'], 1)} img/s at batch {BATCH} ({ratio:.2f}x); "
                f"INT8 share of MACs that runs: QAT {_num(qat['audit_int8_share'], 1, 100, '%')}, PTQ "
                f"{_num(ptq['audit_int8_share'], 1, 100, '%')}"
                + ("" if qat["timed_as"] != ptq["timed_as"] else " (byte-identical files: one timing)"),
            )
        )
    return checks


def _row_line(row: dict[str, Any]) -> str:
    if "refused" in row and "equalized" in row:
        eq = row["equalized"]
        return (
            f"| {row['flavour']} | {row['placement']} | {row['kind']} | ({_num(eq['accuracy'], 2, 100)}) "
            f"| ({_num(eq['drop_pt'])}) | ({_num(eq['min_cosine'], 4)}) | - | - | - "
            f"| {_num(eq['int8_mac_share'], 0, 100, '%')} | build refused, nothing published: {row['refused'][:240]}; "
            f"in brackets: equalization alone ({eq['summary']}), the repair's first variant |"
        )
    if "refused" in row:
        return f"| {row['flavour']} | {row['placement']} | {row['kind']} | refused: {row['refused'][:300]} | | | | | | | |"
    twin = row.get("vs_float_twin")
    share = _num(row.get("int8_mac_share"), 0, 100, "%")
    if row.get("audit_int8_share") is not None:
        share += f" / {_num(row['audit_int8_share'], 0, 100, '%')}"
    notes = []
    if row.get("repair"):
        notes.append(f"repair: {row['repair']}")
    if row.get("same_run_as"):
        notes.append(f"same placement as {row['same_run_as']}, node for node: the same run")
    if row.get("placement_equals_ptq") is not None:
        notes.append(
            f"{row['quantizers']} quantizers, placement = PTQ's: {'yes' if row['placement_equals_ptq'] else 'NO'}; "
            f"val {_num(row['ptq_val_accuracy'], 2, 100)}% at start -> "
            + " / ".join(_num(v, 2, 100) for v in row["val_accuracy_per_epoch"])
            + f"% per epoch, best {row['best_epoch']}"
        )
    if row.get("peer"):
        peer = row["peer"]
        speed = f"eager {_num(peer.get('eager_img_s'), 1)} img/s (FP32 eager {_num(peer.get('fp32_eager_img_s'), 1)})"
        if "compiled_img_s" in peer:
            speed += f", inductor + freezing {_num(peer['compiled_img_s'], 1)} img/s (compile {_num(peer['compile_seconds'], 0)} s)"
        if "compile_error" in peer:
            speed += f", torch.compile error: {peer['compile_error'][:120]}"
        notes.append(
            f"torch {peer['torch']}, torchao {peer['torchao']}; {speed}; not interleaved with the ORT rows"
        )
    return (
        f"| {row['flavour']} | {row['placement']} | {row['kind']} | {_num(row.get('accuracy'), 2, 100)} "
        f"| {_num(row.get('drop_pt'))} | {_num(row.get('min_cosine'), 4)} "
        f"| {_num(twin['min_cosine'], 4) if twin else '-'} | {_num(row.get('fine_tune_minutes'), 1)} "
        f"| {_num(row.get('img_s'), 0)} | {share} | {'; '.join(notes)} |"
    )


def render(record: dict[str, Any]) -> str:
    machine = record.get("machine", {})
    fp32 = record.get("fp32", {})
    task = record.get("task", {})
    lines = [
        "# Quantization-aware fine-tuning against PTQ and PTQ + repairs, per Q/DQ placement, and a peer (issue 34)",
        "",
        f"Machine: {machine.get('description', '?')}; ISA: {machine.get('isa', '?')}. "
        "Written by `benchmarks/qat.py`. The 2 cores are shared with other work: read speed as ratios within "
        "one interleaved run.",
        "",
        "Runs (load average = 1/5/15 min before -> after):",
        "",
    ]
    for run_ in record.get("runs", []):
        lines.append(
            f"- `{' '.join(run_.get('argv', [])) or '(defaults)'}` at {run_['started']}, commit {run_['commit']}: "
            f"{run_['load_average_before']} -> {run_.get('load_average_after', '?')}"
        )
    lines += [
        "",
        "Reproduce (from the repository root):",
        "",
        "```",
        "python3.11 -m venv /work/venvs/torchao",
        "/work/venvs/torchao/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "/work/venvs/torchao/bin/pip install torchao==0.18.0 numpy",
        ".venv/bin/python benchmarks/qat.py --peer-python /work/venvs/torchao/bin/python",
        ".venv/bin/python benchmarks/qat.py --render",
        "```",
        "",
        "## The task",
        "",
        f"{task.get('data', '-')}: 20 classes (digit x which way it leans, 6-30 degrees), {fp32.get('train_images', '-')} "
        f"training images ({task.get('train_variants', '-')} renderings of each of 1,348 source digits; 10% of them "
        f"for validation), {fp32.get('heldout_images', '-')} held-out images from 449 other source digits, "
        f"{task.get('calibration_images', '-')} calibration images from the training share. Model `{ARCH}` "
        f"{task.get('options', OPTIONS)}, in_chans 1, trained with `sedeploy.train` "
        f"({fp32.get('settings', FP32_SETTINGS)}) in {_num(fp32.get('train_minutes'), 1)} min: best epoch "
        f"{fp32.get('best_epoch', '-')}, val {_num(fp32.get('val_accuracy'), 2, 100)}%, held-out "
        f"**{_num(fp32.get('heldout_accuracy'), 2, 100)}%** (FP32 on ONNX Runtime, the reference of every row). "
        f"QAT: `train_qat` ({QAT_SETTINGS}) + `export_qat`; the peer gets the same tensors, epochs, AdamW, lr and batch.",
        "",
        "## Targets",
        "",
        "| target | verdict | evidence |",
        "|---|---|---|",
    ]
    for target, verdict, evidence in target_checks(record):
        lines.append(f"| {target} | **{verdict}** | {evidence} |")
    lines += [
        "",
        "## Rows",
        "",
        "Top-1 and drop on the held-out images against the case's FP32 model; min cosine of the logits against "
        "FP32's; QAT files also against their float twin (the same fine-tuned weights in FP32: what QAT's "
        "quantizers alone change). cpu flavour as ONNX Runtime runs it (level all); tensorrt flavour with ONNX "
        "Runtime's rewrites off (the Q/DQ graph's numerics; its INT8 runs on TensorRT, so it is not timed). img/s: "
        f"ONNX Runtime CPU, batch {BATCH}, 2 threads, interleaved with the case's FP32 through "
        "`sedeploy.measure.bench` (byte-identical files timed once). INT8 MACs: the share whose inputs pass Q/DQ "
        "in the file (`int8_mac_share`) / the share that runs INT8 on ONNX Runtime (`backends.audit`, cpu "
        "flavour). Fine-tune minutes: the whole `train_qat` call (calibration, PTQ start, epochs, evaluation), wall "
        "clock on the shared cores. `train_qat` keeps the best epoch by validation accuracy; the held-out figures "
        "are that epoch's. In this run epoch 0 (the PTQ start) could not be kept; since commit 0d2644e it competes "
        "and is kept when no epoch beats it, which changes no row here (every QAT run had a better epoch).",
    ]
    for case, info in record.get("cases", {}).items():
        case_fp32 = info.get("fp32") or fp32
        timing = info.get("timing") or {}
        title = "the trained model as it is" if case == "trained" else case_fp32.get("rewrite", case)
        lines += ["", f"### {case}: {title}", ""]
        if "function_preserved_max_abs_diff" in case_fp32:
            lines += [
                f"FP32 function preserved: logits differ from the trained model's by at most "
                f"{case_fp32['function_preserved_max_abs_diff']:.2e} (min cosine "
                f"{case_fp32['function_preserved_min_cosine']:.6f}). The peer fine-tunes the PyTorch model, so it has "
                "no row here.",
                "",
            ]
        lines += [
            "| flavour | placement | rows | top-1 % | drop pt | min cos vs FP32 | min cos vs float twin "
            "| fine-tune min | img/s b8 | INT8 MACs file / runs | notes |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| - | - | FP32 | {_num(case_fp32.get('heldout_accuracy'), 2, 100)} | 0.00 | 1.0000 | - | "
            f"{_num(case_fp32.get('train_minutes'), 1)} (training) | {_num(timing.get('fp32_img_s'), 0)} | 0% | |",
        ]
        lines += [_row_line(row) for row in record.get("rows", []) if row.get("case", "trained") == case]
    equal = (record.get("cases", {}).get("trained") or {}).get("placements_equal") or {}
    if any(equal.values()):
        lines += ["", "Placements that are the same Q/DQ edges, node for node (`recipe_placement`):", ""]
        for flavour, pairs in equal.items():
            for a, b in pairs:
                lines.append(f"- {flavour} flavour: {a} = {b}")
    if record.get("notes"):
        lines += ["", "## What the numbers say", "", *record["notes"]]
    return "\n".join(lines) + "\n"


def save(record: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 rendering per digit, short training"
    )
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    parser.add_argument("--peer-python", help="python of the venv with torchao (else no peer row)")
    parser.add_argument("--peer-timeout", type=float, default=1800.0)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--flavours", default=",".join(FLAVOURS))
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated; other cases' rows in the .json are kept"
    )
    parser.add_argument("--qat-epochs", type=int, default=TARGET_QAT_EPOCHS)
    parser.add_argument("--fp32-epochs", type=int, default=FP32_SETTINGS["epochs"])
    parser.add_argument("--train-variants", type=int, default=4)
    parser.add_argument("--heldout-variants", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per timing sample")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument(
        "--train-threads",
        type=int,
        default=1,
        help="PyTorch threads for training (1: on 2 shared cores, 2 threads slowed an epoch 45x beside a busy process)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.train_variants = args.heldout_variants = 1
        args.fp32_epochs, args.qat_epochs, args.rounds, args.seconds = 4, 1, 2, 0.5
    args.out = args.out or (WORK / "quick.md" if args.quick else RESULTS / "qat.md")
    args.flavours = [name for name in args.flavours.split(",") if name]
    args.cases = [name for name in args.cases.split(",") if name]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("sedeploy", "onnxruntime", "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    json_path = args.out.with_suffix(".json")
    record: dict[str, Any] = (
        normalize(json.loads(json_path.read_text(encoding="utf-8"))) if json_path.is_file() else {}
    )
    if not args.render:
        import torch

        torch.set_num_threads(args.train_threads)
        WORK.mkdir(parents=True, exist_ok=True)
        record.setdefault("runs", []).append(
            {
                "commit": _commit(),
                "argv": sys.argv[1:],
                "load_average_before": load_average(),
                "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "cases": args.cases,
            }
        )
        record["machine"] = describe_machine()
        run(args, record)
        record["runs"][-1]["load_average_after"] = load_average()
        save(record, args.out)
    args.out.write_text(render(record), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
