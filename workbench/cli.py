"""The `workbench` command.

workbench run CONFIG [--set key=value …] [--stages 01_prompts,02_responses] [--runs-dir runs]
workbench check CONFIG [--set key=value …]
"""

from __future__ import annotations

import argparse
import logging
import sys

from workbench.config import ConfigError, dump_config, load_config
from workbench.runs import ROOT, STAGES, RunError, execute, new_run, validate_stages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workbench", description="Synthetic fine-tuning data, proven on real data.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="create a run folder and execute the stage notebooks")
    run.add_argument("config")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    run.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    run.add_argument("--runs-dir", default=str(ROOT / "runs"))
    chk = sub.add_parser("check", help="validate a config and print it fully resolved")
    chk.add_argument("config")
    chk.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # its per-notebook paths repeat ours

    try:
        if args.cmd == "check":
            cfg, doc = load_config(args.config, args.set)
            sys.stdout.write(dump_config(cfg, doc))
            return 0
        stages = validate_stages([s.strip() for s in args.stages.split(",")] if args.stages else None)
        run_dir = new_run(args.config, args.set, args.runs_dir)
        print(f"run folder: {run_dir}", flush=True)
        execute(run_dir, stages)
        print(f"run folder: {run_dir}\nreport:     {run_dir / 'report.html'}")
        return 0
    except (ConfigError, RunError) as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
