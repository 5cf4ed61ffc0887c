"""The `workbench` command.

workbench run CONFIG [--set key=value …] [--stages 01_prompts,02_responses] [--runs-dir runs] [--new]
               resumes the latest unfinished run of the same config, unless --new
workbench resume RUN_DIR                                       go on with an unfinished run
workbench check CONFIG [--set key=value …]
workbench iterate RUN_DIR (--accept e1,e3 | --accept-all)     the next iteration, from RUN_DIR's 07 patch
workbench loop CONFIG --iterations K [--set key=value …]       K iterations, every proposed edit accepted
workbench init "TASK DESCRIPTION" [-o configs/NAME.yaml] [--labels a,b,c] [--seeds FILE] [--dataset NAME]
               [--set llm.provider=openai --set llm.base_url=…] [--repair-rounds 2] [--force]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from workbench import init, plan, tasks
from workbench.causal import check_args
from workbench.config import ConfigError, RunConfig, check_runnable, dump_config, load_config
from workbench.driver import execute, iterate, validate_stages
from workbench.files import PathError, UnreadableFile, cache_dir, check_writable, project_dir, read_json
from workbench.gaps import load_patch
from workbench.llm import preflight as endpoint
from workbench.runs import STAGES, RunError, find_resumable, new_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workbench", description="Synthetic fine-tuning data, proven on real data.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="create a run folder and execute the stage notebooks")
    run.add_argument("config")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    run.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    run.add_argument("--runs-dir", help="default: runs/ beside the config's folder (files.project_dir)")
    run.add_argument("--new", action="store_true", help="start a new run even when an unfinished one can be resumed")
    res = sub.add_parser("resume", help="go on with a run that did not finish (killed, interrupted, a stage failed)")
    res.add_argument("run_dir")
    chk = sub.add_parser("check", help="validate a config and print it fully resolved")
    chk.add_argument("config")
    chk.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    it = sub.add_parser("iterate", help="run the next iteration with edits of a run's 07_gaps config patch")
    it.add_argument("run_dir", help="a finished run, e.g. runs/banking77/001-20261122-101500")
    it.add_argument("--accept", help="comma-separated edit ids of the patch (artifacts/config_patch.yaml)")
    it.add_argument("--accept-all", action="store_true", help="accept every proposed edit")
    lp = sub.add_parser("loop", help="run CONFIG, then iterate on its failures, K iterations in all, unattended")
    lp.add_argument("config")
    lp.add_argument("--iterations", type=int, required=True, help="iterations in all (the first run included)")
    lp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    lp.add_argument("--runs-dir", help="default: runs/ beside the config's folder (files.project_dir)")
    ini = sub.add_parser("init", help="draft a commented config from a task description with the LLM")
    ini.add_argument("description", help='one sentence, e.g. "Classify support tickets by urgency"')
    ini.add_argument("-o", "--output", help="where to write the YAML (default configs/<name>.yaml)")
    ini.add_argument("--labels", help="comma-separated labels (classification)")
    ini.add_argument("--seeds", help="CSV (text,label) or JSONL file of seed examples")
    ini.add_argument("--dataset", help="folder under data/ with the real train/test split (default: detected)")
    ini.add_argument("--set", action="append", default=[], metavar="llm.KEY=VALUE", help="the drafting LLM")
    ini.add_argument("--repair-rounds", type=int, default=2, help="rounds of feeding errors back to the LLM")
    ini.add_argument("--force", action="store_true", help="replace an existing output file")
    args = ap.parse_args(argv)
    if getattr(args, "runs_dir", "") is None:
        args.runs_dir = str(project_dir(args.config) / "runs")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # its per-notebook paths repeat ours
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`: the run is marked interrupted, like Ctrl-C

    try:
        if args.cmd == "check":
            cfg, doc = load_config(args.config, args.set)
            sys.stdout.write(dump_config(cfg, doc))
            try:  # the data the config names: a config that would fail at once is no valid config
                tasks.of(cfg).check_data(cfg)
            except ConfigError as e:
                print(f"workbench: error: {e}", file=sys.stderr)
                return 2
            print_estimate(cfg)
            return 0
        if args.cmd == "init":
            return _init(args)
        if args.cmd == "iterate":
            if bool(args.accept) == args.accept_all:
                raise RunError("iterate: give --accept e1,e2 (edit ids of the patch) or --accept-all, not both")
            accept = [a.strip() for a in args.accept.split(",")] if args.accept else None
            if (Path(args.run_dir) / "config.yaml").is_file():  # the endpoint and data, before a new run exists
                preflight(load_config(Path(args.run_dir) / "config.yaml")[0])
            run_dir = iterate(args.run_dir, accept, args.accept_all)
            return _execute(run_dir, None)
        if args.cmd == "loop":
            return _loop(args)
        if args.cmd == "resume":
            prov = read_json(Path(args.run_dir) / "provenance.json")
            if prov and prov.get("status") != "finished" and (Path(args.run_dir) / "config.yaml").is_file():
                preflight(load_config(Path(args.run_dir) / "config.yaml")[0])  # the endpoint may have moved on
            return _execute(Path(args.run_dir), prov.get("stages_requested"))
        stages = validate_stages([s.strip() for s in args.stages.split(",")] if args.stages is not None else None)
        cfg = load_config(args.config, args.set)[0]
        check_runnable(cfg, stages)
        if stages is None or "05_train" in stages:
            _check_trainers(cfg)
        preflight(cfg)
        found = None if args.new else find_resumable(args.config, args.set, args.runs_dir, stages)
        if found:
            run_dir, lock = found
            print(f"resuming {run_dir} (it did not finish; --new starts a new run instead)", flush=True)
            return _execute(run_dir, stages, lock)
        run_dir = new_run(args.config, args.set, args.runs_dir, stages=stages)
        return _execute(run_dir, stages)
    except (ConfigError, RunError, UnreadableFile, PathError) as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("workbench: interrupted; the run is marked so in its provenance.json, and the same command "
              "resumes it", file=sys.stderr)  # fmt: skip
        return 130


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _execute(run_dir, stages, lock=None) -> int:
    print(f"run folder: {run_dir}", flush=True)
    execute(run_dir, stages, lock)
    print(f"run folder: {run_dir}\nreport:     {run_dir / 'report.html'}")
    calls = [v["llm"] for v in read_json(run_dir / "metrics.json").values() if isinstance(v, dict) and "llm" in v]
    if calls:  # on a resumed run, the calls paid for before it stopped are among the cached ones
        print(f"LLM calls:  {sum(c['calls'] for c in calls)}, answered from the cache "
              f"{sum(c['cached'] for c in calls)}, failed {sum(c['errors'] for c in calls)}")  # fmt: skip
    if (run_dir.parent / "index.html").is_file():
        print(f"lineage:    {run_dir.parent / 'index.html'}")
    return 0


def _loop(args: argparse.Namespace) -> int:
    if args.iterations < 1:
        raise RunError(f"loop: --iterations must be at least 1; got {args.iterations}")
    validate_stages(None)
    cfg = load_config(args.config, args.set)[0]
    check_runnable(cfg)
    _check_trainers(cfg)
    preflight(cfg)
    run_dir = new_run(args.config, args.set, args.runs_dir)
    for k in range(1, args.iterations + 1):
        print(f"iteration {k} of {args.iterations}", flush=True)
        if k > 1:
            if not load_patch(run_dir / "artifacts" / "config_patch.yaml"):
                print(f"07_gaps of {run_dir.name} proposed no edit: the loop stops after {k - 1} iteration(s)")
                break
            run_dir = iterate(run_dir, accept_all=True)
        _execute(run_dir, None)
    return 0


def preflight(cfg: RunConfig) -> None:
    """What can be checked before a run folder exists, so a mistake costs nothing: the labels and
    the data (the dataset's files, the seeds file: columns, encoding, labels) and each endpoint
    the roles name (it answers, takes the key, serves the model)."""
    where = (
        f"WORKBENCH_CACHE={os.environ['WORKBENCH_CACHE']}" if os.environ.get("WORKBENCH_CACHE") else "the cache folder"
    )
    check_writable(cache_dir(), where)
    tasks.of(cfg).check_data(cfg)
    for model in cfg.models_in_use().values():  # the generator's and every other role's endpoint
        if model.provider == "openai":
            endpoint(model)


def _check_trainers(cfg: RunConfig) -> None:
    """Unknown trl / peft fields in train.* fail now, not after the generation stages have run."""
    if "causal" in cfg.train.students:
        check_args(cfg.train)


def print_estimate(cfg: RunConfig) -> None:
    """The pre-run estimate, on stderr so `check`'s stdout stays a loadable YAML file."""
    try:
        check_runnable(cfg, ["00_task", "01_prompts", "02_responses", "03_judge", "04_filter"])
        t = tasks.of(cfg)  # the type's labels (a tool call's: its tools), seeds and real rows per label
        seeds = t.seeds(cfg) if cfg.data.dataset or cfg.data.seeds_file else None
        est = plan.estimate(cfg, t.labels(cfg), t.label_counts(cfg), cache_dir(), seeds)
    except ConfigError as e:
        print(f"(no estimate: {e})", file=sys.stderr)
        return
    print("\npre-run estimate (LLM calls, tokens at ~4 characters each, cost, seconds):", file=sys.stderr)
    print(est.to_string(index=False, float_format=lambda x: f"{x:,.1f}"), file=sys.stderr)


def _init(args: argparse.Namespace) -> int:
    res = init.draft(
        args.description,
        labels=args.labels,
        seeds_file=args.seeds,
        dataset=args.dataset,
        llm_overrides=args.set,
        repair_rounds=args.repair_rounds,
    )
    out = args.output or str(Path("configs") / f"{res.cfg.task.name}.yaml")  # the project in the current folder
    init.write(res, out, force=args.force)
    cfg, _ = load_config(out)  # what was written loads: the proof that it is usable
    print(f"wrote {out}  (repair rounds: {res.rounds}; unparseable replies: {res.unparseable}/{len(res.replies)})")
    for note in res.notes:
        print(f"  - {note}")
    print_estimate(cfg)
    try:
        check_runnable(cfg)
        print(f"next: workbench run {out}")
    except ConfigError as e:
        print(f"note: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
