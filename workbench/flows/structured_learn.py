"""The stage bodies of tool calls and extraction, 05-07: the tagger and causal students, slot
scores on the real test rows, failure clusters by error signature and the config patch
(`flows.structured` makes their pages' results). Rows keep their answers as dicts; artifacts store those
columns as JSON text (`save_rows`, `load_rows`).
"""

from __future__ import annotations

import logging
import math
import time

import joblib
import numpy as np
import pandas as pd

from workbench import causal, clusters, evaluate, gaps, structured, tagger, tasks
from workbench import train as trainer
from workbench.config import LLMConfig, RunConfig
from workbench.files import cache_dir
from workbench.flows import common
from workbench.flows.structured_build import answer_text, load_rows, save_rows
from workbench.llm import LLM, local_model_dir
from workbench.stage import Stage

log = logging.getLogger(__name__)


# slot F1 of commercial NLU services trained on real SNIPS queries per intent, averaged over the 7
# intents weighted by slot frequency, as the structured-tasks issue summarises the benchmark's
# published metrics (sonos/nlu-benchmark, 2017-06-custom-intent-engines/<Intent>/<Service>_metrics.json)
PUBLISHED_SNIPS = pd.DataFrame(
    [
        {"real queries per intent": "10", "slot F1 of the services": "0.35 to 0.58"},
        {"real queries per intent": "70", "slot F1 of the services": "0.59 to 0.83"},
        {"real queries per intent": "about 2,000", "slot F1 of the services": "0.94 (Snips)"},
    ]
)


# ---------------------------------------------------------------- 05_train


def _as_many(cfg: RunConfig, kept_set: pd.DataFrame) -> int:
    return math.ceil(len(kept_set) / max(1, len(structured.tools_of(cfg))))


def train_stage(stage: Stage) -> pd.DataFrame:
    """05: the tagger (`train.students` has probe: the MiniLM token tagger, the structured tasks'
    probe) on seeds, seeds + every generated message, seeds + the kept rows, and on real train rows
    (as many as the kept set, per tool; and `train.reference_rows` or all); the causal student
    (`causal`: SFT on seeds + kept rows writing the answer JSON, DPO on 03's pairs and GRPO with
    the verifiable rewards field_f1 and schema_valid, both from the SFT model). The references are
    taggers: a causal SFT on real rows would double the CPU demo's training time. Saves `training`."""
    cfg = stage.cfg
    t = tasks.of(cfg)
    seeds, rows = load_rows(stage, "seeds"), load_rows(stage, "dataset")
    sets = t.training_sets(seeds, rows)
    params = {k: list(v) for k, v in structured.tools_of(cfg).items()}
    as_many = structured.reference_rows(cfg, _as_many(cfg, sets["seeds_synthetic"]))
    out = []
    folder = stage.artifacts / "students"
    if "probe" in cfg.train.students:
        named = dict(sets)
        if cfg.train.reference:
            named["reference_as_many"] = as_many
            named["reference"] = _reference(cfg)
        for name, train in named.items():
            m = tagger.train_tagger(train, params, seed=cfg.seed)
            path = folder / f"{name}.joblib"
            path.parent.mkdir(parents=True, exist_ok=True)
            joblib.dump(m, path)
            out.append({"student": "tagger", "model": name, "train_rows": len(train),
                        "train_seconds": round(m.train_seconds, 1), "path": str(path)})  # fmt: skip
    if "causal" in cfg.train.students:
        out += _train_causal(stage, sets["seeds_synthetic"])
    training = pd.DataFrame(out)
    stage.save(training.astype({c: str for c in training.columns if training[c].dtype == object}), "training")
    return training


def _reference(cfg: RunConfig) -> pd.DataFrame:
    rows = structured.reference_rows(cfg, None)
    n = cfg.train.reference_rows
    return rows.sample(n=n, random_state=cfg.data.seed) if n is not None and n < len(rows) else rows


