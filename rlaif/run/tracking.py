"""Run tracking: every metric goes to wandb (online/offline) and to metrics.jsonl in the run folder.

metrics.jsonl is the record; wandb is a view of it. A wandb failure never ends a run: `ray job stop`, SLURM and
Kubernetes send SIGTERM to the whole process tree, so wandb's service process (a child of the driver) dies while the
run is still finishing its step and writing the checkpoint. Then wandb is switched off with a warning, the run goes
on, and metrics.jsonl keeps every metric (with `tracking/wandb_failed` = 1 from that step on)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlaif.config import Config, to_dict
from rlaif.data.human_labels import atomic_write_text

log = logging.getLogger("rlaif")
PLOTS = ("table", "line", "bar", "scatter")  # the kinds of Tracker.log_plot


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity (json.dumps would write bare NaN, which no JSON reader accepts): null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class Tracker:
    """resume_step / resume_id: a run resumed from the checkpoint of that step continues its metrics.jsonl (rows of
    later steps, logged before the interruption, are dropped: the resumed run logs them again) and its wandb run."""

    def __init__(self, cfg: Config, out_dir: Path, resume_step: int | None = None, resume_id: str | None = None,
                 job_type: str = "") -> None:
        path = out_dir / "metrics.jsonl"
        if resume_step is not None and path.is_file():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line + "\n")
                except json.JSONDecodeError:
                    continue  # the torn last line of a killed run
            atomic_write_text(path, "".join(kept))
        self.jsonl = open(path, "a", encoding="utf-8")
        self.warned: set[str] = set()
        self.run = None
        self.wandb_failed = False
        wc = cfg.wandb
        if wc.enabled and wc.mode != "disabled":
            import wandb

            self.run = wandb.init(
                project=wc.project, entity=wc.entity or None, group=wc.group or None, tags=list(wc.tags) or None,
                job_type=wc.job_type or job_type or None, notes=wc.notes or None,
                name=wc.run_name or out_dir.name, dir=str(out_dir), mode=wc.mode, config=to_dict(cfg),
                reinit="finish_previous", id=resume_id, resume="allow" if resume_id else None,
            )
            if wc.mode == "online":
                log.info("wandb: %s", self.run.url)
            else:  # the run's own folder: wandb sync uploads it later
                log.info("wandb: offline run in %s; upload it with `wandb sync %s`", self.run.dir.rsplit("/", 1)[0],
                         self.run.dir.rsplit("/", 1)[0])
        self.run_id: str | None = self.run.id if self.run is not None else None  # kept for resume if wandb fails

    def _wandb(self, what: str, call: Callable[[], Any]) -> None:
        if self.run is None:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - any wandb failure: metrics.jsonl stays the record
            import wandb

            log.warning("wandb failed (%s: %s: %s); wandb is off for the rest of this run, metrics.jsonl keeps every "
                        "metric", what, type(exc).__name__, exc)
            self.run, self.wandb_failed = None, True
            try:
                wandb.teardown()  # unregisters wandb's exit hook, which would print the same error again at exit
            except Exception:  # noqa: BLE001 - the service is gone; nothing left to close
                pass

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.wandb_failed:
            numbers["tracking/wandb_failed"] = 1.0
        for key, value in numbers.items():
            if not math.isfinite(value) and key not in self.warned:
                self.warned.add(key)
                log.warning("metric %s is %s at step %d (written as null to metrics.jsonl)", key, value, step)
        self.jsonl.write(json.dumps(json_safe({"step": step, **numbers}), allow_nan=False) + "\n")
        self.jsonl.flush()
        self._wandb(f"log at step {step}", lambda: self.run.log(numbers, step=step))

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        if not rows:
            return
        self.jsonl.write(json.dumps(json_safe({"step": step, "table": name, "rows": rows}), allow_nan=False) + "\n")
        self.jsonl.flush()
        if self.run is not None:
            import wandb

            columns = list(rows[0])
            table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
            self._wandb(f"table {name} at step {step}", lambda: self.run.log({name: table}, step=step))

    @property
    def panels(self) -> bool:
        """Is wandb on, so that report panels (rlaif.audit.panels) are worth building?"""
        return self.run is not None

    def log_plot(self, name: str, rows: list[dict[str, Any]], kind: str = "table", x: str = "", y: str = "",
                 title: str = "", step: int = 0, stroke: str | None = None) -> None:
        """A report figure as a wandb panel: `rows` as a wandb.Table under `name` (kind "table"), or a chart over
        them (kind "line", with one line per value of the `stroke` column; "bar", x the label column and y the value;
        "scatter"), whose table wandb keeps as `<name>_table`. wandb only: the figures' record is the report's HTML
        and JSON; with wandb off this does nothing."""
        if kind not in PLOTS:
            raise ValueError(f"log_plot: kind {kind!r} is not one of {', '.join(PLOTS)}")
        if self.run is None or not rows:
            return
        import wandb

        columns = list(dict.fromkeys(c for r in rows for c in r))
        table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows],
                            allow_mixed_types=True)
        if kind == "line":
            panel = wandb.plot.line(table, x, y, stroke=stroke, title=title)
        elif kind == "bar":
            panel = wandb.plot.bar(table, x, y, title=title)
        elif kind == "scatter":
            panel = wandb.plot.scatter(table, x, y, title=title)
        else:
            panel = table
        self._wandb(f"panel {name} at step {step}", lambda: self.run.log({name: panel}, step=step))

    def alert(self, title: str, text: str) -> None:
        """A wandb alert, when wandb is on: sent at once online; offline, recorded in the run file for `wandb sync`."""
        if self.run is not None:
            import wandb

            self._wandb("alert", lambda: self.run.alert(title=title[:63], text=text, level=wandb.AlertLevel.WARN))

    def mark(self, summary: dict[str, Any], tags: list[str]) -> None:
        """Set values in the wandb run's summary and add tags (the trust gate's decision); metrics.jsonl gets the
        summary as one `summary` row (step 0)."""
        self.jsonl.write(json.dumps(json_safe({"step": 0, "summary": summary, "tags": tags})) + "\n")
        self.jsonl.flush()
        if self.run is not None:
            def update() -> None:
                self.run.summary.update(summary)
                self.run.tags = tuple(dict.fromkeys((*self.run.tags, *tags)))

            self._wandb("summary", update)

    def finish(self) -> str | None:
        self.jsonl.close()
        if self.run is None:
            return None
        run_dir = self.run.dir
        self._wandb("finish", self.run.finish)
        return run_dir if not self.wandb_failed else None
