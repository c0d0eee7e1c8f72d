"""The peer row of benchmarks/qat.py: torchao's PT2E quantization-aware training, run in torchao's own venv.

    python3.11 -m venv /work/venvs/torchao
    /work/venvs/torchao/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    /work/venvs/torchao/bin/pip install torchao==0.18.0 numpy

benchmarks/qat.py calls it with the FP32 state dict, the model's zoo options and the preprocessed images in one
``.npz`` (the same tensors sedeploy's QAT trains on, so both see identical inputs); it writes the held-out logits
of the converted INT8 model and prints one JSON line. The network class comes from sedeploy's zoo (the
repository on ``sys.path``: it needs only torch). X86InductorQuantizer with its QAT config (the x86 INT8
recipe of PyTorch 2 export), the same optimizer, learning rate, batches and epochs as sedeploy's QAT rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _logits(model: torch.nn.Module, images: np.ndarray, batch: int = 128) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate(
            [model(torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]
        )


def _rate(model: torch.nn.Module, images: np.ndarray, batch: int, seconds: float) -> float:
    """Images per second at ``batch`` (median of 5 timed slices of ``seconds`` / 5, after 3 warm-up calls)."""
    x = torch.from_numpy(images[:batch])
    with torch.no_grad():
        for _ in range(3):
            model(x)
        rates = []
        for _ in range(5):
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / 5:
                model(x)
                calls += 1
            rates.append(calls * batch / (time.perf_counter() - started))
    return float(np.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True, help="FP32 state dict (torch.save)")
    parser.add_argument("--options", required=True, help="the zoo model's options, JSON")
    parser.add_argument("--data", type=Path, required=True, help=".npz: train/val/heldout images and labels")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-batch", type=int, default=8)
    parser.add_argument("--time-seconds", type=float, default=3.0)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--train-threads", type=int, default=1, help="PyTorch threads while fine-tuning")
    parser.add_argument("--time-threads", type=int, default=2, help="PyTorch threads while timing")
    parser.add_argument("--out", type=Path, required=True, help=".npz for the held-out logits")
    args = parser.parse_args()

    import torchao
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    from sedeploy.models.preact_resnet import se_preact_resnet

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.train_threads)
    data = np.load(args.data)
    train_x, train_y = data["train_images"], data["train_labels"].astype(np.int64)
    val_x, val_y = data["val_images"], data["val_labels"]
    heldout_x = data["heldout_images"]
    model = se_preact_resnet(**json.loads(args.options))
    model.load_state_dict(torch.load(args.state, map_location="cpu"))
    model.eval()
    fp32_logits = _logits(model, heldout_x)
    example = (torch.from_numpy(train_x[:2]),)
    started = time.perf_counter()
    exported = torch.export.export(model, example).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    prepared = prepare_qat_pt2e(exported, quantizer)
    optimizer = torch.optim.AdamW(prepared.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed)
    history = []
    images, labels = torch.from_numpy(train_x), torch.from_numpy(train_y)
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.perf_counter()
        move_exported_model_to_train(prepared)
        for batch in torch.randperm(len(images), generator=generator).split(args.batch_size):
            if len(batch) < 2:
                continue
            loss = F.cross_entropy(prepared(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        move_exported_model_to_eval(prepared)
        val_accuracy = float((_logits(prepared, val_x).argmax(1) == val_y).mean())
        history.append(
            {"epoch": epoch, "val_accuracy": val_accuracy, "seconds": time.perf_counter() - epoch_started}
        )
    fine_tune_seconds = time.perf_counter() - started
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    int8_logits = _logits(converted, heldout_x)
    torch.set_num_threads(args.time_threads)
    result = {
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "threads": {"train": args.train_threads, "time": args.time_threads},
        "quantizer": "X86InductorQuantizer, get_default_x86_inductor_quantization_config(is_qat=True)",
        "fine_tune_seconds": fine_tune_seconds,
        "history": history,
        "eager_img_s": _rate(converted, heldout_x, args.time_batch, args.time_seconds),
        "fp32_eager_img_s": _rate(model, heldout_x, args.time_batch, args.time_seconds),
    }
    if not args.no_compile:  # PT2E INT8 runs fast only through inductor with freezing (FACTS: Speed on AMX)
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compile_started = time.perf_counter()
        try:
            compiled = torch.compile(converted)
            with torch.no_grad():
                compiled(torch.from_numpy(heldout_x[: args.time_batch]))
            result["compile_seconds"] = time.perf_counter() - compile_started
            result["compiled_img_s"] = _rate(compiled, heldout_x, args.time_batch, args.time_seconds)
            compiled_logits = _logits(compiled, heldout_x, args.time_batch)
            result["compiled_max_abs_diff"] = float(np.abs(compiled_logits - int8_logits).max())
        except Exception as error:  # a peer's compiler failing is its row's note, not the benchmark's end
            result["compile_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    np.savez(args.out, int8_logits=int8_logits, fp32_logits=fp32_logits)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
