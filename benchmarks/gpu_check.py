"""The GPU check (issue 32): what a GPU must prove about sedeploy's CUDA code, one verdict per check.

    benchmarks/gpu_check.sh OUT_DIR          the one command on a GPU machine (`timeout 300` around the run)
    python benchmarks/gpu_check.py --out DIR [--budget 240] [--only SECTION,...] [--memcheck]
    python benchmarks/gpu_check.py --out DIR --dry-run [--fake-fault FAULT]   on a CPU, the CUDA layer faked

Writes DIR/gpu_check.md (the verdict table first: every check PASS, FAIL or SKIP with its
threshold, value and reason), DIR/gpu_check.json (the same and every measured figure) and
DIR/gpu_check.log, rewritten after every section and on SIGTERM, so a run stopped by its time
limit keeps every section it finished. Exit 1 when any check FAILs (a GPU that cannot be seen
is a FAIL), else 0.

Sections, in order (``--only`` picks some; a section with too little of ``--budget`` left is
skipped, said so in its rows): machine; the CUDA memory package on cuda-python and on pycuda
(bytes through pinned upload, a graph replay and download; graph capture; the context after
``close()``; pinned vs pageable; copies hidden behind compute, sized after a warm-up); the
PyTorch-CUDA runner's parity against CPU FP32 per precision with the GPU tests' thresholds
(direct and replayed) and its graph counts; FP32/FP16/BF16 top-1 on the shipped digits model
and held-out digits (``benchmarks/data/digits_heldout.npz``: no scikit-learn needed); two caller
threads with different batch sizes and CUDA graphs on; end-to-end vs GPU-only throughput at
batch 32 with two caller threads; the GPU test file under pytest with a timeout; and, with
``--memcheck``, the lifetime scenario under compute-sanitizer (at most 120 s, its process group
killed on timeout, PyTorch's caching allocator on so graphs are exercised).

``--dry-run`` replaces the GPU with the recording fakes of ``tests/backends/cuda_fakes.py`` (a
fake cuda-python driver whose copies move real bytes; a fake ``torch.cuda`` under the real
executor) and runs the same sections on small models: timings are SKIP there, everything else
is judged. ``--fake-fault`` breaks the fake on purpose (``corrupt-copy``, ``stale-graph``,
``no-capture``, ``hang:SECTION``) so the tests can see a check fail and a run be interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform as host_platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
DEFAULT_BUDGET_S = 240.0
"""Seconds the sections may take; ``gpu_check.sh`` stops the run at 300 s, so a rerun fits in 15 minutes."""
MEMCHECK_TIMEOUT_S = 120.0
PYTEST_TIMEOUT_S = 150.0
GPU_TEST_FILES = ("tests/backends/test_tensorrt_gpu.py",)
"""The GPU tests pytest runs: the cuda_memory round trips, the PyTorch-CUDA runner and TensorRT (which skips
without TensorRT). Named one by one: collecting all of tests/backends would import the CLI's tests and click."""
DIGITS_DATA = REPO / "benchmarks" / "data" / "digits_heldout.npz"
DIGITS_MODEL = REPO / "models" / "digits_se_resnet" / "model.safetensors"
DIGITS_MIN_TOP1 = 0.99
"""The shipped digits model scores 99.11% (445 of 449) on these held-out images in FP32 (its model card)."""
PRECISIONS = ("fp32", "fp16", "bf16")
PARITY_MODEL = ("se_resnet18", {"num_classes": 10, "img_size": 64}, 64, 16)
"""The GPU tests' model: architecture, options, image size, max batch (tests/backends/test_tensorrt_gpu.py)."""
THREADS_TOLERANCE = 1e-4
"""Two threads' outputs against one thread's, as the GPU test allows."""
MIN_PINNED_OVER_PAGEABLE = 1.5
MIN_COPY_HIDDEN = 0.80
MIN_E2E_OVER_GPU_ONLY = 0.90
FAULTS = ("corrupt-copy", "stale-graph", "no-capture")
TINY = {"depths": (1, 1), "widths": (16, 32), "reduction": 4}
"""A dry run's model: the same runner code on a network a CPU runs in milliseconds."""