def _train_causal(stage: Stage, train: pd.DataFrame) -> list[dict]:
    cfg = stage.cfg
    t = tasks.of(cfg)
    causal.check_args(cfg.train)
    base = local_model_dir(cfg.train.model, cache_dir())
    system = t.answer_system(cfg, brief=True)
    folder = stage.artifacts / "causal"
    sft_rows = t.sft_rows(cfg, train)
    out = []
    methods = cfg.train.methods
    start = common.start_of(stage) or base
    if "sft" in methods or {"dpo", "grpo"} & set(methods):
        data = causal.sft_dataset(sft_rows, system)
        out.append({"model": "sft", "start": str(start)} | causal.fit("sft", start, data, cfg, folder / "sft"))
    sft = folder / "sft" / "merged"
    if "dpo" in methods:
        pairs = stage.load("pairs")
        if len(pairs):
            data = causal.dpo_dataset(pairs, system)
            out.append({"model": "dpo"} | causal.fit("dpo", sft, data, cfg, folder / "dpo"))
        else:
            log.warning("dpo skipped: 03 made no DPO pairs")
    if "grpo" in methods:
        data = causal.grpo_dataset(sft_rows, system)
        judges = stage.jury() if "judge" in cfg.train.grpo_reward else None
        funcs = trainer.grpo_rewards(cfg, t.rewards(cfg), judges)
        out.append({"model": "grpo"} | causal.fit("grpo", sft, data, cfg, folder / "grpo", reward_funcs=funcs))
    return [{"student": "causal"} | r for r in out]


def training_markdown(training: pd.DataFrame) -> str:
    lines = [f"- {r.student} `{r.model}`: {r.train_rows} rows, {r.train_seconds} s" for r in training.itertuples()]
    return "\n".join(lines) or "No student (train.students is empty)."


# ---------------------------------------------------------------- 06_evaluate

GROUPS = {"seeds_only": "synthetic", "seeds_unfiltered": "synthetic", "seeds_synthetic": "synthetic",
          "reference_as_many": "reference", "reference": "reference"}  # fmt: skip


