"""Every field is enforced by a stage; a field nothing enforces is a load error; the field → gate
table and the pre-run estimate; sampling contradictions; smart defaults."""

from pathlib import Path

import pandas as pd
import pytest

from workbench import cli, plan, plan_structured, tasks
from workbench.config import (
    ENFORCED_BY,
    ConfigError,
    RunConfig,
    dump_config,
    enforcer,
    leaf_fields,
    load_config,
    plan_counts,
)

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_every_field_has_an_enforcer_and_no_entry_is_stale():
    assert [f for f in leaf_fields() if enforcer(f) is None] == []
    sections = {"llm", "responses", "train", "gaps"}
    assert set(ENFORCED_BY) <= set(leaf_fields()) | sections


# The modules each stage's notebook runs (README: "stage 01: ..."); a field's enforcer must read it in one
# of them, as an attribute or a key. "runs" is the run layer (it refuses kinds no stage implements).
STAGE_MODULES = {
    "00_task": ["flows/classification_build.py", "data.py", "tasks/classification.py", "tasks/tools.py", "tasks/tools_answer.py", "tasks/tools_inputs.py", "tasks/tools_training.py", "structured.py", "form.py",
                "plan.py", "flows/structured_build.py", "flows/structured_learn.py"],
    "01_prompts": ["prompts.py", "critique.py", "gates.py", "flows/classification_build.py", "config/sampling.py", "tasks/tools.py", "tasks/tools_answer.py", "tasks/tools_inputs.py", "tasks/tools_training.py",
                   "tasks/reply.py", "tasks/reply_gaps.py"],
    "02_responses": ["responses.py", "live.py", "flows/classification_build.py", "tasks/tools.py", "tasks/tools_answer.py", "tasks/tools_inputs.py", "tasks/tools_training.py", "flows/text_build.py", "flows/text_learn.py",
                     "tasks/reply.py", "tasks/reply_gaps.py", "tasks/summarization.py"],
    "03_judge": ["flows/common.py", "flows/structured.py", "judge.py", "flows/classification_build.py", "flows/structured_build.py", "flows/structured_learn.py", "flows/text_build.py", "flows/text_learn.py", "tasks/reply.py", "tasks/reply_gaps.py",
                 "tasks/summarization.py"],
    "04_filter": ["filters.py", "gates.py", "export.py", "quality.py", "flows/classification_build.py", "tasks/summarization.py"],
    "05_train": ["flows/common.py", "train.py", "causal.py", "flows/classification_learn.py", "flows/structured_build.py", "flows/structured_learn.py", "tagger.py", "flows/text_build.py", "flows/text_learn.py",
                 "tasks/summarization.py"],
    "06_evaluate": ["flows/common.py", "evaluate.py", "flows/classification_learn.py", "causal.py", "data.py", "flows/structured_build.py", "flows/structured_learn.py", "structured.py",
                    "flows/text_build.py", "flows/text_learn.py"],
    "07_gaps": ["flows/common.py", "gaps.py", "clusters.py", "flows/classification_learn.py", "data.py", "flows/structured_build.py", "flows/structured_learn.py"],
    "runs": ["runs.py", "driver.py", "config/enforce.py", "config/task.py"],
    "every LLM call": ["llm/front.py", "llm/endpoint.py", "llm/embedded.py", "llm/batch.py", "llm/limits.py"],
}  # fmt: skip
# a field a stage enforces through what an earlier stage wrote into each row: (field, stage) → the key it reads
READ_AS = {("diversity.entities", "04_filter"): "entity"}


def _names_read(path) -> set[str]:
    """The attribute names a module reads (`x.name`) and the strings it uses as keys or values in
    code (`row["name"]`, `getattr(x, "name")`): its docstrings and comments do not count."""
    import ast

    tree = ast.parse(path.read_text())
    docs = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
    }  # fmt: skip
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            out.add(n.value)
    return out


