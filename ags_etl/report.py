"""What a pipeline run did: one :class:`JobReport` per job, a :class:`RunReport` for the run.

The same object gives the summary table printed at the end of ``ags-etl run``
(:func:`summary_table`) and the JSON report for orchestrators (:meth:`RunReport.to_json`,
:meth:`RunReport.write_json`). Neither holds a secret: error messages are redacted by
the runner before they get here, and no source URL, parameter or credential is kept.

JSON layout (``report_version`` 1)::

    {"report_version": 1, "pipeline": "pipelines/demo.yaml", "started_at": "2024-06-11T09:00:00Z",
     "seconds": 1.2, "exit_code": 0, "status": "ok",  # or 1 "failed", 75 "locked", 130 "interrupted"
     "counts": {"ok": 7, "failed": 0, "skipped": 0},
     "jobs": [{"name": "parks", "job": "parks", "status": "ok", "features_read": 40,
               "dropped_by_clip": 0, "written": 40, "pages": 2, "requests": 6, "retries": 0,
               "seconds": 0.3, "strategy": "oid-list", "expected": 40,
               "output": "out/parks.geojson", "error": null, "warnings": []}, ...]}
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "failed", "skipped", "locked"]

REPORT_VERSION = 1


@dataclass
class JobReport:
    """One job (one layer of a multi-layer job) of a run.

    ``name`` is the job as run (``job/service/layer`` for a layer of a multi-layer job),
    ``job`` the job's name as written in the pipeline file. Counts of a failed job are what
    was done before it failed; ``output`` is set only when the output was written.
    """

    name: str
    job: str
    status: Status
    features_read: int = 0
    dropped_by_clip: int = 0
    written: int = 0
    pages: int = 0
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    strategy: str | None = None
    expected: int | None = None
    output: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    #: Sync jobs: "full" or "incremental", and the features deleted because the source lost them.
    sync: str | None = None
    deleted: int = 0


@dataclass
class RunReport:
    """All jobs of one run, in the order they were run (skipped ones included)."""

    jobs: list[JobReport]
    pipeline: str | None = None
    started_at: str = ""
    seconds: float = 0.0
    #: The run was stopped (Ctrl-C, SIGTERM) before every job had its turn.
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(j.status == "ok" for j in self.jobs)

    @property
    def exit_code(self) -> int:
        """0 when every job succeeded, 1 when any failed (or was skipped after a failure),
        75 when none failed but a job could not run because another run held its lock,
        130 when the run was interrupted — the exit code of ``ags-etl run``."""
        if self.interrupted:
            return 130
        if any(j.status in ("failed", "skipped") for j in self.jobs):
            return 1
        return 75 if any(j.status == "locked" for j in self.jobs) else 0

    @property
    def status(self) -> str:
        if self.interrupted:
            return "interrupted"
        return "ok" if self.ok else "locked" if self.exit_code == 75 else "failed"

    def counts(self) -> dict[str, int]:
        """Jobs per status; ``locked`` only when a job was locked."""
        out = {"ok": 0, "failed": 0, "skipped": 0}
        for j in self.jobs:
            out[j.status] = out.get(j.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "report_version": REPORT_VERSION,
            "pipeline": self.pipeline,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
            "status": self.status,
            "counts": self.counts(),
            "jobs": [{**asdict(j), "seconds": round(j.seconds, 3)} for j in self.jobs],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (temp file beside it, then rename)."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or Path("."))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_json())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target


_COLUMNS = ("job", "status", "read", "clipped", "written", "pages", "retries", "seconds", "output")
_RIGHT = {"read", "clipped", "written", "pages", "retries", "seconds"}


def _row(j: JobReport) -> tuple[str, ...]:
    if j.status in ("skipped", "locked"):
        return (j.name, j.status, "", "", "", "", "", "", "")
    return (
        j.name,
        j.status,
        f"{j.features_read:,}",
        f"{j.dropped_by_clip:,}",
        f"{j.written:,}",
        f"{j.pages:,}",
        f"{j.retries:,}",
        f"{j.seconds:.1f}",
        j.output or "-",
    )


def summary_table(report: RunReport, *, errors: bool = True) -> str:
    """The end-of-run table (one line per job), then (with ``errors``) one line per failed
    job with its error, one per loader warning, then a totals line. Plain text, for
    terminals and logs alike."""
    rows = [_COLUMNS, *(_row(j) for j in report.jobs)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if name in _RIGHT else c.ljust(w) for c, w, name in zip(r, widths, _COLUMNS)]
        lines.append("  ".join(cells).rstrip())
    for j in report.jobs:
        if errors and j.error is not None:
            lines.append(f"{j.name}: {j.error}")
        for w in j.warnings:
            lines.append(f"{j.name}: warning: {w}")
    c = report.counts()
    lines.append(
        f"{len(report.jobs)} job{'' if len(report.jobs) == 1 else 's'}: {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped"
        + (f", {c['locked']} locked" if "locked" in c else "")
        + f" in {report.seconds:.1f} s"
    )
    return "\n".join(lines)