logger = logging.getLogger("gpu_check")


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: the running section stops, what finished is written, the run exits 1."""


# Checks, sections and the report.


@dataclasses.dataclass
class Check:
    """One row of the verdict table."""

    name: str
    threshold: str
    verdict: str = SKIP
    value: str = ""
    reason: str = "not run"
    decided: bool = False


@dataclasses.dataclass(frozen=True)
class Section:
    """A group of checks run together; ``need_s``: about what it takes on a GPU (skipped with less left)."""

    name: str
    title: str
    checks: tuple[tuple[str, str], ...]
    need_s: float
    run: Callable[[Run], dict[str, Any]]


class Report:
    """The verdicts and figures so far; :meth:`write` rewrites gpu_check.md and gpu_check.json atomically."""

    def __init__(self, out: Path, sections: list[Section], dry_run: bool, budget: float) -> None:
        self.out = out
        self.dry_run = dry_run
        self.budget = budget
        self.started = time.time()
        self.checks: dict[str, Check] = {}
        self.sections: dict[str, dict[str, Any]] = {}
        self.machine: dict[str, Any] = {}
        self.status = "running"
        for section in sections:
            self.sections[section.name] = {
                "title": section.title,
                "status": "pending",
                "seconds": None,
                "data": {},
            }
            for name, threshold in section.checks:
                self.checks[name] = Check(name, threshold)

    def set(self, name: str, verdict: str, value: Any = "", reason: str = "") -> None:
        check = self.checks[name]
        check.verdict, check.value, check.reason, check.decided = verdict, _text(value), reason, True
        logger.info("%s %s %s%s", verdict, name, check.value, f" ({reason})" if reason else "")

    def judge(self, name: str, ok: bool, value: Any, reason_if_failed: str = "", reason: str = "") -> None:
        """PASS or FAIL on ``ok``; in a dry run a timing is SKIP (a fake GPU's times mean nothing)."""
        self.set(name, PASS if ok else FAIL, value, reason if ok else (reason_if_failed or reason))

    def timing(self, name: str, ok: bool, value: Any, reason_if_failed: str = "") -> None:
        if self.dry_run:
            self.set(name, SKIP, value, "dry run: a fake GPU's timings mean nothing (the code path ran)")
        else:
            self.judge(name, ok, value, reason_if_failed)

    def undecided(self, section: Section, verdict: str, reason: str) -> None:
        for name, _ in section.checks:
            if not self.checks[name].decided:
                self.set(name, verdict, "", reason)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks.values() if check.verdict == FAIL]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": FAIL if self.failed else PASS,
            "status": self.status,
            "dry_run": self.dry_run,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started)),
            "elapsed_s": round(time.time() - self.started, 1),
            "budget_s": self.budget,
            "machine": self.machine,
            "checks": [
                {key: value for key, value in dataclasses.asdict(check).items() if key != "decided"}
                for check in self.checks.values()
            ],
            "sections": self.sections,
        }

    def to_markdown(self) -> str:
        counts = {
            verdict: sum(c.verdict == verdict for c in self.checks.values()) for verdict in (PASS, FAIL, SKIP)
        }
        title = "DRY RUN on a fake GPU: " if self.dry_run else ""
        verdict = f"FAIL ({counts[FAIL]} failed)" if counts[FAIL] else "PASS"
        lines = [
            f"# GPU check: {title}{verdict}, {counts[PASS]} pass, {counts[SKIP]} skip ({self.status})",
            "",
            "| check | verdict | threshold | value | reason |",
            "|---|---|---|---|---|",
        ]
        for check in self.checks.values():
            cells = [check.name, f"**{check.verdict}**" if check.verdict == FAIL else check.verdict]
            cells += [check.threshold, check.value, check.reason]
            lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
        host = self.machine
        lines += [
            "",
            f"{host.get('gpu', 'no GPU')} (compute capability {host.get('compute_capability')}, driver "
            f"{host.get('driver')}); PyTorch {host.get('torch')} (CUDA {host.get('torch_cuda')}); cuda-bindings "
            f"{host.get('cuda-bindings')}; pycuda {host.get('pycuda')}; TensorRT {host.get('tensorrt')}; Python "
            f"{host.get('python')}; host CPU {host.get('cpu')} (ISA {', '.join(host.get('cpu_isa') or []) or '-'}). "
            f"Budget {self.budget:.0f} s, ran {time.time() - self.started:.0f} s. Written by `benchmarks/gpu_check.py`"
            f"{' --dry-run' if self.dry_run else ''}; figures in gpu_check.json, the run in gpu_check.log.",
            "",
            "| section | status | seconds |",
            "|---|---|---|",
        ]
        for name, section in self.sections.items():
            lines.append(
                f"| {name}: {section['title']} | {section['status']} | {_text(section['seconds'])} |"
            )
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.out / "gpu_check.json", json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        _write_atomic(self.out / "gpu_check.md", self.to_markdown())


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so a kill never leaves half a report."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


class Clock:
    def __init__(self, budget: float) -> None:
        self.started = time.perf_counter()
        self.budget = budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)


@dataclasses.dataclass
class Run:
    """What a section gets: the report, the platform (real GPU or fake), the clock and the options."""

    report: Report
    platform: Any
    clock: Clock
    args: argparse.Namespace


# Child processes: each in its own process group, killed whole on timeout or interrupt.

_children: set[subprocess.Popen[str]] = set()


def run_in_group(
    command: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int | None, str]:
    """Run ``command`` in a new session; its exit code (None after a timeout, its group killed) and output."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
        cwd=cwd,
    )
    _children.add(process)
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        _kill_group(process)
        output, _ = process.communicate()
        return None, output
    except BaseException:
        _kill_group(process)
        raise
    finally:
        _children.discard(process)


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


# The platforms: a real CUDA machine, or the recording fakes.


class CudaPlatform:
    """The real GPU: PyTorch's CUDA and cuda-python (or pycuda) through sedeploy."""

    dry_run = False
    copy_bytes = 64 * 2**20
    overlap_chunk = 32 * 3 * 224 * 224 * 4
    """One batch-32 SE-ResNet-50 input (19 MB): the copy the runner overlaps with compute."""
    repeats = 7
    digits_count: int | None = None
    parity_model: tuple[str, dict[str, Any], int, int] = PARITY_MODEL
    thread_sizes: ClassVar[dict[int, list[int]]] = {0: [1, 7, 3, 16], 1: [16, 2, 9, 5]}
    """Batch sizes each caller thread runs, three times over (the GPU test's)."""
    throughput_model: tuple[str, dict[str, Any], int, int] = ("se_resnet50", {}, 224, 32)
    throughput_calls = 30
    """Calls per caller thread in the end-to-end measurement."""

    def __init__(self, faults: set[str]) -> None:
        self.faults = faults

    def close(self) -> None:
        """Undo what the platform installed (nothing on a real GPU)."""

    def gpu_visible(self) -> tuple[bool, str]:
        import torch

        if not torch.cuda.is_available():
            return (
                False,
                f"PyTorch {torch.__version__} sees no CUDA device (torch.version.cuda {torch.version.cuda})",
            )
        return True, f"{torch.cuda.device_count()} device(s), {torch.cuda.get_device_name(0)}"

    def describe(self) -> dict[str, Any]:
        import torch

        info: dict[str, Any] = {"python": host_platform.python_version(), "torch": torch.__version__}
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["compute_capability"] = ".".join(str(part) for part in torch.cuda.get_device_capability(0))
            info["tf32"] = {
                "matmul": torch.backends.cuda.matmul.allow_tf32,
                "cudnn": torch.backends.cudnn.allow_tf32,
            }
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
        return info

    def use_implementation(self, name: str) -> Any:
        """Make ``name`` (``cuda-python`` or ``pycuda``) the implementation new resources use; returns it."""
        from sedeploy.backends import cuda_memory

        os.environ[cuda_memory.ENV_VAR] = name
        return cuda_memory.api(name)

    def implementation_missing(self, name: str) -> str | None:
        from sedeploy.backends import cuda_memory

        if name == "cuda-python":
            return None if cuda_memory.cuda_python_importable() else "cuda-python is not installed"
        if importlib.util.find_spec("pycuda") is None:
            return "pycuda is not installed (it builds from source with nvcc); cuda-python is what ran"
        return None

    def prepare_context(self) -> None:
        """Make PyTorch's context current first, as it is in a real process beside a runner."""
        import torch

        torch.zeros(1, device="cuda")

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize()

    def release(self) -> None:
        import torch

        torch.cuda.empty_cache()

    def compute_on(self, stream: Any) -> Callable[[int], None]:
        """``work(steps)`` queues ``steps`` 4096^2 matmuls on the cuda_memory ``stream`` (PyTorch on it)."""
        import torch

        external = torch.cuda.ExternalStream(stream.handle)
        matrix = torch.randn(4096, 4096, device="cuda")

        def work(steps: int) -> None:
            with torch.cuda.stream(external):
                value = matrix
                for _ in range(steps):
                    value = torch.mm(value, matrix) * 1e-3

        return work

    def runner(
        self,
        model: Any,
        *,
        precision: str,
        max_batch: int,
        cuda_graph: bool,
        slots: int = 2,
        metadata: Any = None,
    ) -> Any:
        """A PyTorch-CUDA runner; ``metadata`` of an earlier runner of the same model skips its complexity count."""
        from sedeploy.backends.torch import TorchRunner

        return TorchRunner(
            model,
            device="cuda",
            precision=precision,
            max_batch=max_batch,
            cuda_graph=cuda_graph,
            slots=slots,
            metadata=metadata,
        )

    def weights_runner(self, path: Path, *, precision: str) -> Any:
        from sedeploy.backends.torch import TorchRunner

        return TorchRunner(path, device="cuda", precision=precision)

    def sanitizer(self) -> list[str] | None:
        found = shutil.which("compute-sanitizer") or next(
            (str(path) for path in sorted(Path("/usr/local").glob("cuda*/bin/compute-sanitizer"))), None
        )
        if found is None:
            return None
        return [found, "--tool", "memcheck", "--leak-check", "no", "--error-exitcode", "3"]


