"""The training wing: the epoch loop, checkpoints and records, curves, and quantization-aware fine-tuning."""
