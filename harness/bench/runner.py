"""The benchmark runner: orchestration only.

For each (n_tokens, nodes, repeat) group of the plan (:mod:`attrbench.bench.plan`) it launches every cell through the
chosen launcher (:class:`attrbench.api.Launcher`; the worker it runs is :mod:`attrbench.bench.worker`),
compares each graph with its group's yardstick (:mod:`attrbench.bench.yardstick`) and records the cell in
the results document (:mod:`attrbench.bench.results`), which is rewritten atomically after every cell.
Cells kept from ``--resume`` are not run again; with ``--strict``, cells that ``estimate`` predicts will not
fit are recorded as ``oom`` without running.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from attrbench.api import CellJob, Launcher
from attrbench.bench.estimate import predict_unfit
from attrbench.bench.plan import TRUTH_DTYPE, Cell, plan_cells, truth_cell
from attrbench.bench.results import CellRecord, ResultsDocument, ResultsWriteError
from attrbench.bench.schedule import run_groups, run_with_retries
from attrbench.bench.scratch import ScratchFolder
from attrbench.bench.settings import BenchSettings
from attrbench.bench.yardstick import GroupYardsticks, no_yardstick_advice
from attrbench.graph.verdicts import NO_YARDSTICK
from attrbench.plugin_manager import BackendRegistry, get_backends
from attrbench.workload.spec import WorkloadSpec, with_overrides

#: graphs above this size get a progress line before parity (it reads both adjacencies, minutes at 70k nodes)
LARGE_GRAPH_BYTES = 2**30


@dataclass
class RunConfig:
    """Everything one ``attrbench run`` needs (validated by the CLI)."""

    spec: WorkloadSpec
    backends: list[str]
    nodes: list[int]
    settings: BenchSettings
    output: Path | None = None
    resume: dict[str, Any] | None = None
    #: folder for the run's graphs (default: next to ``output``); shared by all nodes of a cluster
    scratch: Path | None = None
    #: prompt lengths to sweep (``--n-tokens 64,256,...``), each its own workload; None: the spec's own
    lengths: list[int] | None = None

    @property
    def prompt_lengths(self) -> list[int]:
        """The run's prompt lengths, ascending (the spec's own when it sweeps none)."""
        return sorted(set(self.lengths)) if self.lengths else [self.spec.prompt.length]

    def spec_for(self, n_tokens: int | None) -> WorkloadSpec:
        """The workload of one prompt length: the same model and transcoder weights, the prompt extended (the
        seeded prompt of n tokens is the first n of any longer one)."""
        if n_tokens is None or n_tokens == self.spec.prompt.length:
            return self.spec
        return with_overrides(self.spec, n_tokens=n_tokens)

    def workload_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "name": self.spec.name,
            "hash": self.spec.content_hash(),
            "config": self.spec.to_dict(),
            "n_active": None,
            "n_tokens": self.prompt_lengths,
        }
        if len(self.prompt_lengths) > 1:
            record["hashes"] = {str(t): self.spec_for(t).content_hash() for t in self.prompt_lengths}
        return record


class Runner:
    """Runs a :class:`RunConfig` cell by cell through ``launcher``, keeping the results document up to date."""

    def __init__(self, config: RunConfig, launcher: Launcher, progress: TextIO | None = None):
        self.config = config
        self.launcher = launcher
        self.stream = progress if progress is not None else sys.stderr
        self.backends: BackendRegistry = get_backends()
        self.results = ResultsDocument(
            config.workload_record(), config.settings.to_dict(), config.output, config.resume
        )
        self.scratch = ScratchFolder(config.output, config.scratch)
        #: set on Ctrl-C: cells still in flight in other groups are not recorded
        self.stopping = False
        self.said_no_yardstick = False

    def say(self, text: str) -> None:
        print(f"attrbench: {text}", file=self.stream, flush=True)

    def run(self) -> dict[str, Any]:
        """Run every cell; returns the results document (also written to ``config.output``)."""
        c = self.config
        lengths = c.prompt_lengths
        plan = plan_cells(c.backends, c.nodes, c.settings.repeats, self.backends, c.settings.dtype, lengths)
        todo = [cell for cell in plan if cell.key not in self.results.kept]
        too_big: dict[tuple[str, int | None, int], str] = {}
        for t in lengths:
            at = [cell for cell in todo if cell.n_tokens == t]
            tokens = t if len(lengths) > 1 else None
            unfit = predict_unfit(c.spec_for(t), at, self.backends, c.settings, self.say, tokens)
            too_big.update({(b, t, n): reason for (b, n), reason in unfit.items()})
        counter = itertools.count(1)

        def run_group(group: list[Cell]) -> None:
            first = group[0]
            truth = truth_cell(
                c.backends, self.backends, c.settings.dtype, first.nodes, first.repeat, first.n_tokens, first.sweep
            )
            spec = c.spec_for(first.n_tokens)
            with GroupYardsticks(c.backends, self.backends, spec, self._rerun, truth, c.settings.dtype) as yardsticks:
                for cell in group:
                    if self.stopping:
                        return
                    tag = f"[{next(counter)}/{len(plan)}] {cell.label()}"
                    status = self._one(cell, tag, too_big.get((cell.backend, cell.n_tokens, cell.nodes)), yardsticks)
                    yardsticks.record(cell.backend, status)

        try:
            self.scratch.remove_stale(self.say)
            self.results.start()
            groups = [list(g) for _, g in itertools.groupby(plan, key=lambda cell: cell.group)]
            run_groups(groups, run_group, self.launcher)
            return self.results.doc
        except KeyboardInterrupt:
            self.stopping = True
            self.say("interrupted; stopping (finished cells are kept)")
            raise
        except ResultsWriteError as exc:  # disk full: the file keeps what it had, this cell goes to stderr
            exc.report(self.stream)
            raise
        finally:
            self.results.close()
            self.scratch.remove()

    def _one(self, cell: Cell, tag: str, too_big: str | None, yardsticks: GroupYardsticks) -> str:
        """Run (or keep, or skip) one cell and record it; returns its status."""
        if cell.key in self.results.kept:
            self.say(f"{tag}: kept from --resume (ok)")
            yardsticks.keep(cell, self.results.record(cell.key))
            return "ok"
        record = CellRecord(
            cell.backend, self.backends[cell.runs].exact, cell.nodes, cell.repeat, n_tokens=cell.n_tokens
        )
        if too_big is not None and self.config.settings.strict:
            record = replace(record, status="oom", error=f"{too_big}; not run (--strict)")
            wall = ""
        else:
            self.say(f"{tag}: started")
            t0 = time.monotonic()
            values, graph_dir = self._launch(cell, tag)
            record = replace(record, **values)
            if graph_dir is not None:
                if (graph_dir / "adjacency.npy").stat().st_size > LARGE_GRAPH_BYTES:
                    self.say(f"{tag}: comparing its graph with its yardstick's")
                record = replace(record, **yardsticks.compare(cell, graph_dir))
                if record.parity:
                    self.results.note(yardsticks.note(cell, record.parity["against"]))
                self.results.note(yardsticks.truth_note(cell))
            wall = f" {record.wall_s:.3f} s" if record.wall_s is not None else f" after {time.monotonic() - t0:.1f} s"
        record = replace(record, **yardsticks.judge(cell, record.to_dict()))
        if self.stopping:  # interrupted while this cell ran in another group: not a finished cell
            return record.status
        self.results.put(record)
        verdict = f", parity {record.verdict}" if record.status == "ok" else ""
        self.say(f"{tag}: {record.status}{wall}{verdict}" + (f" ({record.error})" if record.error else ""))
        if record.verdict == NO_YARDSTICK and not self.said_no_yardstick:
            self.said_no_yardstick = True
            self.say(no_yardstick_advice(cell, self.backends))
        return record.status

    def _launch(self, cell: Cell, tag: str) -> tuple[dict[str, Any], Path | None]:
        """Run ``cell`` through the launcher; returns its values and its graph folder (None unless ok)."""
        graph_dir = self.scratch.new_graph_dir()
        settings = self.config.settings
        if cell.truth_of is not None:
            settings = replace(settings, dtype=TRUTH_DTYPE)
        job = CellJob(
            self.config.spec_for(cell.n_tokens).to_dict(),
            cell.runs,
            cell.nodes,
            cell.repeat,
            settings.to_dict(),
            str(graph_dir),
        )

        def lost(values: dict[str, Any], attempt: int) -> bool:
            """Record a lost worker once (a run stopped now still shows it; the retry replaces it)."""
            if self.stopping:
                return False
            exact = self.backends[cell.runs].exact
            self.results.put(
                CellRecord(
                    cell.backend,
                    exact,
                    cell.nodes,
                    cell.repeat,
                    "error",
                    error=values.get("error"),
                    n_tokens=cell.n_tokens,
                )
            )
            self.say(f"{tag}: {values.get('error')}; retrying ({attempt}/{settings.retries})")
            return True

        progress = lambda text: self.say(f"{tag}: {text}")  # noqa: E731
        values = run_with_retries(self.launcher, job, settings.timeout_s, progress, settings.retries, lost)
        if "traceback" in values:
            values["error_traceback"] = values.pop("traceback")
        if values["status"] == "ok" and (graph_dir / "adjacency.npy").exists():
            return values, graph_dir
        shutil.rmtree(graph_dir, ignore_errors=True)
        return values, None

    def _rerun(self, cell: Cell) -> Path | None:
        self.say(f"re-running {cell.label()} for its graph (its record was kept from --resume)")
        return self._launch(cell, f"{cell.label()} (re-run for its graph)")[1]


def run(config: RunConfig, launcher: Launcher, progress: TextIO | None = None) -> dict[str, Any]:
    """Run every cell of ``config``; returns the results document (also written to ``config.output``).

    Raises ``KeyboardInterrupt`` after stopping the running cell and writing the finished cells.
    """
    return Runner(config, launcher, progress).run()
