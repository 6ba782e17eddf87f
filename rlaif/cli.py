"""`rlaif` command line: `rlaif train --config configs/debug.yaml key.path=value ...`."""

from __future__ import annotations

import argparse
import logging
import sys

from rlaif.config import ConfigError, load_config
from rlaif.data import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlaif", description="RL from AI feedback (Constitutional AI) on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="AI-label pairs, train the preference model, then RL the policy")
    train.add_argument("--config", required=True, help="YAML config (see configs/)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.steps=3 output_dir=runs/x")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        from rlaif.trainer import train as run_train  # imports Ray and the actors: only once the config is good

        checkpoint = run_train(cfg)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print(f"rlaif: error: {exc}", file=sys.stderr)
        return 2
    print(f"rlaif: done; policy checkpoint at {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