class FakePlatform(CudaPlatform):
    """No GPU: the fake cuda-python driver and a fake ``torch.cuda`` (tests/backends/cuda_fakes.py), small sizes.

    The fake computes every precision in FP32 on the CPU (its parity is exact); timings are judged SKIP.
    """

    dry_run = True
    copy_bytes = 2**20
    overlap_chunk = 2**16
    repeats = 3
    digits_count = 32
    parity_model = ("se_preact_resnet", {**TINY, "num_classes": 10, "img_size": 16}, 16, 4)
    thread_sizes: ClassVar[dict[int, list[int]]] = {0: [1, 3, 4], 1: [4, 2, 1]}
    throughput_model = ("se_preact_resnet", {**TINY, "num_classes": 10, "img_size": 16}, 16, 4)
    throughput_calls = 2

    def __init__(self, faults: set[str]) -> None:
        super().__init__(faults)
        import pytest
        import torch

        # One CPU thread: the fake's tiny convolutions stall for tens of ms in a pool's hand-offs on a busy CPU.
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

        fakes = str(REPO / "tests" / "backends")
        if fakes not in sys.path:
            sys.path.insert(0, fakes)
        self.fakes = importlib.import_module("cuda_fakes")
        self.patches = pytest.MonkeyPatch()
        self.driver = self.fakes.install_cuda_python(self.patches)
        self.driver.corrupt_uploads = "corrupt-copy" in faults
        self.ops: list[Any] = []

    def close(self) -> None:
        import torch

        self.patches.undo()
        torch.set_num_threads(self.threads)

    def gpu_visible(self) -> tuple[bool, str]:
        return True, "a fake GPU (dry run)"

    def describe(self) -> dict[str, Any]:
        import torch

        return {
            "python": host_platform.python_version(),
            "torch": torch.__version__,
            "gpu": f"{self.driver.gpu} (fake, dry run)",
            "compute_capability": ".".join(str(part) for part in self.driver.cc),
        }

    def use_implementation(self, name: str) -> Any:
        from sedeploy.backends import cuda_memory

        self.patches.setenv(cuda_memory.ENV_VAR, name)
        return cuda_memory.api(name)

    def implementation_missing(self, name: str) -> str | None:
        return (
            None if name == "cuda-python" else "pycuda is not installed (dry run: only cuda-python is faked)"
        )

    def prepare_context(self) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def release(self) -> None:
        return None

    def compute_on(self, stream: Any) -> Callable[[int], None]:
        matrix = np.ones((64, 64), dtype=np.float32)

        def work(steps: int) -> None:
            value = matrix
            for _ in range(steps):
                value = value @ matrix * 1e-3

        return work

    def _fake_ops(self) -> Any:
        ops = self.fakes.FakeTorchOps(
            capture_works="no-capture" not in self.faults, stale_graphs="stale-graph" in self.faults
        )
        self.ops.append(ops)
        return ops

    def runner(
        self,
        model: Any,
        *,
        precision: str,
        max_batch: int,
        cuda_graph: bool,
        slots: int = 2,
        metadata: Any = None,
    ) -> Any:
        from sedeploy.backends.torch import TorchRunner

        runner = TorchRunner(model, device="cpu", max_batch=max_batch, metadata=metadata)
        runner._attach_executor(self._fake_ops(), slots=slots, cuda_graph=cuda_graph)
        return runner

    def weights_runner(self, path: Path, *, precision: str) -> Any:
        from sedeploy.backends.torch import TorchRunner

        runner = TorchRunner(path, device="cpu")
        runner._attach_executor(self._fake_ops(), slots=2, cuda_graph=False)
        return runner

    def sanitizer(self) -> list[str] | None:
        return []  # no compute-sanitizer on a CPU: the scenario runs bare on the fakes


# Sections.


def machine_section(run: Run) -> dict[str, Any]:
    report = run.report
    try:
        visible, why = run.platform.gpu_visible()
    except Exception as error:  # torch missing or broken: the one line says which
        visible, why = False, f"{type(error).__name__}: {error}"
    report.judge("gpu_visible", visible, why, why)
    try:
        report.machine.update(run.platform.describe())
    except Exception as error:
        report.machine["error"] = f"{type(error).__name__}: {error}"
    report.machine.update(_versions())
    problems = []
    for module in ("sedeploy.backends.torch", "sedeploy.backends.cuda_memory", "sedeploy.compare"):
        try:
            importlib.import_module(module)
        except ImportError as error:
            problems.append(f"{module}: {error.name or error}")
    report.judge(
        "sedeploy_imports",
        not problems,
        "sedeploy.backends.torch, cuda_memory, compare",
        "; ".join(problems) + " (put the missing wheels in benchmarks/wheels/ and run gpu_check.sh)",
    )
    return {"gpu": why}


