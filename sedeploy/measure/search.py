"""The measured search behind ``sedeploy optimize`` and ``build-engine --backend auto``.

A candidate (:class:`Plan`) is one build (backend, precision, build settings) opened
with one set of runner settings. :func:`search` builds each candidate, checks its
fidelity, times every candidate that built (interleaved, with :func:`sedeploy.bench.bench`)
and keeps the fastest one within the fidelity :class:`Budget`. Candidates within
:data:`TIE_BAND` of the fastest count as tied and go to the most faithful: a difference
smaller than the noise of interleaved medians is not a reason to lose accuracy.

The search takes its builder and its fidelity check as functions: the build stage sits
above this module (``build_engine(backend="auto")`` is one caller), so this module
cannot import it. Building, checking and timing stop cleanly at ``deadline``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sedeploy.artifacts.precision import FLOAT_TYPE_PRECISION
from sedeploy.errors import ConfigError, SedeployError
from sedeploy.host import describe_machine
from sedeploy.measure.bench import BenchReport, Candidate, bench
from sedeploy.measure.plans import Budget, Built, Fidelity, Plan
from sedeploy.measure.timing import geometric_mean
from sedeploy.progress import progress_bar

logger = logging.getLogger(__name__)


TIE_BAND = 0.03
"""Candidates whose speed is within this share of the fastest are tied; the most faithful of them wins."""
RUNOFF_BAND = 0.10
"""Candidates within the budget and within this share of the fastest are timed again, among themselves only."""
RUNOFF_SIZE = 4
"""At most this many (the fastest) go to the run-off."""


STATUSES = ("chosen", "meets budget", "baseline", "over budget", "build failed", "pruned", "not reached")
"""A row's ``status``: ``baseline`` is timed for the ratios but was not asked for, so it is never chosen."""