def evaluate_stage(stage: Stage) -> dict:
    """06 on the real test rows: each tagger on every test row; the untuned model under the
    schema and each causal student on `evaluate.causal_test_per_label` rows per tool (every model
    is also scored on those shared rows for the paired deltas). Saves `evaluation` (one row per
    model: slot precision, recall, F1 with CIs, exact match, tool accuracy, parsed share),
    `test_answers` (every model's answer per test row), `ablation` and `per_slot`."""
    cfg = stage.cfg
    t = tasks.of(cfg)
    test = t.test(cfg)
    boot = cfg.evaluate.bootstrap
    training = stage.load("training")
    answers: dict[str, list] = {}
    rows_of: dict[str, pd.DataFrame] = {}
    meta: dict[str, dict] = {}
    for r in training[training["student"] == "tagger"].itertuples():
        m = joblib.load(r.path)
        t0 = time.perf_counter()
        answers[f"tagger: {r.model}"] = m.answers(list(test["text"]))
        rows_of[f"tagger: {r.model}"] = test
        meta[f"tagger: {r.model}"] = {"group": GROUPS.get(r.model, "synthetic"), "train_rows": int(r.train_rows),
                                       "answer_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    shared = test
    if cfg.evaluate.causal_test_per_label is not None:
        shared = (
            test.sample(frac=1.0, random_state=cfg.seed).groupby("tool").head(cfg.evaluate.causal_test_per_label)
        ).sort_values(["tool", "id"])
    shared = shared.reset_index(drop=True)
    texts = list(shared["text"])
    llm_cfg = {**cfg.llm.model_dump(), "provider": "local", "model": cfg.train.model, "dtype": cfg.evaluate.dtype,
               "batch_size": cfg.evaluate.batch_size}  # fmt: skip
    raws: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    base = LLM(LLMConfig(**llm_cfg), cache_dir())
    answers["causal: untuned (schema-constrained)"], raws["untuned"] = t.llm_answers(cfg, texts, base, "06 untuned")
    rows_of["causal: untuned (schema-constrained)"] = shared
    meta["causal: untuned (schema-constrained)"] = {"group": "baseline", "train_rows": 0,
                                                     "answer_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    for r in training[training["student"] == "causal"].itertuples():
        name = f"causal: {r.model}"
        t0 = time.perf_counter()
        student = LLM(LLMConfig(**{**llm_cfg, "model": r.merged}), stage.artifacts / "causal" / ".calls")
        answers[name], raws[r.model] = t.llm_answers(cfg, texts, student, f"06 {r.model}", brief=True)
        rows_of[name] = shared
        meta[name] = {"group": "reference" if r.model.startswith("reference") else "synthetic",
                      "train_rows": int(r.train_rows), "answer_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    table = []
    for name, ans in answers.items():
        s = t.score(rows_of[name], ans, boot, seed=cfg.seed)
        table.append({"model": name, **meta[name], **s})
    table = pd.DataFrame(table)
    stage.save(table, "evaluation")
    # safety before/after: the untuned model and each causal student answer harmful instructions
    chat = {evaluate.CAUSAL_ZERO_SHOT: local_model_dir(cfg.train.model, cache_dir())}
    chat |= {f"causal: {r.model}": r.merged for r in training[training["student"] == "causal"].itertuples()}
    harm = common.harmful_replies(cfg, chat) if len(chat) > 1 else None
    safety_rows, safety = common.safety_stage(stage, harm)
    # every model's answers on the shared rows (taggers answered every test row: their shared part)
    on_shared = {n: _on(shared, rows_of[n], a) for n, a in answers.items()}
    keep = shared.assign(**{f"answer: {n}": [answer_text(x) for x in a] for n, a in on_shared.items()})
    save_rows(stage, keep, "test_answers")
    ablation = deltas(test, shared, answers, rows_of, boot, cfg.seed)
    stage.save(ablation, "ablation")
    best = _best_synthetic(table)
    slots = structured.per_slot(_gold(rows_of[best]), answers[best]) if best else pd.DataFrame()
    stage.save(slots, "per_slot")
    return {"test": test, "shared": shared, "table": table, "ablation": ablation, "per_slot": slots, "best": best,
            "answers": on_shared, "safety_rows": safety_rows, "safety": safety}  # fmt: skip


def _gold(rows: pd.DataFrame) -> list[dict]:
    return [{"tool": t, "arguments": a} for t, a in zip(rows["tool"], rows["arguments"])]


def _on(shared: pd.DataFrame, rows: pd.DataFrame, ans: list) -> list:
    where = dict(zip(rows["id"], ans))
    return [where[i] for i in shared["id"]]


def _best_synthetic(table: pd.DataFrame) -> str | None:
    syn = table[table["group"] == "synthetic"]
    return None if syn.empty else str(syn.sort_values("slot_f1", ascending=False)["model"].iloc[0])


def _paired(gold: list[dict], a: list, b: list, boot: int, seed: int) -> tuple[float, float, float]:
    ca = np.array([structured.row_counts(g, p) for g, p in zip(gold, a)], dtype=float)
    cb = np.array([structured.row_counts(g, p) for g, p in zip(gold, b)], dtype=float)

    def f1(c: np.ndarray) -> np.ndarray:  # micro F1 over rows; c: (..., rows, 3)
        tp, fp, fn = c[..., 0].sum(-1), c[..., 1].sum(-1), c[..., 2].sum(-1)
        return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)

    d = float(f1(ca) - f1(cb))
    if boot <= 0 or not len(gold):
        return d, float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(gold), size=(boot, len(gold)))
    diffs = f1(ca[idx]) - f1(cb[idx])
    return d, float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def deltas(test, shared, answers, rows_of, boot: int, seed: int) -> pd.DataFrame:
    """Paired differences in slot F1 (95% paired bootstrap): the filter's ablation among the taggers
    on every test row, each causal student against the untuned model on the shared rows."""
    pairs = [
        ("tagger: seeds_synthetic", "tagger: seeds_only", test),
        ("tagger: seeds_synthetic", "tagger: seeds_unfiltered", test),
        ("tagger: seeds_unfiltered", "tagger: seeds_only", test),
    ]
    pairs += [(n, "causal: untuned (schema-constrained)", shared) for n in answers if n.startswith("causal: ")
              and "untuned" not in n and "reference" not in n]  # fmt: skip
    if "causal: sft" in answers:
        pairs += [(n, "causal: sft", shared) for n in ("causal: dpo", "causal: grpo") if n in answers]
    out = []
    for a, b, rows in pairs:
        if a not in answers or b not in answers:
            continue
        d, lo, hi = _paired(
            _gold(rows), _on(rows, rows_of[a], answers[a]), _on(rows, rows_of[b], answers[b]), boot, seed
        )
        out.append({"comparison": f"{a} − {b}", "slot_f1_delta": d, "lo": lo, "hi": hi, "test_rows": len(rows)})
    return pd.DataFrame(out, columns=["comparison", "slot_f1_delta", "lo", "hi", "test_rows"])


def gap_closed(table: pd.DataFrame) -> float | None:
    """How much of the distance from the seeds-only tagger to the real-data reference (as many real
    rows) the filtered synthetic rows closed: (kept − seeds) / (reference − seeds)."""
    f = table.set_index("model")["slot_f1"]
    need = ["tagger: seeds_only", "tagger: seeds_synthetic", "tagger: reference_as_many"]
    if not all(n in f for n in need) or f[need[2]] == f[need[0]]:
        return None
    return float((f[need[1]] - f[need[0]]) / (f[need[2]] - f[need[0]]))


def evaluation_markdown(cfg: RunConfig, table: pd.DataFrame, shared_rows: int, test_rows: int) -> str:
    g = gap_closed(table)
    out = (
        f"Taggers answer all **{test_rows} real test rows**; the causal models answer {shared_rows} of them "
        f"(`evaluate.causal_test_per_label`). Intervals are 95% bootstrap over rows."
    )
    if g is not None:
        out += (
            f"\n\n**The filtered synthetic rows closed {g:+.0%} of the distance** between the seeds-only tagger "
            "and the tagger trained on as many real rows (slot F1)."
        )
    base = table[table["group"] == "baseline"]
    if len(base):
        out += f" The untuned model's answers under the schema parse **{base['parsed'].iloc[0]:.0%}**."
    return out


METRIC_COLUMNS = ["model", "group", "test_rows", "train_rows", "tool_accuracy", "slot_precision", "slot_recall",
                  "slot_f1", "slot_f1_lo", "slot_f1_hi", "exact_match", "exact_match_lo", "exact_match_hi",
                  "parsed"]  # fmt: skip


def evaluation_view(table: pd.DataFrame) -> pd.DataFrame:
    return table[[c for c in METRIC_COLUMNS if c in table]].round(3)


def published(cfg: RunConfig) -> pd.DataFrame | None:
    """The benchmark's published slot F1 of commercial services, for a run on SNIPS."""
    return PUBLISHED_SNIPS if cfg.data.dataset == "snips" and cfg.data.subset is None else None


# ---------------------------------------------------------------- 07_gaps


def gaps_stage(stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """07: the best synthetic tagger (seeds + kept) answers the real dev rows; each row with a
        wrong tool or a wrong, missing or extra argument is a failure with its error signature
        (`tasks.tools.failures`); failures are embedded as "signature: text", mapped with UMAP and
        clustered with HDBSCAN; the namer (`roles.namer`) names each cluster from its exemplars (the
    tool and signature as its name where the answer is no name). Saves `failures` and `clusters`."""
    cfg = stage.cfg
    t = tasks.of(cfg)
    dev = load_rows(stage, "dev")
    path = stage.artifacts / "students" / "seeds_synthetic.joblib"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: 07 needs the tagger on seeds + kept rows (train.students: [probe, ...])")
    answers = joblib.load(path).answers(list(dev["text"]))
    fails = t.failures(dev, answers).assign(source="dev")
    fails["predicted"] = fails["signature"]
    clustered, _, seconds = common.cluster(cfg, fails, [f"{s}: {x}" for s, x in zip(fails["signature"], fails["text"])])
    summary = gaps.name_clusters(cfg, stage.llm("namer"), clusters.summarize(clustered), t.NAME_USER)
    save_rows(stage, clustered, "failures")
    stage.save(summary, "clusters")
    s = t.score(dev, answers, bootstrap=0)
    metrics = {
        "dev_rows": len(dev),
        "dev_slot_f1": s["slot_f1"],
        "dev_tool_accuracy": s["tool_accuracy"],
        "failures": len(fails),
        "signatures": fails["signature"].value_counts().head(10).to_dict(),
        "clusters": int((summary["cluster"] >= 0).sum()),
        "noise": int((clustered["cluster"] == -1).sum()),
        "names_by_llm": int((summary["name_source"] == "llm").sum()),
        "cluster_seconds": round(seconds, 1),
    }
    return clustered, summary, metrics


def gaps_markdown(m: dict) -> str:
    return (
        f"Tagger on seeds + kept rows, on **{m['dev_rows']} real dev rows: slot F1 {m['dev_slot_f1']:.3f}, tool "
        f"accuracy {m['dev_tool_accuracy']:.1%}**. {m['failures']} failures; **{m['clusters']} clusters**, "
        f"{m['noise']} noise points (UMAP + HDBSCAN in {m['cluster_seconds']:.1f} s). Most common signatures: "
        f"{m['signatures']}."
    )


def _value_list_edit(cfg: RunConfig, tool: str, g: pd.DataFrame, cluster: int, done: set) -> dict | None:
    """A `values` edit for the argument (of `tool`) that cluster `g`'s failures of `tool` most often
    miss or get wrong, with its real values there that the config lacks; None when there is none
    (or that argument had its edit already: `done` holds "tool.argument")."""
    g = g[g["tool"] == tool]
    missed = [
        sig.split(":", 1)[1] for x in g["signature"] for sig in x.split() if sig.startswith(("missing:", "wrong:"))
    ]
    if not missed:
        return None
    arg = pd.Series(missed).value_counts().index[0]
    if cfg.task.type == "extraction":
        label, known = arg, next((f.values for f in cfg.task.fields if f.name == arg), [])
    else:
        label = f"{tool}.{arg}"
        known = next((t.parameters[arg].values for t in cfg.task.tools if t.name == tool and arg in t.parameters), [])
    if label in done:
        return None
    seen = {structured.norm(v) for v in known}
    new = []
    for exp in g["expected"]:
        v = str((exp.get("arguments") or {}).get(arg, ""))
        if v and structured.norm(v) not in seen:
            seen.add(structured.norm(v))
            new.append(v)
    if not new:
        return None
    done.add(label)
    n = sum(1 for x in g["signature"] if f"missing:{arg}" in x.split() or f"wrong:{arg}" in x.split())
    return {
        "kind": "values",
        "cluster": int(cluster),
        "label": label,
        "other": None,
        "path": f"task.fields.{arg}.values" if label == arg else f"task.tools.{tool}.parameters.{arg}.values",
        "value": new[:8],
        "evidence": (
            f"cluster {cluster}: {n} real dev rows of {tool} miss or get '{arg}' wrong; their values "
            f"{new[:8]} are not in the config's list yet. 01 draws from them."
        ),
    }


def config_patch(stage: Stage, clustered: pd.DataFrame, summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """07's edits: per cluster, largest first, more generated rows for the tool its failures are
    about (`sampling.extra_rows`, read by 01's plan; each tool once), and a value list for the
    argument the cluster most often misses or gets wrong: its values in those real dev rows that
    the config does not list yet (`values`, drawn from by 01). At most `gaps.max_edits`. Writes
    `config_patch.yaml` (applied by `workbench iterate`) and saves `edits`."""
    cfg = stage.cfg
    extra = cfg.gaps.extra_rows or cfg.sampling.rows_per_label
    dev_counts = load_rows(stage, "dev")["tool"].value_counts().to_dict()
    edits, done = [], set()
    for s in summary[summary["cluster"] >= 0].sort_values(["size", "cluster"], ascending=[False, True]).itertuples():
        tool = s.dominant_true
        if tool == structured.NO_TOOL:
            continue
        # the cluster's failures of its dominant tool (a cluster may hold a few of other tools)
        g = clustered[(clustered["cluster"] == s.cluster) & (clustered["tool"] == tool)]
        value_edit = _value_list_edit(cfg, tool, g, s.cluster, done)
        if value_edit is not None:
            edits.append(value_edit)
        if tool in done:
            continue
        done.add(tool)
        edits.append(
            {
                "kind": "more_rows",
                "cluster": int(s.cluster),
                "label": tool,
                "other": None,
                "path": gaps.PATHS["more_rows"].format(label=tool),
                "value": int(extra),
                "evidence": (
                    f"cluster {s.cluster}: {len(g)} of {dev_counts.get(tool, 0)} real dev rows of {tool} fail as "
                    f"'{s.dominant_predicted}' (e.g. \"{g['text'].iloc[0]}\"). {extra} more requests for {tool}."
                ),
            }
        )
        if len(edits) >= cfg.gaps.max_edits:
            break
    return common.write_patch(stage, edits)