def _versions() -> dict[str, Any]:
    versions: dict[str, Any] = {}
    for package in ("cuda-bindings", "cuda-python", "pycuda", "tensorrt", "cupy-cuda13x", "onnx", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:
        from sedeploy.host import cpu_features, cpu_model

        features = set(cpu_features())
        versions["cpu"] = cpu_model()
        isa = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
        versions["cpu_isa"] = sorted(features & isa)
    except Exception as error:
        versions["cpu"] = f"unknown ({type(error).__name__})"
    return versions


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def memory_section(name: str, prefix: str) -> Callable[[Run], dict[str, Any]]:
    """The CUDA memory package on implementation ``name``: bytes, graphs, context, bandwidth, overlap."""

    def section(run: Run) -> dict[str, Any]:
        from sedeploy.backends import cuda_memory

        report, platform = run.report, run.platform
        missing = platform.implementation_missing(name)
        if missing is not None:
            for check in SECTION_CHECKS[prefix]:
                report.set(f"{prefix}.{check[0]}", SKIP, "", missing)
            return {"skipped": missing}
        previous = os.environ.get(cuda_memory.ENV_VAR)
        cuda = platform.use_implementation(name)
        try:
            return _memory_checks(run, cuda, prefix)
        finally:
            if previous is None:
                os.environ.pop(cuda_memory.ENV_VAR, None)
            else:
                os.environ[cuda_memory.ENV_VAR] = previous

    return section


def _memory_checks(run: Run, cuda: Any, prefix: str) -> dict[str, Any]:
    from sedeploy.backends import cuda_memory

    report, platform = run.report, run.platform
    data: dict[str, Any] = {"implementation": cuda.name}
    rng = np.random.default_rng(0)
    nbytes = platform.copy_bytes
    platform.prepare_context()
    before = cuda.current_context()
    context = cuda_memory.CudaContext(0)
    with context:
        layouts = [
            cuda_memory.TensorLayout("x", "uint8", (nbytes,), is_input=True),
            cuda_memory.TensorLayout("y", "uint8", (nbytes,), is_input=False),
        ]
        buffers = cuda_memory.BufferSet(layouts)
        try:
            host_x, device_x, stream = buffers.host["x"].array, buffers.device["x"], buffers.stream

            written = rng.integers(0, 256, nbytes, dtype=np.uint8)
            host_x[...] = written
            buffers.upload("x", nbytes)
            stream.synchronize()
            host_x[...] = 0
            buffers.download("x", nbytes)
            stream.synchronize()
            wrong = int(np.count_nonzero(host_x != written))
            report.judge(
                f"{prefix}.pinned_round_trip",
                wrong == 0,
                f"{nbytes / 2**20:.0f} MiB, {wrong} bytes differ",
                "the bytes read back are not the bytes written",
            )
            if prefix == "cuda_python":
                data["graph"] = _graph_checks(report, cuda, prefix, buffers, rng)
            data["bandwidth"] = _bandwidth_check(run, prefix, buffers, written)
            if prefix == "cuda_python":
                data["overlap"] = _overlap_check(run, prefix, host_x, device_x, stream)
        finally:
            buffers.free()
    context.free()
    after = cuda.current_context()
    report.judge(
        f"{prefix}.context_after_close",
        after == before,
        f"{before:#x} -> {after:#x}",
        "close() left the thread's context stack changed",
    )
    return data


def _graph_checks(
    report: Report, cuda: Any, prefix: str, buffers: Any, rng: np.random.Generator
) -> dict[str, Any]:
    from sedeploy.backends import cuda_memory

    reason = cuda.graph_unsupported()
    if reason is not None:
        report.set(f"{prefix}.graph_captured", SKIP, "", reason)
        report.set(f"{prefix}.graph_replay_bytes", SKIP, "", reason)
        return {"skipped": reason}
    small = min(2**20, buffers.host["x"].nbytes)
    host_x, host_y = buffers.host["x"].array[:small], buffers.host["y"].array[:small]
    device_x, stream = buffers.device["x"], buffers.stream

    def enqueue() -> None:
        cuda_memory.copy_to_device_async(device_x, host_x, stream)
        cuda_memory.copy_to_host_async(host_y, device_x, stream)

    graph = cuda_memory.CudaGraph.capture(stream, enqueue)
    report.judge(
        f"{prefix}.graph_captured", graph is not None, int(graph is not None), "capture returned no graph"
    )
    if graph is None:
        report.set(f"{prefix}.graph_replay_bytes", FAIL, "", "no graph to replay")
        return {"captured": False}
    try:
        wrong = []
        for _ in range(3):
            written = rng.integers(0, 256, small, dtype=np.uint8)
            host_x[...] = written
            host_y[...] = 0
            graph.launch(stream)
            stream.synchronize()
            wrong.append(int(np.count_nonzero(host_y != written)))
        report.judge(
            f"{prefix}.graph_replay_bytes",
            not any(wrong),
            f"3 replays of {small // 1024} KiB up and back, bytes differing {wrong}",
            "a replay did not move the bytes written before it",
        )

        def eager() -> None:
            enqueue()
            stream.synchronize()

        def replay() -> None:
            graph.launch(stream)
            stream.synchronize()

        eager_s = _median([_timed(eager) for _ in range(5)])
        replay_s = _median([_timed(replay) for _ in range(5)])
        return {"captured": True, "eager_us": eager_s * 1e6, "replay_us": replay_s * 1e6}
    finally:
        graph.free()


def _timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _bandwidth_check(run: Run, prefix: str, buffers: Any, written: np.ndarray) -> dict[str, Any]:
    from sedeploy.backends import cuda_memory

    device_x, stream = buffers.device["x"], buffers.stream
    pinned, pageable = buffers.host["x"].array, written.copy()

    def seconds(host: np.ndarray) -> float:
        def once() -> None:
            cuda_memory.copy_to_device_async(device_x, host, stream)
            stream.synchronize()

        once()  # warm-up
        return _median([_timed(once) for _ in range(run.platform.repeats)])

    pinned_s, pageable_s = seconds(pinned), seconds(pageable)
    ratio = pageable_s / pinned_s if pinned_s > 0 else 0.0
    gb_s = {"pinned": pinned.nbytes / pinned_s / 1e9, "pageable": pageable.nbytes / pageable_s / 1e9}
    run.report.timing(
        f"{prefix}.pinned_vs_pageable",
        ratio >= MIN_PINNED_OVER_PAGEABLE,
        f"{ratio:.2f}x ({gb_s['pinned']:.1f} vs {gb_s['pageable']:.1f} GB/s)",
        "pinned host memory copies no faster than pageable",
    )
    return {"gb_s": gb_s, "ratio": ratio}


def _overlap_check(run: Run, prefix: str, host: np.ndarray, device: Any, stream: Any) -> dict[str, Any]:
    """Copies on one stream against matmuls on another, the matmul count sized after both were warmed up."""
    from sedeploy.backends import cuda_memory

    platform = run.platform
    chunk = host[: min(platform.overlap_chunk, host.nbytes)]
    compute_stream = cuda_memory.Stream()
    try:
        work = platform.compute_on(compute_stream)

        def copies() -> None:
            for _ in range(20):
                cuda_memory.copy_to_device_async(device, chunk, stream)

        def timed(job: Callable[[], None]) -> float:
            platform.synchronize()
            started = time.perf_counter()
            job()
            stream.synchronize()
            compute_stream.synchronize()
            return time.perf_counter() - started

        for _ in range(2):  # warm-up: the first matmul initialises cuBLAS, the first copies the DMA path
            timed(copies)
            timed(lambda: work(3))
        copy_s = _median([timed(copies) for _ in range(platform.repeats)])
        step_s = _median([timed(lambda: work(5)) for _ in range(3)]) / 5
        steps = max(1, round(copy_s / step_s)) if step_s > 0 else 1
        compute_s = _median([timed(lambda: work(steps)) for _ in range(platform.repeats)])

        def both() -> None:
            work(steps)
            copies()

        both_s = _median([timed(both) for _ in range(platform.repeats)])
    finally:
        compute_stream.free()
    shorter = min(copy_s, compute_s)
    hidden = max(0.0, min(1.0, (copy_s + compute_s - both_s) / shorter)) if shorter > 0 else 0.0
    run.report.timing(
        f"{prefix}.copy_overlap",
        hidden >= MIN_COPY_HIDDEN,
        f"{hidden:.2f} hidden (copies {copy_s * 1e3:.2f} ms, {steps} matmuls {compute_s * 1e3:.2f} ms, both "
        f"{both_s * 1e3:.2f} ms)",
        "copies on one stream and compute on another ran mostly one after the other",
    )
    return {"copy_ms": copy_s * 1e3, "compute_ms": compute_s * 1e3, "both_ms": both_s * 1e3, "hidden": hidden}


def _images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)