@dataclass(frozen=True)
class SearchRow:
    """One candidate's outcome: its status and why, and every figure measured for it."""

    plan: Plan
    status: str
    reason: str = ""
    artifact: str | None = None
    reused: bool = False
    fidelity: Fidelity | None = None
    shares: Mapping[str, float] | None = None
    images_per_s: Mapping[int, float] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    ratio_to_fp32: float | None = None
    """Speed over the same backend's FP32 candidate (default runner settings), geometric mean over batches."""
    roof_share: float | None = None
    """Share of its own precision's roof at the largest batch; None without one or when the probe under-measured."""
    pareto: bool = False
    """Not beaten on both speed and fidelity by any other timed candidate."""
    runoff_images_per_s: Mapping[int, float] = field(default_factory=dict)
    """Images/s in the run-off (the near-fastest candidates timed again among themselves), when it ran one."""

    @property
    def label(self) -> str:
        return self.plan.label

    @property
    def speed(self) -> float | None:
        """Geometric mean of images/s over the batches (what the search ranks by)."""
        return geometric_mean(self.images_per_s)

    @property
    def runoff_speed(self) -> float | None:
        """The same over the run-off's figures (what decides among the near-fastest), or None."""
        return geometric_mean(self.runoff_images_per_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.plan.to_dict(),
            "status": self.status,
            "reason": self.reason,
            "artifact": self.artifact,
            "reused_build": self.reused,
            "fidelity": self.fidelity.to_dict() if self.fidelity else None,
            "precision_shares": dict(self.shares) if self.shares else None,
            "images_per_s": {str(batch): round(rate, 2) for batch, rate in self.images_per_s.items()},
            "latency_p50_ms": None if self.p50_ms is None else round(self.p50_ms, 3),
            "latency_p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
            "ratio_to_fp32_same_backend": None
            if self.ratio_to_fp32 is None
            else round(self.ratio_to_fp32, 3),
            "roof_share": None if self.roof_share is None else round(self.roof_share, 4),
            "pareto": self.pareto,
            "runoff_images_per_s": {
                str(batch): round(rate, 2) for batch, rate in self.runoff_images_per_s.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchRow:
        plan = Plan.of(data["backend"], data["precision"], data.get("build"), data.get("runner"))
        return cls(
            plan=plan,
            status=data["status"],
            reason=data.get("reason", ""),
            artifact=data.get("artifact"),
            reused=bool(data.get("reused_build")),
            fidelity=Fidelity.from_dict(data["fidelity"]) if data.get("fidelity") else None,
            shares=data.get("precision_shares"),
            images_per_s={
                int(batch): float(rate) for batch, rate in (data.get("images_per_s") or {}).items()
            },
            p50_ms=data.get("latency_p50_ms"),
            p99_ms=data.get("latency_p99_ms"),
            ratio_to_fp32=data.get("ratio_to_fp32_same_backend"),
            roof_share=data.get("roof_share"),
            pareto=bool(data.get("pareto")),
            runoff_images_per_s={
                int(batch): float(rate) for batch, rate in (data.get("runoff_images_per_s") or {}).items()
            },
        )


@dataclass(frozen=True)
class SearchReport:
    """Every candidate with its outcome, the chosen one, and how the search ran."""

    rows: tuple[SearchRow, ...]
    budget: Budget
    batches: tuple[int, ...]
    machine: Mapping[str, Any]
    notes: tuple[str, ...] = ()
    stopped_early: str | None = None
    """Why the search stopped before every candidate was tried (the time budget), or None."""
    seconds: float = 0.0

    @property
    def winner(self) -> SearchRow | None:
        return next((row for row in self.rows if row.status == "chosen"), None)

    @property
    def closest(self) -> SearchRow | None:
        """Without a winner: the candidate over budget that came nearest to it (the most faithful)."""
        checked = [row for row in self.rows if row.status == "over budget" and row.fidelity is not None]
        return max(checked, key=lambda row: row.fidelity.rank()) if checked else None  # type: ignore[union-attr]

    def baseline(self, backend: str = "onnxruntime") -> SearchRow | None:
        """That backend's first timed FP32 candidate (ONNX Runtime's has default runner settings)."""
        return next(
            (
                row
                for row in self.rows
                if row.plan.backend == backend and row.plan.precision == "fp32" and row.images_per_s
            ),
            None,
        )

    def reason(self) -> str:
        """The one line that says what was chosen and why (or why nothing was)."""
        winner = self.winner
        if winner is None:
            closest = self.closest
            if closest is not None:
                return (
                    f"no candidate met the budget ({self.budget.describe()}); closest: {closest.label} "
                    f"({closest.reason})"
                )
            failed = [row for row in self.rows if row.status == "build failed"]
            if failed:
                return (
                    f"no candidate could be built and checked; first: {failed[0].label} ({failed[0].reason})"
                )
            left_out = [row for row in self.rows if row.status == "pruned"]
            why = f"; e.g. {left_out[0].label}: {left_out[0].reason}" if left_out else ""
            return f"none of the asked candidates can run on this machine{why}"
        batch = max(winner.images_per_s)
        parts = [f"{winner.images_per_s[batch]:.1f} img/s at batch {batch}"]
        baseline = self.baseline()
        if baseline is not None and baseline is not winner and baseline.images_per_s.get(batch):
            parts.append(f"{winner.images_per_s[batch] / baseline.images_per_s[batch]:.2f}x onnxruntime fp32")
        if winner.fidelity is not None:
            parts.append(winner.fidelity.to_text())
        return f"{winner.label}: {', '.join(parts)}"

    def to_dict(self) -> dict[str, Any]:
        winner = self.winner
        return {
            "chosen": winner.label if winner else None,
            "reason": self.reason(),
            "budget": self.budget.to_dict(),
            "batches": list(self.batches),
            "machine": dict(self.machine),
            "stopped_early": self.stopped_early,
            "notes": list(self.notes),
            "seconds": round(self.seconds, 2),
            "candidates": [row.to_dict() for row in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchReport:
        budget = data.get("budget") or {}
        return cls(
            rows=tuple(SearchRow.from_dict(row) for row in data.get("candidates", ())),
            budget=Budget(
                **{key: budget.get(key) for key in ("max_drop", "min_agreement", "min_cosine")},
                verify_cosine=bool(budget.get("verify_cosine")),
            ),
            batches=tuple(int(batch) for batch in data.get("batches", ())),
            machine=data.get("machine") or {},
            notes=tuple(data.get("notes", ())),
            stopped_early=data.get("stopped_early"),
            seconds=float(data.get("seconds", 0.0)),
        )

    def table(self) -> list[list[str]]:
        """Header and one row per candidate, as text cells (the text and Markdown reports share it)."""
        batch = max(self.batches) if self.batches else None
        header = [
            "candidate",
            "status",
            "fidelity",
            "runs as",
            f"img/s b{batch}",
            "p50 / p99 ms",
            "x fp32",
            "roof",
            "why",
        ]
        lines = [header]
        for row in self.rows:
            rate = row.images_per_s.get(batch) if batch is not None else None
            lines.append(
                [
                    row.label + (" *" if row.pareto else ""),
                    row.status,
                    row.fidelity.to_text() if row.fidelity else "-",
                    _shares(row.shares),
                    f"{rate:.1f}" if rate else "-",
                    f"{row.p50_ms:.2f} / {row.p99_ms:.2f}"
                    if row.p50_ms is not None and row.p99_ms is not None
                    else "-",
                    f"{row.ratio_to_fp32:.2f}x" if row.ratio_to_fp32 else "-",
                    f"{100 * row.roof_share:.0f}%" if row.roof_share is not None else "-",
                    row.reason,
                ]
            )
        return lines

    def to_text(self) -> str:
        table = self.table()
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1]
            for line in table
        ]
        lines.append("* on the Pareto front of speed and fidelity; x fp32: against the same backend's fp32")
        lines += [f"note: {note}" for note in self.notes]
        if self.stopped_early:
            lines.append(f"stopped early: {self.stopped_early}")
        lines.append(("chosen: " if self.winner else "FAIL: ") + self.reason())
        return "\n".join(line.rstrip() for line in lines)

    def to_markdown(self) -> str:
        table = self.table()
        lines = [
            f"Machine: {self.machine.get('description', '?')}. Budget: {self.budget.describe()}. "
            f"Batches: {', '.join(map(str, self.batches))}; searched in {self.seconds:.0f} s.",
            "",
            "| " + " | ".join(table[0]) + " |",
            "|" + "---|" * len(table[0]),
        ]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in line) + " |" for line in table[1:]]
        lines.append("")
        lines.append(
            "`*`: on the Pareto front of speed and fidelity. `x fp32`: against the same backend's FP32."
        )
        lines += [f"- {note}" for note in self.notes]
        if self.stopped_early:
            lines.append(f"- stopped early: {self.stopped_early}")
        lines.append("")
        lines.append(("**Chosen:** " if self.winner else "**No candidate met the budget:** ") + self.reason())
        return "\n".join(lines) + "\n"