def test_each_enforcer_stage_reads_its_field():
    """A field's enforcing stage reads it in its code (an attribute or a key, not a docstring or a
    comment). Reading is not acting on it: test_judge_anchor_changes_the_judges_requests_where_it_is_enforced
    checks that for the judge's example, which a reply stage read and ignored."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "workbench"
    read = {st: set().union(*(_names_read(root / m) for m in mods)) for st, mods in STAGE_MODULES.items()}
    read["every stage"] = set().union(*(_names_read(p) for p in root.rglob("*.py")))
    missing = []
    for field, (stages, *_) in ENFORCED_BY.items():
        for st in (x.strip() for x in stages.split(",")):
            if READ_AS.get((field, st), field.split(".")[-1]) not in read[st]:
                missing.append(f"{field} → {st}")
    assert missing == [], "fields whose enforcing stage never reads them"


def _judge_requests(cfg) -> list:
    """03's judge requests for two rows of the config's task type, through that type's own builder."""
    from workbench import data, judge, structured
    from workbench.tasks import reply, summarization, tools

    seeds = tasks.of(cfg).seeds(cfg)
    two = seeds.groupby(seeds.columns[seeds.columns.isin(["label", "tool"])][0]).head(1).head(2)
    kind = cfg.task.type
    if kind == "classification":
        return judge.judge_requests(cfg, two.assign(keep_prompts=True), data.seeds(cfg))[0]
    if kind in ("tools", "extraction"):
        cands = pd.DataFrame({"row": two["id"], "candidate": 1, "raw": "{}"})
        return tools.answer_judge_requests(cfg, two.assign(keep=True), cands, seeds, "{}")[0]
    items = two.assign(reply="A reply.", should_refuse=False)
    builder = {"reply": reply.judge_requests, "summarization": summarization.judge_requests}[kind]
    assert structured  # every type has its builder here: a new type must add one
    return builder(cfg, items)[0]


@pytest.mark.parametrize("config", ["smoke", "snips-smoke", "snips-extract", "banking77-replies", "aclsum-summaries"])
def test_judge_anchor_changes_the_judges_requests_where_it_is_enforced(root, config):
    """judge.anchor (a real example shown to the judge) changes what the judge is asked for every
    task type the field → gate table says it applies to, and for no other: a reply's judge has no
    real reply to show, so a reply config that sets it is refused at load (config/files.unenforced)."""
    from workbench.config import task_kind

    cfg, _ = load_config(root / "configs" / f"{config}.yaml")
    kinds = ENFORCED_BY["judge.anchor"][3]
    claimed = kinds is None or task_kind(cfg.task) in kinds
    with_anchor = _judge_requests(cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"anchor": True})}))
    without = _judge_requests(cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"anchor": False})}))
    assert len(with_anchor) == len(without) > 0
    assert (with_anchor != without) == claimed, (config, claimed)


@pytest.mark.parametrize(
    ("yaml", "field", "line"),
    [
        ("task:\n  labels: [a, b]\n  tools:\n    - name: f\n      description: call it\n", "task.tools", 3),
        ("task:\n  labels: [a, b]\n  summary_max_words: 30\n", "task.summary_max_words", 3),
    ],
)
def test_a_field_no_stage_enforces_for_the_task_type_is_a_load_error(tmp_path, yaml, field, line):
    p = write(tmp_path, yaml)
    with pytest.raises(ConfigError, match=rf"{p}:{line}: field '{field}': set, but no stage enforces it for classif"):
        load_config(p)