def _model(arch: str, options: dict[str, Any], state: dict[str, Any] | None = None) -> Any:
    import torch

    from sedeploy import create_model

    torch.manual_seed(0)
    model = create_model(arch, **options).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def _graph_counts(runner: Any) -> tuple[int, int]:
    executor = runner._executor
    slots = executor.slots if executor is not None else []
    return sum(slot.graph.captures for slot in slots), sum(slot.graph.replays for slot in slots)


def parity_section(run: Run) -> dict[str, Any]:
    """The runner against CPU FP32 per precision, graphs on: three calls of different images (direct, then replays)."""
    import torch

    from sedeploy.backends.torch import CUDA_MIN_COSINE
    from sedeploy.compare import compare_logits

    report, platform = run.report, run.platform
    arch, options, size, max_batch = platform.parity_model
    reference = _model(arch, options)
    batches = [_images(2 * max_batch + 3, size, seed) for seed in range(3)]
    with torch.inference_mode():
        expected = [reference(torch.from_numpy(batch)).numpy() for batch in batches]
    data: dict[str, Any] = {}
    metadata = None
    for precision in PRECISIONS:
        threshold = CUDA_MIN_COSINE[precision]
        model = _model(arch, options, reference.state_dict())
        runner = platform.runner(
            model, precision=precision, max_batch=max_batch, cuda_graph=True, metadata=metadata
        )
        metadata = runner.metadata
        try:
            comparisons = [
                compare_logits(want, runner(batch)) for want, batch in zip(expected, batches, strict=True)
            ]
            captures, replays = _graph_counts(runner)
        finally:
            runner.close()
            platform.release()
        worst = min(comparison.min_cosine for comparison in comparisons)
        top1 = min(comparison.top1_agreement for comparison in comparisons)
        passed = all(comparison.passed(min_cosine=threshold) for comparison in comparisons)
        failing = [
            str(index + 1) for index, c in enumerate(comparisons) if not c.passed(min_cosine=threshold)
        ]
        report.judge(
            f"torch.parity_{precision}",
            passed,
            f"min cosine {worst:.6f}, top-1 {100 * top1:.1f}%",
            f"call(s) {', '.join(failing)} of 3 (1 direct, 2 and 3 replayed) miss it",
        )
        report.judge(
            f"torch.graphs_{precision}",
            captures >= 1 and replays > 0,
            f"{captures} captures, {replays} replays",
            "CUDA graphs were asked for and not used",
        )
        data[precision] = {"min_cosine": worst, "top1": top1, "captures": captures, "replays": replays}
    return data


def digits_section(run: Run) -> dict[str, Any]:
    """Top-1 of the shipped digits model on the held-out digits, FP32 / FP16 / BF16 on the GPU."""
    from sedeploy.compare import DEFAULT_THRESHOLDS, top1_accuracy

    report, platform = run.report, run.platform
    stored = np.load(DIGITS_DATA)
    images, labels = stored["images"], stored["labels"].astype(np.int64)
    if platform.digits_count is not None:
        images, labels = images[: platform.digits_count], labels[: platform.digits_count]
    accuracy: dict[str, float] = {}
    feed: np.ndarray | None = None
    for precision in PRECISIONS:
        runner = platform.weights_runner(DIGITS_MODEL, precision=precision)
        try:
            if feed is None:
                feed = runner.preprocess(list(images))
            accuracy[precision] = top1_accuracy(runner(feed), labels)
        finally:
            runner.close()
    count = len(labels)

    def shown(precision: str) -> str:
        return f"{100 * accuracy[precision]:.2f}% ({round(accuracy[precision] * count)}/{count})"

    report.judge(
        "digits.fp32_top1",
        accuracy["fp32"] >= DIGITS_MIN_TOP1,
        shown("fp32"),
        "below the model card's accuracy: the data or the preprocessing is wrong",
    )
    report.judge(
        "digits.fp16_top1",
        accuracy["fp16"] == accuracy["fp32"],
        shown("fp16"),
        f"FP32 got {shown('fp32')}",
    )
    drop = 100 * (accuracy["fp32"] - accuracy["bf16"])
    allowed = DEFAULT_THRESHOLDS["bf16"].max_top1_drop
    report.judge(
        "digits.bf16_top1", drop <= allowed, shown("bf16"), f"{drop:.2f} pt below FP32 > {allowed} pt"
    )
    return {"images": count, "top1": accuracy}


