"""Start-up time (issues 29 and 31): ``import sedeploy`` and ``sedeploy --help``, and what each imports.

Usage:
    python benchmarks/startup.py [--runs N] [--baseline REV] [--no-write]

Each case runs in a fresh interpreter (this one, ``sys.executable``), from an empty working folder with
``PYTHONPATH`` pointing at the tree measured, so the measured tree is the one imported (an editable install's
finder comes after ``PYTHONPATH``). ``sedeploy --help`` is what the console script runs: ``sedeploy.cli.main``
with ``sys.argv`` set. ``--baseline REV`` extracts that commit's ``sedeploy/`` (``git archive``) and times it
in the same run, interleaved with the working tree: a machine shared with others swings 15% from minute to
minute, so only figures from one interleaved run are compared. Two warm-up rounds are not counted (the page
cache then holds every file); the figures are the median and the fastest of ``--runs`` rounds.

Writes benchmarks/results/startup.{md,json} (unless ``--no-write``) with the CPU, its ISA flags and the load
average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEAVY = ("torch", "onnxruntime", "openvino", "onnx", "numpy", "PIL", "tritonclient", "pytriton", "matplotlib")
"""Modules whose presence after a case is reported (the first four are what start-up must avoid)."""

_HELP = (
    "import sys; sys.argv = ['sedeploy', {args}]\n"
    "from sedeploy.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
)
CASES: dict[str, str] = {
    "python -c pass": "pass",
    "import sedeploy": "import sedeploy",
    "sedeploy --help": _HELP.format(args="'--help'"),
    "sedeploy build-engine --help": _HELP.format(args="'build-engine', '--help'"),
}
"""Case name -> the ``python -c`` program it runs."""
TARGETS = {"import sedeploy": 0.3, "sedeploy --help": 0.5}
"""Issue 31's start-up targets, seconds (warm)."""


def _environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env.pop("PYTHONSTARTUP", None)
    return env


def time_once(program: str, tree: Path, cwd: Path) -> float:
    """Wall seconds of one fresh interpreter running ``program`` against ``tree``."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", program],
        cwd=cwd,
        env=_environment(tree),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def loaded_modules(program: str, tree: Path, cwd: Path) -> list[str]:
    """Which of :data:`HEAVY` are in ``sys.modules`` after ``program`` ran."""
    probe = (
        program
        + "\nimport json, sys\n"
        + f"print('@@' + json.dumps([name for name in {list(HEAVY)!r} if name in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=cwd,
        env=_environment(tree),
        check=True,
        capture_output=True,
        text=True,
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("@@"))
    return list(json.loads(line[2:]))


def extract(revision: str, into: Path) -> Path:
    """``sedeploy/`` as committed at ``revision``, unpacked under ``into``; returns the tree's root."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "sedeploy"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _isa_flags() -> list[str]:
    from sedeploy.host import _cpuinfo

    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return sorted(
                f for f in flags if f.startswith(("avx512_vnni", "avx512_bf16", "avx512_fp16", "amx"))
            )
    return []


def measure(trees: dict[str, Path], runs: int, warmup: int = 2) -> dict[str, Any]:
    """Interleaved rounds over every tree and case; per tree and case the median, fastest and modules."""
    samples: dict[str, dict[str, list[float]]] = {name: {case: [] for case in CASES} for name in trees}
    with tempfile.TemporaryDirectory() as empty:
        cwd = Path(empty)
        for round_ in range(warmup + runs):
            for name, tree in trees.items():
                for case, program in CASES.items():
                    seconds = time_once(program, tree, cwd)
                    if round_ >= warmup:
                        samples[name][case].append(seconds)
        modules = {
            name: {case: loaded_modules(program, tree, cwd) for case, program in CASES.items()}
            for name, tree in trees.items()
        }
    return {
        name: {
            case: {
                "median_s": statistics.median(values),
                "min_s": min(values),
                "runs": len(values),
                "modules": modules[name][case],
            }
            for case, values in cases.items()
        }
        for name, cases in samples.items()
    }


def command_help_modules(tree: Path) -> dict[str, list[str]]:
    """Which of :data:`HEAVY` each ``sedeploy COMMAND --help`` imports (a command's help reads its library
    defaults, so it imports what the modules holding them import)."""
    from sedeploy.cli import cli

    with tempfile.TemporaryDirectory() as empty:
        return {
            command: loaded_modules(_HELP.format(args=f"{command!r}, '--help'"), tree, Path(empty))
            for command in sorted(cli.commands)
        }


def markdown(report: dict[str, Any]) -> str:
    """The Markdown table of :func:`measure`'s results with the machine they ran on."""
    trees = list(report["trees"])
    lines = [
        "# Start-up time: `import sedeploy` and `sedeploy --help`",
        "",
        f"Measured by `benchmarks/startup.py` on {report['cpu']} ({report['cores']} cores; ISA flags: "
        f"{', '.join(report['isa_flags']) or 'none of avx512_vnni/avx512_bf16/amx'}), Python {report['python']}, "
        f"load average {report['load_before']} before, {report['load_after']} after. Each case is a fresh "
        f"interpreter, warm (page cache filled by {report['warmup']} uncounted rounds); median (fastest) of "
        f"{report['runs']} interleaved rounds.",
        "",
        *(
            [
                f"The machine was shared (load average above its {report['cores']} cores): a median includes "
                "waiting for a core, the fastest round is the nearer to an idle machine.",
                "",
            ]
            if float(str(report["load_before"]).split()[0]) > report["cores"]
            else []
        ),
        "| case | " + " | ".join(trees) + " | target | heavy modules imported (" + " / ".join(trees) + ") |",
        "|---|" + "---|" * len(trees) + "---|---|",
    ]
    for case in CASES:
        cells = [
            f"{report['trees'][tree][case]['median_s']:.3f} s ({report['trees'][tree][case]['min_s']:.3f})"
            for tree in trees
        ]
        modules = " / ".join(", ".join(report["trees"][tree][case]["modules"]) or "none" for tree in trees)
        target = f"< {TARGETS[case]} s" if case in TARGETS else ""
        lines.append(f"| `{case}` | " + " | ".join(cells) + f" | {target} | {modules} |")
    lines += [
        "",
        "What each `sedeploy COMMAND --help` imports in the working tree (its help shows library defaults, read",
        "from the modules that hold them):",
        "",
        "| command | heavy modules imported by its --help |",
        "|---|---|",
    ]
    for command, modules in report["command_help"].items():
        lines.append(f"| `{command}` | {', '.join(modules) or 'none'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="Counted rounds (default 15).")
    parser.add_argument(
        "--baseline", metavar="REV", help="Also time sedeploy/ as committed at REV, interleaved."
    )
    parser.add_argument("--no-write", action="store_true", help="Print only; leave benchmarks/results alone.")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from sedeploy.host import cpu_model, usable_cores

    with tempfile.TemporaryDirectory() as scratch:
        trees = {"working tree": ROOT}
        if args.baseline:
            trees = {f"at {args.baseline}": extract(args.baseline, Path(scratch)), **trees}
        load_before = _load()
        results = measure(trees, args.runs)
        load_after = _load()
    report = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "isa_flags": _isa_flags(),
        "python": platform.python_version(),
        "load_before": load_before,
        "load_after": load_after,
        "warmup": 2,
        "runs": args.runs,
        "trees": results,
        "command_help": command_help_modules(ROOT),
    }
    text = markdown(report)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "startup.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (RESULTS / "startup.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
