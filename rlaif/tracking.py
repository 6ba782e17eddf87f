"""Run tracking: every metric goes to wandb (online/offline) and to metrics.jsonl in the run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rlaif.config import Config, to_dict


class Tracker:
    def __init__(self, cfg: Config, out_dir: Path) -> None:
        self.jsonl = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.run = None
        if cfg.wandb.enabled and cfg.wandb.mode != "disabled":
            import wandb

            self.run = wandb.init(
                project=cfg.wandb.project, name=cfg.wandb.run_name or out_dir.name, dir=str(out_dir),
                mode=cfg.wandb.mode, config=to_dict(cfg), reinit="finish_previous",
            )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self.jsonl.flush()
        if self.run is not None:
            self.run.log(clean, step=step)

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        if not rows:
            return
        self.jsonl.write(json.dumps({"step": step, "table": name, "rows": rows}) + "\n")
        if self.run is not None:
            import wandb

            columns = list(rows[0])
            self.run.log({name: wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])},
                         step=step)

    def alert(self, title: str, text: str) -> None:
        """A wandb alert, when wandb is on: sent at once online; offline, recorded in the run file for `wandb sync`."""
        if self.run is not None:
            import wandb

            self.run.alert(title=title[:63], text=text, level=wandb.AlertLevel.WARN)

    def finish(self) -> str | None:
        self.jsonl.close()
        if self.run is None:
            return None
        run_dir = self.run.dir
        self.run.finish()
        return run_dir