def test_resolved_defaults_of_the_type_are_not_flagged(tmp_path):
    cfg, doc = load_config(write(tmp_path, "task:\n  labels: [a, b]\n"))
    again = write(tmp_path, dump_config(cfg, doc))  # every field written out, incl. responses.*
    assert load_config(again)[0] == cfg


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("task:\n  labels: [a, b, a]\n", r"c.yaml:2: field 'task.labels': Value error, duplicate labels: \['a'\]"),
        ("task:\n  labels: []\n", r"field 'task.labels': Value error, empty label list"),
        (
            "task:\n  labels: [" + ", ".join(f"l{i}" for i in range(20)) + "]\nsampling:\n  total_rows: 10\n",
            r"c.yaml:4: field 'sampling.total_rows': sampling.total_rows=10 cannot give each of 20 labels a row",
        ),
        ("sampling:\n  total_rows: 10\n  rows_per_label: 3\n", r"set rows_per_label or total_rows, not both"),
        (
            "diversity:\n  personas:\n    - name: a\n      share: 0.7\n    - name: b\n      share: 0.7\n",
            r"field 'diversity.personas': Value error, shares add up to 1.4",
        ),
        ("diversity:\n  difficulty: {easy: 0.5, hard: 0.2}\n", r"must be non-negative and add up to 1"),
        ("diversity:\n  edge_case_share: 0.3\n", r"task.edge_cases is empty"),
        ("quality:\n  min_chars: 50\n  max_chars: 20\n", r"min_chars \(50\) must be below max_chars \(20\)"),
        ("task:\n  type: extraction\n", r"type extraction needs task.fields"),
        ("evaluate:\n  metrics: [rouge_l]\n", r"evaluate.metrics \['rouge_l'\] do not apply to classification"),
        ("task:\n  labels: [a, b]\nsampling:\n  class_balance: {a: 1, c: 2}\n", r"names unknown labels \['c'\]"),
    ],
)
def test_contradictions_and_bad_values(tmp_path, yaml, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, yaml))


def test_smart_defaults_by_type_are_overridable_and_explained(tmp_path):
    cfg, doc = load_config(write(tmp_path, "task:\n  type: extraction\n  fields: [{name: amount, type: number}]\n"))
    assert (cfg.prompts.temperature, cfg.responses.temperature, cfg.responses.top_p) == (0.9, 0.1, 0.9)
    text = dump_config(cfg, doc)
    assert "# 0.1 chosen for extraction: field values must be copied exactly: deterministic range 0.1-0.3" in text
    cfg2, doc2 = load_config(
        write(tmp_path, "task:\n  type: extraction\n  fields: [{name: a}]\nresponses:\n  temperature: 0.25\n")
    )
    assert cfg2.responses.temperature == 0.25
    assert "0.25 chosen" not in dump_config(cfg2, doc2)


def test_the_namers_token_cap_follows_the_task_type_and_an_explicit_value_wins(tmp_path):
    """Replies' and summaries' namer answers with JSON (name, policy, persona): 40 tokens cut it short."""
    by_type = {t: RunConfig.model_validate({"task": {"type": t}}).gaps.name_max_tokens for t in ("classification", "reply", "summarization")}  # fmt: skip
    assert by_type == {"classification": 40, "reply": 96, "summarization": 96}
    cfg, doc = load_config(write(tmp_path, "task:\n  type: reply\n"))
    assert "# 96 chosen for reply: a name, a policy and a persona as JSON" in dump_config(cfg, doc)
    cfg, _ = load_config(write(tmp_path, "task:\n  type: reply\ngaps:\n  name_max_tokens: 50\n"))
    assert cfg.gaps.name_max_tokens == 50
    cfg, doc = load_config(write(tmp_path, "task:\n  type: reply\n"))
    p = tmp_path / "dumped.yaml"
    p.write_text(dump_config(cfg, doc).replace("type: reply", "type: classification", 1))
    assert load_config(p)[0].gaps.name_max_tokens == 40  # written back as null: re-derived for the new type


def test_plan_counts_follow_the_class_balance(tmp_path):
    from workbench.config import plan_counts

    cfg = RunConfig.model_validate({"task": {"labels": ["a", "b", "c"]}, "sampling": {"total_rows": 10}})
    assert plan_counts(cfg, ["a", "b", "c"]) == {"a": 4, "b": 3, "c": 3}
    cfg = RunConfig.model_validate(
        {"task": {"labels": ["a", "b"]}, "sampling": {"class_balance": {"a": 3, "b": 1}, "total_rows": 8}}
    )
    assert plan_counts(cfg, ["a", "b"]) == {"a": 6, "b": 2}
    cfg = RunConfig.model_validate({"sampling": {"class_balance": "proportional", "rows_per_label": 5}})
    assert plan_counts(cfg, ["a", "b"], {"a": 30, "b": 10}) == {"a": 8, "b": 2}