def threads_section(run: Run) -> dict[str, Any]:
    """Two caller threads with different batch sizes at once, CUDA graphs on: each output as one thread's."""
    report, platform = run.report, run.platform
    arch, options, size, max_batch = platform.parity_model
    runner = platform.runner(_model(arch, options), precision="fp32", max_batch=max_batch, cuda_graph=True)
    sizes = platform.thread_sizes
    errors: list[str] = []
    try:
        feeds = {rows: _images(rows, size, seed=rows) for rows in {*sizes[0], *sizes[1]}}
        expected = {rows: runner(feed) for rows, feed in feeds.items()}

        def work(worker: int) -> None:
            try:
                for rows in sizes[worker] * 3:
                    difference = float(np.max(np.abs(runner(feeds[rows]) - expected[rows])))
                    if difference > THREADS_TOLERANCE * (1 + float(np.max(np.abs(expected[rows])))):
                        errors.append(f"thread {worker}, batch {rows}: differs by {difference:.3g}")
            except Exception as error:
                errors.append(f"thread {worker}: {type(error).__name__}: {error}")

        threads = [threading.Thread(target=work, args=(worker,), daemon=True) for worker in sizes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(10.0, run.clock.left()))
        if any(thread.is_alive() for thread in threads):
            errors.append("a caller thread did not finish")
        captures, replays = _graph_counts(runner)
    finally:
        runner.close()
        platform.release()
    report.judge(
        "torch.two_threads_graphs",
        not errors and captures >= 1 and replays > 0,
        f"{3 * sum(map(len, sizes.values()))} calls, {captures} captures, {replays} replays",
        errors[0] if errors else "CUDA graphs were asked for and not used",
    )
    return {"errors": errors, "captures": captures, "replays": replays}