def _shares(shares: Mapping[str, float] | None) -> str:
    """``int8 90%, bf16 10%``: the precisions that run a visible share of the MACs."""
    if not shares:
        return "-"
    return ", ".join(f"{name} {100 * share:.0f}%" for name, share in shares.items() if share >= 0.005) or "-"


Builder = Callable[[Plan], Built]
"""Builds (or finds) the artifact of a plan; raises :class:`SedeployError` with the reason when it cannot."""
Checker = Callable[[Plan, Built], Fidelity]
"""Measures a built plan's fidelity against FP32."""
Opener = Callable[[Plan, Built, "int | None"], Any]
"""Opens a built plan as a runner for timing (``threads`` may be None)."""


def gate_fidelity(plan: Plan, built: Built) -> Fidelity:
    """The check for searches without held-out images: the build's own parity gate (FP32 is exact)."""
    if built.gate is not None:
        return built.gate
    return Fidelity(
        samples=0, top1_agreement=1.0, min_cosine=1.0, mean_cosine=1.0, where="the fp32 model itself"
    )


def search(
    plans: Sequence[Plan],
    build: Builder,
    open_runner: Opener,
    *,
    check: Checker = gate_fidelity,
    budget: Budget | None = None,
    batches: Sequence[int] = (8,),
    pruned: Sequence[tuple[Plan, str]] = (),
    choosable: Callable[[Plan], bool] | None = None,
    seconds: float = 2.0,
    rounds: int = 3,
    warmup: int = 2,
    probe_seconds: float = 0.3,
    deadline: float | None = None,
    notes: Sequence[str] = (),
    progress: bool = False,
    runoff: bool = True,
) -> SearchReport:
    """Build, check and time ``plans``; choose the fastest within ``budget``. See the module docstring.

    ``pruned``: plans left out before the search, each with the reason (listed in
    the report). ``choosable``: plans that may be chosen (default all; a baseline
    that was only timed for its ratio is not). ``deadline``: a ``time.monotonic()``
    after which no further candidate is built (at least one always is); what was
    built is still timed. ``seconds``: timed seconds per candidate and batch, over
    ``rounds`` interleaved rounds. ``runoff``: the candidates within the budget and
    within :data:`RUNOFF_BAND` of the fastest (at most :data:`RUNOFF_SIZE`) are timed
    again among themselves, and that second run decides between them (a search that
    stopped on its deadline skips it).
    """
    if not plans:
        raise ConfigError("the search has no candidate to try; allow more backends or precisions")
    if not batches or min(batches) < 1:
        raise ConfigError(f"batch sizes must be positive integers, got {list(batches)}")
    started = time.perf_counter()
    budget = budget or Budget()
    outcomes: dict[Plan, SearchRow] = {}
    built: dict[tuple[Any, ...], Built | str] = {}
    checked: dict[tuple[Any, ...], Fidelity | str] = {}
    stopped: str | None = None
    bar = progress_bar(total=len(plans) + 1, desc="search", unit="candidate", enabled=progress)
    try:
        for index, plan in enumerate(plans):
            if deadline is not None and index > 0 and time.monotonic() > deadline:
                stopped = f"the time budget ran out after {index} of {len(plans)} candidates"
                for rest in plans[index:]:
                    outcomes[rest] = SearchRow(rest, "not reached", "time budget")
                break
            bar.set_description(f"search: {plan.label}")
            outcomes[plan] = _try(plan, build, check, budget, built, checked)
            bar.update(1)
        timed = [row for row in outcomes.values() if row.artifact is not None and row.fidelity is not None]
        report = None
        while timed:
            bar.set_description("search: timing")
            try:
                report = _time(timed, built, open_runner, batches, seconds, rounds, warmup, probe_seconds)
                break
            except Exception:  # a runner that cannot open is that candidate's failure: mark it, time the rest
                unusable = _unopenable(timed, built, open_runner)
                if unusable is None:
                    raise
                row, problem = unusable
                outcomes[row.plan] = replace(row, status="build failed", reason=f"cannot run: {problem}")
                timed = [other for other in timed if other is not row]
        bar.update(1)
    finally:
        bar.close()
    rows = [_with_timing(outcomes[plan], report) if report else outcomes[plan] for plan in outcomes]
    rows = _ratios(rows)
    rows = _mark_pareto(rows)
    choosable = choosable or (lambda plan: True)
    if runoff and stopped is None:
        rows = _runoff(rows, built, open_runner, choosable, batches, seconds, rounds, warmup, progress)
    rows = _choose(rows, choosable)
    rows += [SearchRow(plan, "pruned", reason) for plan, reason in pruned]
    machine = report.machine if report else describe_machine()
    return SearchReport(
        rows=tuple(rows),
        budget=budget,
        batches=tuple(batches),
        machine=machine,
        notes=tuple(notes),
        stopped_early=stopped,
        seconds=time.perf_counter() - started,
    )