def test_gate_table_counts_rejections_and_grid_cells():
    cfg = RunConfig.model_validate({"task": {"labels": ["a", "b"]}, "diversity": {"tones": ["calm", "angry"]}})
    rows = pd.DataFrame(
        {
            "label": ["a", "a", "b", "b"],
            "tone": ["calm", "angry", "calm", "angry"],
            "reject_reason": [None, "too_short", "near_duplicate", "too_short"],
            "pii_found": [None, None, "email", None],
        }
    )
    t = plan.gate_table(cfg, rows).set_index("field")
    assert t.loc["quality.min_chars", "rows_rejected"] == 2 and t.loc["quality.max_chars", "rows_rejected"] == 0
    assert t.loc["filter.near_dup_threshold", "rows_rejected"] == 1
    assert t.loc["diversity.tones", "effect"] == "generated: calm 2, angry 2"
    assert "rows with PII found: 1" in t.loc["quality.pii", "effect"]
    assert "task.tools" not in t.index and "llm.model" not in t.index  # not for this type; not about the data
    assert (t["gate"] != "NOT ENFORCED").all()


def test_a_reply_estimate_counts_every_judge_call_and_prices_each_role(tmp_path):
    """Replies' judges also answer in 03 (pairs, both orders), 05 (GRPO's judge reward), 06 (each
    student against the untuned model, and the refusal judge) and 07 (dev messages, cluster names)."""
    cfg, _ = load_config("configs/banking77-replies.yaml")
    priced = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "j", "price_input_per_1m": 1.0}
    cfg = cfg.model_copy(update={"models": {"j": RunConfig.model_validate({"llm": priced}).llm},
                                 "roles": cfg.roles.model_copy(update={"judge": ["j"]})})  # fmt: skip
    labels = cfg.task.label_names()
    est = plan.estimate(cfg, labels, cache_dir=tmp_path).set_index("stage")
    n, students = 4 * 8, 4  # 32 messages; sft, sft_no_refusals, dpo, grpo
    assert est.loc["03_judge", "llm_calls"] == n * 3 * 3 + 2 * 12 * 3 + n * 2  # rubric, calibration, pairs
    assert est.loc["05_train", "llm_calls"] == 3 * 4 * 3  # GRPO steps × completions × rubric dimensions
    assert est.loc["06_evaluate", "llm_calls"] == students * 32 * 2 + (students + 1) * 16
    assert est.loc["07_gaps", "llm_calls"] == 32 * 2 + 32 * 3 + round(32 / 3 / 2)
    assert est.loc["03_judge", "cost"] > 0 and pd.isna(est.loc["02_responses", "cost"])  # the judge's model is priced
    assert "not run on this machine yet" in est.loc["05_train", "time_basis"]  # classification's runs are no guide