def throughput_section(run: Run) -> dict[str, Any]:
    """End to end (two caller threads, pinned staging, graphs) against GPU-only time, per precision."""
    report, platform = run.report, run.platform
    arch, options, size, batch = platform.throughput_model
    feed = _images(batch, size, seed=7)
    data: dict[str, Any] = {"model": arch, "batch": batch}
    metadata = None
    for precision in PRECISIONS:
        model = _model(arch, options)
        runner = platform.runner(
            model, precision=precision, max_batch=batch, cuda_graph=True, metadata=metadata
        )
        metadata = runner.metadata
        try:
            for _ in range(6):  # each slot runs the size directly, captures it, then replays
                runner(feed)
            calls = platform.throughput_calls
            e2e = 2 * calls * batch / _two_callers(runner, feed, calls)
            gpu_seconds = runner.time_compute(batch, iterations=max(3, calls // 2), warmup=2)
            gpu_only = batch / _median(gpu_seconds)
            captures, replays = _graph_counts(runner)
        finally:
            runner.close()
            platform.release()
        ratio = e2e / gpu_only
        report.timing(
            f"throughput.e2e_{precision}",
            ratio >= MIN_E2E_OVER_GPU_ONLY,
            f"{ratio:.2f} ({e2e:.0f} of {gpu_only:.0f} img/s)",
            "copies and host work are not hidden behind the GPU's compute",
        )
        data[precision] = {
            "e2e_img_s": e2e,
            "gpu_only_img_s": gpu_only,
            "captures": captures,
            "replays": replays,
        }
    return data


def _two_callers(runner: Any, feed: np.ndarray, calls: int) -> float:
    """Seconds two threads take to make ``calls`` calls of ``feed`` each, started together."""
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def caller() -> None:
        start.wait()
        try:
            for _ in range(calls):
                runner(feed)
        except BaseException as error:  # re-raised below: a failed caller must not look fast
            errors.append(error)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def pytest_section(run: Run) -> dict[str, Any]:
    report = run.report
    missing = [name for name in GPU_TEST_FILES if not (REPO / name).is_file()]
    if missing:
        report.set("pytest.gpu_tests", FAIL, "", f"missing test file(s): {', '.join(missing)}")
        return {"missing": missing}
    if run.platform.dry_run:
        report.set("pytest.gpu_tests", SKIP, ", ".join(GPU_TEST_FILES), "dry run: the GPU tests need a GPU")
        return {}
    if importlib.util.find_spec("pytest") is None:
        report.set("pytest.gpu_tests", FAIL, "", "pytest is not installed")
        return {}
    timeout = max(20.0, min(PYTEST_TIMEOUT_S, run.clock.left() - 10))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=-ra",
    ]
    if importlib.util.find_spec("pytest_timeout") is not None:
        command += ["--timeout", "90"]
    command += list(GPU_TEST_FILES)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    code, output = run_in_group(command, timeout, env=environment, cwd=REPO)
    logger.info("pytest output:\n%s", output)
    lines = output.strip().splitlines()
    summary = lines[-1] if lines else ""
    passed = int(match.group(1)) if (match := re.search(r"(\d+) passed", summary)) else 0
    if code is None:
        report.set(
            "pytest.gpu_tests",
            FAIL,
            summary,
            f"timed out after {timeout:.0f} s; its process group was killed",
        )
    else:
        report.judge(
            "pytest.gpu_tests", code == 0 and passed >= 1, summary, f"pytest exit {code} with {passed} passed"
        )
    return {"returncode": code, "summary": summary, "tail": lines[-30:]}


def memcheck_section(run: Run) -> dict[str, Any]:
    report, platform = run.report, run.platform
    if not run.args.memcheck:
        report.set("memcheck.lifetimes", SKIP, "", "off; --memcheck runs it (up to 120 s more)")
        return {}
    prefix = platform.sanitizer()
    if prefix is None:
        report.set("memcheck.lifetimes", SKIP, "", "compute-sanitizer is not on this machine")
        return {}
    timeout = max(10.0, min(run.args.memcheck_timeout, run.clock.left() - 10))
    command = [*prefix, sys.executable, str(Path(__file__).resolve()), "--scenario", "lifetimes"]
    if platform.dry_run:
        command.append("--dry-run")
    environment = dict(os.environ)
    environment.pop("PYTORCH_NO_CUDA_MEMORY_CACHING", None)  # the caching allocator on: graphs need it
    code, output = run_in_group(command, timeout, env=environment, cwd=REPO)
    logger.info("memcheck output:\n%s", output)
    summary = next((line for line in reversed(output.splitlines()) if "ERROR SUMMARY" in line), "")
    scenarios = [line for line in output.splitlines() if line.startswith("scenario:")]
    if code is None:
        report.set(
            "memcheck.lifetimes",
            FAIL,
            summary,
            f"timed out after {timeout:.0f} s; its process group was killed",
        )
    else:
        clean = platform.dry_run or "ERROR SUMMARY: 0 errors" in summary
        report.judge(
            "memcheck.lifetimes",
            code == 0 and clean and len(scenarios) == 3,
            summary or f"{len(scenarios)} scenarios",
            f"exit {code}, {len(scenarios)} of 3 scenarios finished",
        )
    return {"returncode": code, "summary": summary, "scenarios": scenarios}


def lifetimes_scenario(platform: Any) -> None:
    """Break-then-close and close-mid-stream with graphs replaying, and a double buffer freed mid-run."""
    from sedeploy.backends import cuda_memory
    from sedeploy.backends.base import RunnerClosedError

    arch, options, size, max_batch = platform.parity_model
    feeds = [_images(max_batch, size, seed) for seed in range(6)]
    runner = platform.runner(_model(arch, options), precision="fp32", max_batch=max_batch, cuda_graph=True)
    for _ in runner.stream(feeds):
        break
    runner.close()
    print("scenario: torch break-then-close done", flush=True)
    runner = platform.runner(_model(arch, options), precision="fp32", max_batch=max_batch, cuda_graph=True)
    outputs = runner.stream(iter(feeds * 10))
    next(outputs)
    next(outputs)  # graphs captured: the rest replay while another thread closes
    closer = threading.Thread(target=runner.close)
    closer.start()
    closer.join()
    with contextlib.suppress(RunnerClosedError):
        list(outputs)
    print("scenario: torch close-mid-stream with graphs done", flush=True)
    platform.use_implementation("cuda-python")
    layouts = [
        cuda_memory.TensorLayout("x", "float32", (max_batch, 3, size, size), is_input=True),
        cuda_memory.TensorLayout("y", "float32", (max_batch, 3, size, size), is_input=False),
    ]
    context = cuda_memory.CudaContext(0)
    with context:
        double = cuda_memory.DoubleBuffer(layouts)

        def submit(buffers: Any, batch: np.ndarray) -> None:
            buffers.host["x"].array[...] = batch
            buffers.upload("x", max_batch)
            buffers.download("x", max_batch)

        def collect(buffers: Any, _: None) -> None:
            buffers.stream.synchronize()

        for _ in double.run(feeds, submit, collect):
            break
        double.free()  # synchronises both streams before freeing
    context.free()
    print("scenario: cuda-python double buffer break-then-free done", flush=True)


def _checks(*names: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return names


SECTION_CHECKS: dict[str, tuple[tuple[str, str], ...]] = {
    "cuda_python": _checks(
        ("pinned_round_trip", "bytes read back == bytes written (64 MiB)"),
        ("graph_captured", "captures >= 1"),
        ("graph_replay_bytes", "each of 3 replays moves the bytes written before it"),
        ("pinned_vs_pageable", f">= {MIN_PINNED_OVER_PAGEABLE}x the pageable copy's speed"),
        ("copy_overlap", f">= {MIN_COPY_HIDDEN} of the copies hidden behind compute (sized after a warm-up)"),
        ("context_after_close", "the thread's current context unchanged"),
    ),
    "pycuda": _checks(
        ("pinned_round_trip", "bytes read back == bytes written (64 MiB)"),
        ("pinned_vs_pageable", f">= {MIN_PINNED_OVER_PAGEABLE}x the pageable copy's speed"),
        ("context_after_close", "the thread's current context unchanged"),
    ),
}


def _prefixed(prefix: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}.{name}", threshold) for name, threshold in SECTION_CHECKS[prefix])


def _per_precision(name: str, threshold: Callable[[str], str]) -> tuple[tuple[str, str], ...]:
    return tuple((f"{name}_{precision}", threshold(precision)) for precision in PRECISIONS)


def _parity_threshold(precision: str) -> str:
    try:
        from sedeploy.backends.torch import CUDA_MIN_COSINE
    except ImportError:  # no PyTorch: the machine section says so, and this row is never judged
        return "sedeploy.backends.torch.CUDA_MIN_COSINE, top-1 100% vs CPU FP32"
    return f"min cosine >= {CUDA_MIN_COSINE[precision]}, top-1 100% vs CPU FP32, direct and replayed (as the GPU tests)"


def sections() -> list[Section]:
    return [
        Section(
            "machine",
            "the GPU and the packages",
            _checks(
                ("gpu_visible", "a CUDA device PyTorch can use"),
                ("sedeploy_imports", "sedeploy's GPU modules import"),
            ),
            0,
            machine_section,
        ),
        Section(
            "cuda_python",
            "cuda_memory on cuda-python",
            _prefixed("cuda_python"),
            20,
            memory_section("cuda-python", "cuda_python"),
        ),
        Section(
            "pycuda", "cuda_memory on pycuda", _prefixed("pycuda"), 10, memory_section("pycuda", "pycuda")
        ),
        Section(
            "torch_parity",
            "PyTorch-CUDA runner vs CPU FP32, graphs on",
            _per_precision("torch.parity", _parity_threshold)
            + _per_precision("torch.graphs", lambda precision: "captures >= 1, replays > 0"),
            30,
            parity_section,
        ),
        Section(
            "digits",
            "shipped digits model, 449 held-out digits",
            _checks(
                ("digits.fp32_top1", f">= {100 * DIGITS_MIN_TOP1:.0f}% (model card: 99.11%)"),
                ("digits.fp16_top1", "== FP32's"),
                ("digits.bf16_top1", ">= FP32's - 0.5 pt (sedeploy.compare's bf16 threshold)"),
            ),
            15,
            digits_section,
        ),
        Section(
            "threads",
            "two caller threads, different batch sizes, graphs on",
            _checks(
                (
                    "torch.two_threads_graphs",
                    f"outputs within {THREADS_TOLERANCE} of one thread's; replays > 0",
                ),
            ),
            15,
            threads_section,
        ),
        Section(
            "throughput",
            "SE-ResNet-50 224, batch 32, two caller threads, graphs on",
            _per_precision(
                "throughput.e2e", lambda precision: f">= {MIN_E2E_OVER_GPU_ONLY} of GPU-only img/s"
            ),
            50,
            throughput_section,
        ),
        Section(
            "pytest",
            "the GPU test file",
            _checks(
                ("pytest.gpu_tests", f"exit 0, >= 1 passed, within {PYTEST_TIMEOUT_S:.0f} s"),
            ),
            45,
            pytest_section,
        ),
        Section(
            "memcheck",
            "lifetime scenario under compute-sanitizer",
            _checks(
                ("memcheck.lifetimes", f"0 errors, 3 scenarios, within {MEMCHECK_TIMEOUT_S:.0f} s"),
            ),
            30,
            memcheck_section,
        ),
    ]


# The run.


_interrupted = False


def _on_signal(number: int, frame: Any) -> None:
    """The first SIGTERM/SIGINT stops the running section; later ones are ignored while the report is written."""
    global _interrupted
    if _interrupted:
        return
    _interrupted = True
    raise Interrupted(signal.Signals(number).name)


@contextlib.contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """Every line to stdout and gpu_check.log (appended; flushed per line), sedeploy's warnings included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(path, mode="w"), logging.StreamHandler(sys.stdout)]
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    previous_level = root.level
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("sedeploy").setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(previous_level)
        logging.getLogger("sedeploy").setLevel(logging.NOTSET)


def run_sections(args: argparse.Namespace, platform: Any, report: Report, chosen: list[Section]) -> None:
    clock = Clock(args.budget)
    run = Run(report, platform, clock, args)
    stop_reason: str | None = None
    for section in chosen:
        state = report.sections[section.name]
        if stop_reason is not None:
            state["status"] = "not run"
            report.undecided(section, SKIP, stop_reason)
            continue
        if args.only and section.name not in args.only and section.name != "machine":
            state["status"] = "not selected"
            report.undecided(section, SKIP, "not selected (--only)")
            continue
        need = 0.0 if platform.dry_run else section.need_s
        if clock.left() < need:
            state["status"] = "skipped"
            report.undecided(
                section, SKIP, f"time budget: {clock.left():.0f} s left, it needs about {need:.0f} s"
            )
            report.write()
            continue
        state["status"] = "running"
        report.write()
        logger.info("section %s: %s", section.name, section.title)
        started = time.perf_counter()
        try:
            if f"hang:{section.name}" in platform.faults:
                while True:  # a fault for the tests: a section that never ends (SIGTERM stops it)
                    time.sleep(0.05)
            state["data"] = section.run(run)
            state["status"] = "done"
            report.undecided(section, FAIL, "the section finished without judging this check")
        except Interrupted as interrupt:
            state["status"] = f"interrupted ({interrupt})"
            report.undecided(
                section, FAIL, f"interrupted by {interrupt} after {time.perf_counter() - started:.0f} s"
            )
            stop_reason = f"not reached: the run was interrupted by {interrupt}"
            report.status = "interrupted"
        except Exception as error:
            logger.error("section %s raised:\n%s", section.name, traceback.format_exc())
            state["status"] = "raised"
            first = f"{type(error).__name__}: {error}".splitlines()[0]
            report.undecided(section, FAIL, f"the section raised {first}")
        finally:
            state["seconds"] = round(time.perf_counter() - started, 1)
        if section.name == "machine" and any(report.checks[n].verdict == FAIL for n, _ in section.checks):
            stop_reason = "not run: " + "; ".join(
                f"{name} failed" for name, _ in section.checks if report.checks[name].verdict == FAIL
            )
        report.write()
    if report.status == "running":
        report.status = "finished"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu_check.md, gpu_check.json and gpu_check.log")
    parser.add_argument(
        "--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds the sections may take"
    )
    parser.add_argument("--only", type=lambda text: [part for part in text.split(",") if part], default=[])
    parser.add_argument(
        "--memcheck", action="store_true", help="also run the lifetime scenario under memcheck"
    )
    parser.add_argument("--memcheck-timeout", type=float, default=MEMCHECK_TIMEOUT_S, help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="a CPU run on the recording fakes")
    parser.add_argument("--fake-fault", action="append", default=[], help="dry run only: break the fake")
    parser.add_argument("--scenario", choices=["lifetimes"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global _interrupted
    _interrupted = False
    faults = set(args.fake_fault)
    unknown = [fault for fault in faults if fault not in FAULTS and not fault.startswith("hang:")]
    if unknown or (faults and not args.dry_run):
        parser.error(f"--fake-fault takes {', '.join(FAULTS)} or hang:SECTION, with --dry-run")
    chosen = sections()
    names = [section.name for section in chosen]
    if [name for name in args.only if name not in names]:
        parser.error(f"--only takes some of {', '.join(names)}")
    platform = FakePlatform(faults) if args.dry_run else CudaPlatform(faults)
    try:
        if args.scenario == "lifetimes":
            lifetimes_scenario(platform)
            return 0
        if args.out is None:
            parser.error("--out DIR is required")
        report = Report(args.out, chosen, args.dry_run, args.budget)
        previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
        with _logging_to(args.out / "gpu_check.log"):
            for number in previous:
                signal.signal(number, _on_signal)
            try:
                run_sections(args, platform, report, chosen)
            except Interrupted as interrupt:  # between sections (the sections catch their own)
                report.status = "interrupted"
                for section in chosen:
                    running = report.sections[section.name]["status"] == "running"
                    report.undecided(section, FAIL if running else SKIP, f"interrupted by {interrupt}")
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)
                for child in list(_children):
                    _kill_group(child)
                report.write()
            failed = report.failed
            logger.info(
                "gpu_check: %s; %s",
                "FAIL: " + ", ".join(c.name for c in failed) if failed else "PASS",
                args.out,
            )
        return 1 if failed else 0
    finally:
        platform.close()


if __name__ == "__main__":
    status = main()
    if _interrupted:
        # Worker threads may still sit in CUDA calls: leave without waiting for them (the report is written).
        logging.shutdown()
        sys.stdout.flush()
        os._exit(status)
    sys.exit(status)