def _try(
    plan: Plan,
    build: Builder,
    check: Checker,
    budget: Budget,
    built: dict[tuple[Any, ...], Built | str],
    checked: dict[tuple[Any, ...], Fidelity | str],
) -> SearchRow:
    """Build (once per build key) and check (once per fidelity key) one plan; its row without timing."""
    if plan.build_key not in built:
        try:
            built[plan.build_key] = build(plan)
        except Exception as error:  # a search reports every candidate: one backend's failure is its row
            built[plan.build_key] = _problem(error)
            logger.info("search: %s did not build: %s", plan.label, error, exc_info=_unexpected(error))
    result = built[plan.build_key]
    if isinstance(result, str):
        return SearchRow(plan, "build failed", result)
    if plan.fidelity_key not in checked:
        try:
            checked[plan.fidelity_key] = check(plan, result)
        except Exception as error:
            checked[plan.fidelity_key] = f"check: {_problem(error)}"
            logger.info("search: %s could not be checked: %s", plan.label, error, exc_info=_unexpected(error))
    fidelity = checked[plan.fidelity_key]
    if isinstance(fidelity, str):
        return SearchRow(plan, "build failed", fidelity, str(result.artifact))
    problem = budget.problem(fidelity, plan.precision)
    return SearchRow(
        plan,
        "over budget" if problem else "meets budget",
        problem or "",
        artifact=str(result.artifact),
        reused=result.reused,
        fidelity=fidelity,
        shares=runs_as(result.shares, plan.runner_options.get("float_type")),
    )