@pytest.mark.parametrize("config", ["smoke", "aclsum-summaries", "snips-smoke", "snips-extract"])
def test_check_prints_an_estimate_for_every_type(config, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    assert cli.main(["check", str(ROOT / "configs" / f"{config}.yaml")]) == 0
    err = capsys.readouterr().err
    assert "pre-run estimate" in err and "no estimate" not in err, err[-800:]


def test_a_structured_estimate_counts_suggestions_messages_answers_and_judgments(tmp_path):
    """Tool calls, answer first: one suggestion request per argument, a message per cell with the
    failed cells retried for `prompts.rounds`, `responses.candidates` answers per kept message, each
    judged per rubric dimension and juror (and the calibration's good and bad answers), the safety
    judge on the untuned model and each student, the cluster names; then measured seconds."""
    cfg, _ = load_config(ROOT / "configs" / "snips-smoke.yaml")
    t = tasks.of(cfg)
    seeds = t.seeds(cfg)
    planned = t.planned_requests(cfg, seeds)
    args = {a for tool in cfg.task.tools for a in tool.parameters}
    assert set(planned.loc[planned["part"] == "suggestion", "label"]) == args
    cells = int((planned["part"] == "message").sum())
    assert cells == sum(plan_counts(cfg, t.labels(cfg)).values()) + round(cells_no_tool(cfg, t))
    est = plan.estimate(cfg, t.labels(cfg), t.label_counts(cfg), tmp_path, seeds).set_index("stage")
    written = sum(cells * 0.5**r for r in range(cfg.prompts.rounds))  # 50% rejected until measured
    assert est.loc["01_prompts", "llm_calls"] == round(len(args) + written)
    kept = cells * (1 - 0.5**cfg.prompts.rounds)
    assert est.loc["02_responses", "llm_calls"] == round(kept)
    per_item = len(t.answer_rubric(cfg)) * len(cfg.jurors())
    assert est.loc["03_judge", "llm_calls"] == round(
        (kept * cfg.responses.candidates + 2 * cfg.judge.calibration_rows) * per_item
    )
    students = 1 + len(cfg.train.methods)
    assert est.loc["06_evaluate", "llm_calls"] == students * cfg.evaluate.safety_rows
    assert pd.isna(est.loc["01_prompts", "seconds"])  # an endpoint not measured yet: no guess
    fresh = pd.DataFrame({"cached": [False] * 4, "completion_tokens": [10, 20, 30, 40]})
    for key in plan_structured.KEYS.values():
        plan.record_throughput(cfg, tmp_path, key, fresh, 2.0, generated=cells, kept=cells)  # none rejected
    est = plan.estimate(cfg, t.labels(cfg), t.label_counts(cfg), tmp_path, seeds).set_index("stage")
    assert est.loc["01_prompts", "llm_calls"] == len(args) + cells  # no retries when every message passed
    assert est.loc["01_prompts", "llm_seconds"] == pytest.approx((len(args) + cells) * 2.0 / 4)
    assert "generation: 4 calls took 2 s here" in est.loc["01_prompts", "time_basis"]


def cells_no_tool(cfg: RunConfig, t) -> float:
    return sum(plan_counts(cfg, t.labels(cfg)).values()) * cfg.diversity.no_tool_share


def test_estimate_counts_calls_prices_and_uses_measured_throughput(tmp_path):
    cfg = RunConfig.model_validate(
        {
            "task": {"labels": ["a", "b"]},
            "sampling": {"rows_per_label": 5},
            "llm": {"provider": "openai", "price_input_per_1m": 1.0, "price_output_per_1m": 2.0},
        }
    )
    est = plan.estimate(cfg, ["a", "b"], cache_dir=tmp_path).set_index("stage")
    assert list(est.index) == [*plan.STAGE_NAMES, "total"]  # one row per stage
    # 01: 10 planned; top-ups expected at 50% rejected until a run here measured it: 10 + ceil(2 × 5)
    assert est.loc["01_prompts", "llm_calls"] == 20 + 20  # generation, and the critic on each
    assert est.loc["02_responses", "llm_calls"] == 10
    # one call per row and rubric dimension (3 for classification), and per calibration item (20 good, 20 bad)
    assert est.loc["03_judge", "llm_calls"] == (10 + 2 * 20) * 3
    assert est.loc["02_responses", "completion_tokens_max"] == 10 * 2 * 3  # 3 candidates of up to 2 tokens
    assert est.loc["00_task", "llm_calls"] == 6
    expected = (
        est.loc["02_responses", "prompt_tokens"] * 1.0 + est.loc["02_responses", "completion_tokens"] * 2.0
    ) / 1e6
    assert est.loc["02_responses", "cost"] == pytest.approx(expected, rel=1e-3)
    assert pd.isna(est.loc["01_prompts", "seconds"])  # an endpoint not measured yet: no guess
    assert (
        pd.isna(est.loc["05_train", "seconds"]) and "not run on this machine yet" in est.loc["05_train", "time_basis"]
    )
    rows = pd.DataFrame({"cached": [False] * 4, "completion_tokens": [10, 20, 30, 40]})
    plan.record_throughput(cfg, tmp_path, "01_prompts", rows, 2.0, generated=20, kept=15)
    plan.record_throughput(cfg, tmp_path, "01_critic", rows, 1.0)
    plan.record_stage(cfg, tmp_path, "01_prompts", seconds=30.0, llm_seconds=26.0, units=10)
    est = plan.estimate(cfg, ["a", "b"], cache_dir=tmp_path).set_index("stage")
    # 25% rejected as measured: 10 planned, then ceil(2 × 2.5) = 5 more
    assert est.loc["01_prompts", "llm_calls"] == 2 * 15
    # 00's preview (6 rows) is in the cache by the time 01 runs
    assert est.loc["01_prompts", "llm_seconds"] == pytest.approx((15 - 6) * 2.0 / 4 + 15 * 1.0 / 4)
    assert est.loc["01_prompts", "other_seconds"] == 4.0 and est.loc["01_prompts", "seconds"] == pytest.approx(12.25)
    assert "generation: 4 calls took 2 s here" in est.loc["01_prompts", "time_basis"]
    assert "10 planned, 15 expected with top-ups (25% rejected)" in est.loc["01_prompts", "time_basis"]
    # the time outside the LLM follows the size of the work: a line through the runs measured here
    plan.record_stage(cfg, tmp_path, "04_filter", seconds=12.0, llm_seconds=0.0, units=10)
    plan.record_stage(cfg, tmp_path, "04_filter", seconds=32.0, llm_seconds=0.0, units=50)
    big = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"rows_per_label": 50})})
    est = plan.estimate(big, ["a", "b"], cache_dir=tmp_path).set_index("stage")
    assert est.loc["04_filter", "seconds"] == pytest.approx(7.0 + 0.5 * 100)


