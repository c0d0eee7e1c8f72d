"""The training wing: the epoch loop, checkpoints and records, curves, and quantization-aware fine-tuning.

The package itself imports no PyTorch: it holds the choices ``train --help`` shows without it.
"""

SCHEDULES = ("cosine", "onecycle")
"""Learning-rate schedules: ``cosine`` (linear warm-up, then cosine decay to 0) or ``onecycle``."""
DEVICES = ("auto", "cpu", "cuda")
"""``auto`` is CUDA when torch sees a GPU, else the CPU."""