def runs_as(shares: Mapping[str, float] | None, float_type: str | None) -> Mapping[str, float] | None:
    """The build's MAC shares as a runner with ``float_type`` (OpenVINO's hint for every float layer) runs them."""
    if not shares or float_type not in FLOAT_TYPE_PRECISION:
        return shares
    merged: dict[str, float] = {}
    for name, share in shares.items():
        name = FLOAT_TYPE_PRECISION[str(float_type)] if name in FLOAT_TYPE_PRECISION.values() else name
        merged[name] = merged.get(name, 0.0) + share
    return dict(sorted(merged.items(), key=lambda item: -item[1]))


def _unexpected(error: BaseException) -> bool:
    """Whether a failure is not one of sedeploy's own one-line errors (its traceback is worth logging)."""
    return not isinstance(error, SedeployError)


def _problem(error: BaseException) -> str:
    """A failure as a table cell: a sedeploy error's problem clause, else the exception's type and first line."""
    if isinstance(error, SedeployError):
        return _first_clause(str(error))
    return f"{type(error).__name__}: {_first_clause(str(error))}"


def _first_clause(message: str) -> str:
    """The problem part of a one-line error: its first line up to the first "; " outside parentheses (the fix)."""
    line = (message.strip().splitlines() or [""])[0]
    depth = 0
    for index, char in enumerate(line):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and line.startswith("; ", index):
            return line[:index]
    return line


def _candidate(
    row: SearchRow, built: Mapping[tuple[Any, ...], Built | str], open_runner: Opener
) -> Candidate:
    result = built[row.plan.build_key]
    assert isinstance(result, Built)
    plan = row.plan
    return Candidate(
        path=plan.label,
        label=plan.label,
        open=lambda threads: open_runner(plan, result, threads),
        precision=plan.precision,
    )


def _time(
    rows: Sequence[SearchRow],
    built: Mapping[tuple[Any, ...], Built | str],
    open_runner: Opener,
    batches: Sequence[int],
    seconds: float,
    rounds: int,
    warmup: int,
    probe_seconds: float,
    progress: bool = False,
) -> BenchReport:
    """Time ``rows`` interleaved with :func:`sedeploy.bench.bench`, each opened as its plan says."""
    return bench(
        [_candidate(row, built, open_runner) for row in rows],
        batches=batches,
        warmup=warmup,
        duration=seconds,
        rounds=rounds,
        probe_seconds=probe_seconds,
        progress=progress,
    )


def _unopenable(
    rows: Sequence[SearchRow], built: Mapping[tuple[Any, ...], Built | str], open_runner: Opener
) -> tuple[SearchRow, str] | None:
    """The first row whose runner fails to open, with why; None when every one opens."""
    for row in rows:
        result = built[row.plan.build_key]
        assert isinstance(result, Built)
        try:
            open_runner(row.plan, result, None).close()
        except Exception as error:
            return row, _problem(error)
    return None


def _with_timing(row: SearchRow, report: BenchReport) -> SearchRow:
    mine = [bench_row for bench_row in report.rows if bench_row.label == row.label]
    if not mine:
        return row
    largest = max(mine, key=lambda bench_row: bench_row.stats.batch)
    return replace(
        row,
        images_per_s={bench_row.stats.batch: bench_row.stats.images_per_s for bench_row in mine},
        p50_ms=largest.stats.p50_ms,
        p99_ms=largest.stats.p99_ms,
        roof_share=largest.roof_share,
    )