def test_the_embedded_models_estimate_comes_from_this_machines_calibration(tmp_path):
    """No guess from a README figure: the embedded model is timed here once (a few seconds), the
    timing is kept, and the cache's answers are not counted as work."""

    class Timed:
        def __init__(self):
            self.calibrations, self.hits = 0, 0

        def calibrate(self, requests, batch_size):
            self.calibrations += 1
            return {"batch_size": batch_size, "prefill_s_per_token": 0.001, "step_s": 0.8}

        def cached_count(self, requests):
            return min(self.hits, len(requests))

    cfg = RunConfig.model_validate({"task": {"labels": ["a", "b"]}, "sampling": {"rows_per_label": 5},
                                    "llm": {"batch_size": 8}, "prompts": {"critique": False, "rounds": 1}})  # fmt: skip
    llm = Timed()
    est = plan.estimate(cfg, ["a", "b"], cache_dir=tmp_path, llm=llm).set_index("stage")
    per_row = cfg.prompts.max_tokens * 0.8 / 8
    tokens = est.loc["01_prompts", "prompt_tokens"] / 10
    assert est.loc["01_prompts", "llm_seconds"] == pytest.approx((10 - 6) * (tokens * 0.001 + per_row), rel=0.02)
    assert "this machine's calibration (6 of 10 calls cached)" in est.loc["01_prompts", "time_basis"]
    # a stage never run here: the reference runs' seconds, scaled by this machine's speed against theirs
    (r1, u1, s1), (r2, u2, s2) = plan.REFERENCE["stages"]["05_train"]
    s1, s2 = s1 * 0.001 / plan.REFERENCE["runs"][r1], s2 * 0.001 / plan.REFERENCE["runs"][r2]
    units = plan.work_units(cfg, "05_train", {"a": 5, "b": 5})
    line = s1 + (s2 - s1) / (u2 - u1) * (units - u1)
    assert est.loc["05_train", "other_seconds"] == pytest.approx(line, rel=1e-6)
    assert "in the reference runs" in est.loc["05_train", "time_basis"]
    plan.estimate(cfg, ["a", "b"], cache_dir=tmp_path, llm=llm)
    assert llm.calibrations == 1  # kept in throughput.json
    llm.hits = 10
    est = plan.estimate(cfg, ["a", "b"], cache_dir=tmp_path, llm=llm).set_index("stage")
    assert est.loc["01_prompts", "llm_seconds"] == 0 and est.loc["00_task", "llm_seconds"] == 0
    # a run done before (01's first round all cached) is taken to be cached through 03
    assert est.loc["02_responses", "llm_seconds"] == 0 and est.loc["03_judge", "llm_seconds"] == 0
    assert "100% as in 01's first round" in est.loc["03_judge", "time_basis"]
