"""Real SIGINTs at the worst moments, in a fresh interpreter: ``python signal_scenarios.py FOLDER`` prints JSON.

The test process itself is no place to send signals to: by the time these tests run it holds the thread
pools of ONNX Runtime, OpenVINO and Triton's clients, and a process-directed SIGINT there has crashed and
hung the suite. A fresh interpreter holds only what sedeploy's file functions need, as a CLI run would
when the signal arrives. Each scenario sends the signal from inside the system call it wants to split
from the next statement (``os.close`` just after a temporary file is made, ``os.replace`` between two
renames) and reports what it left behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sedeploy import files
from sedeploy.files import atomic_output, check_writable, commit_files, interruptions_deferred

REAL_CLOSE, REAL_REPLACE = os.close, os.replace


def _temps(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def _signal_after(real: Callable[..., Any], after_calls: int = 1) -> Callable[..., Any]:
    calls = []

    def call_then_signal(*args: Any) -> Any:
        result = real(*args)
        calls.append(args)
        if len(calls) == after_calls:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    return call_then_signal


def _outcome(run: Callable[[], Any]) -> str:
    try:
        run()
    except KeyboardInterrupt:
        return "KeyboardInterrupt"
    finally:
        files.os.close, files.os.replace = REAL_CLOSE, REAL_REPLACE  # type: ignore[misc]
    return "nothing raised"


def deferred(folder: Path) -> dict[str, Any]:
    steps: list[str] = []

    def run() -> None:
        with interruptions_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("after the signal")
        steps.append("after the block")

    raised = _outcome(run)
    return {
        "raised": raised,
        "steps": steps,
        "handler_restored": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    }


def check_writable_split(folder: Path) -> dict[str, Any]:
    files.os.close = _signal_after(REAL_CLOSE)  # type: ignore[misc]
    raised = _outcome(lambda: check_writable(folder / "model.onnx"))
    return {"raised": raised, "temps": _temps(folder)}


def atomic_output_split(folder: Path) -> dict[str, Any]:
    target = folder / "report.json"
    target.write_text("earlier\n")

    def run() -> None:
        with atomic_output(target) as temp:
            temp.write_text("new\n")

    files.os.close = _signal_after(REAL_CLOSE)  # type: ignore[misc]
    raised = _outcome(run)
    return {"raised": raised, "temps": _temps(folder), "target": target.read_text()}


def commit_split(folder: Path) -> dict[str, Any]:
    moves = []
    for name in ("model.onnx", "model.onnx.manifest.json"):
        (folder / name).write_text("old")
        staged = folder / f".{name}.staged.tmp"
        staged.write_text("new")
        moves.append((staged, folder / name))
    files.os.replace = _signal_after(REAL_REPLACE)  # type: ignore[misc]
    raised = _outcome(lambda: commit_files(moves))
    return {"raised": raised, "temps": _temps(folder), "contents": [path.read_text() for _, path in moves]}


SCENARIOS = {
    "deferred": deferred,
    "check_writable": check_writable_split,
    "atomic_output": atomic_output_split,
    "commit": commit_split,
}


def main() -> None:
    # Python keeps an inherited SIG_IGN for SIGINT (a job started with & from a non-interactive shell, as CI
    # runners do), and then no Ctrl-C ever raises. The scenarios are about a terminal's Ctrl-C: Python's own
    # handler, as an interactive `sedeploy` run has it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = Path(sys.argv[1])
    outcomes = {}
    for name, scenario in SCENARIOS.items():
        folder = root / name
        folder.mkdir(parents=True)
        outcomes[name] = scenario(folder)
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main()