def _ratios(rows: list[SearchRow]) -> list[SearchRow]:
    """Each row's speed over its backend's first timed FP32 candidate (the baseline of that backend)."""
    baselines: dict[str, float] = {}
    for row in rows:
        if row.plan.precision == "fp32" and row.speed and row.plan.backend not in baselines:
            baselines[row.plan.backend] = row.speed
    return [
        replace(row, ratio_to_fp32=row.speed / baselines[row.plan.backend])
        if row.speed and row.plan.backend in baselines
        else row
        for row in rows
    ]


def _mark_pareto(rows: list[SearchRow]) -> list[SearchRow]:
    timed = [row for row in rows if row.speed and row.fidelity is not None]

    def beaten(row: SearchRow) -> bool:
        assert row.speed is not None and row.fidelity is not None
        return any(
            other is not row
            and other.speed is not None
            and other.fidelity is not None
            and other.speed >= row.speed
            and other.fidelity.rank() >= row.fidelity.rank()
            and (other.speed > row.speed or other.fidelity.rank() > row.fidelity.rank())
            for other in timed
        )

    return [replace(row, pareto=True) if row in timed and not beaten(row) else row for row in rows]


def _eligible(rows: Sequence[SearchRow], choosable: Callable[[Plan], bool]) -> list[SearchRow]:
    return [row for row in rows if row.status == "meets budget" and row.speed and choosable(row.plan)]


def _runoff(
    rows: list[SearchRow],
    built: Mapping[tuple[Any, ...], Built | str],
    open_runner: Opener,
    choosable: Callable[[Plan], bool],
    batches: Sequence[int],
    seconds: float,
    rounds: int,
    warmup: int,
    progress: bool,
) -> list[SearchRow]:
    """Time the near-fastest candidates within the budget again, among themselves; record their figures."""
    eligible = sorted(_eligible(rows, choosable), key=lambda row: -(row.speed or 0.0))
    if not eligible:
        return rows
    fastest = eligible[0].speed or 0.0
    contenders = [row for row in eligible if (row.speed or 0.0) >= (1 - RUNOFF_BAND) * fastest][:RUNOFF_SIZE]
    if len(contenders) < 2:
        return rows
    logger.info("search: run-off of %s", ", ".join(row.label for row in contenders))
    report = _time(contenders, built, open_runner, batches, seconds, rounds, warmup, 0.1, progress)
    figures: dict[str, dict[int, float]] = {}
    for bench_row in report.rows:
        figures.setdefault(bench_row.label, {})[bench_row.stats.batch] = bench_row.stats.images_per_s
    return [
        replace(row, runoff_images_per_s=figures[row.label]) if row.label in figures else row for row in rows
    ]


def _choose(rows: list[SearchRow], choosable: Callable[[Plan], bool]) -> list[SearchRow]:
    """Mark the winner: the fastest within the budget, ties (within TIE_BAND) to the most faithful.

    Where a run-off ran, its figures decide among the candidates that took part (they were timed
    together, apart from the slower ones); the others cannot win, being over RUNOFF_BAND slower.
    """
    rows = [
        replace(row, status="baseline", reason="timed for the ratios; not among the asked candidates")
        if row.status == "meets budget" and not choosable(row.plan)
        else row
        for row in rows
    ]
    eligible = _eligible(rows, lambda plan: True)
    if not eligible:
        return rows
    ran_off = [row for row in eligible if row.runoff_speed]

    def speed(row: SearchRow) -> float:
        return (row.runoff_speed if ran_off else row.speed) or 0.0

    pool = ran_off or eligible
    quickest = max(pool, key=speed)
    tied = [row for row in pool if speed(row) >= (1 - TIE_BAND) * speed(quickest)]
    winner = max(tied, key=lambda row: (row.fidelity.rank() if row.fidelity else (0.0,), speed(row)))
    if winner is quickest:
        reason = "fastest within the budget"
    else:
        reason = f"within {100 * TIE_BAND:.0f}% of the fastest ({quickest.label}) and more faithful"
    if ran_off:
        reason += f" (run-off of the {len(ran_off)} within {100 * RUNOFF_BAND:.0f}% of the fastest)"
    return [replace(row, status="chosen", reason=reason) if row is winner else row for row in rows]
