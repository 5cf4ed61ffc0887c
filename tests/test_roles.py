"""Model roles: the generator, the critic and the judges each call the model `roles` names.

Three scripted endpoints play the generator, the critic and a jury of two judges through stages
01-03 of the smoke config; each endpoint must see its own role's calls and nothing else."""

import json

import pandas as pd
import pytest
from support import ROOT, cache_with_models, completion, http_answer, provider

from workbench import critique, judge
from workbench.config import ConfigError, load_config
from workbench.data import describe_label
from workbench.flows import classification_build as build
from workbench.stage import Stage

CRITIC_SYSTEM = critique.SYSTEM.split("{")[0]
JUDGE_SYSTEM = judge.SYSTEM.split("{")[0]


def _system(req: dict) -> str:
    msgs = (req["body"] or {}).get("messages") or []
    return msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else ""


def _endpoint(reply):
    """An OpenAI-compatible endpoint whose chat answers are `reply(request)`, one per n."""

    def answer(req):
        if req["path"].endswith("/models"):
            return http_answer({"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        n = (req["body"] or {}).get("n", 1)
        return http_answer(completion(req, [reply(req, c) for c in range(n)]))

    return answer


@pytest.fixture
def real_texts():
    """Banking77 training messages (not the seeds' labels' test rows): what the scripted generator writes."""
    rows = pd.read_csv(ROOT / "data" / "banking77" / "train.csv")
    return list(rows["text"].sample(400, random_state=1))


def test_generator_critic_and_a_jury_of_two_judges_are_separate_models(tmp_path, monkeypatch, real_texts):
    said = iter(real_texts)
    train = pd.read_csv(ROOT / "data" / "banking77" / "train.csv")
    truth = dict(zip(train["text"], train["category"]))

    def writer(req, c):  # 01's inputs and rewrites: a real message; 02's answers: an option number
        return "1" if req["body"].get("max_tokens", 99) <= 2 else next(said)

    def critic(req, c):
        return json.dumps({"defects": [], "reason": "a realistic message", "action": "keep"})

    def strict(req, c):
        return json.dumps({"score": 2, "rationale": "strict judge"})

    def kind(req, c):  # knows each real row's label: 5 when the criterion names it, else 1
        user = req["body"]["messages"][-1]["content"]
        text = user.split('Message: "')[-1].rsplit('"', 1)[0]
        right = truth.get(text) is None or describe_label(truth[text]) in user.split("\n")[0]
        return json.dumps({"score": 5 if right else 1, "rationale": "kind judge"})

    monkeypatch.setenv("WORKBENCH_CACHE", str(cache_with_models(tmp_path / "cache")))
    monkeypatch.setenv("ROLE_KEY", "sk-test")
    with (
        provider(_endpoint(writer)) as (gen_url, gen_seen),
        provider(_endpoint(critic)) as (crit_url, crit_seen),
        provider(_endpoint(strict)) as (a_url, a_seen),
        provider(_endpoint(kind)) as (b_url, b_seen),
    ):
        end = "{provider: openai, model: scripted, api_key_env: ROLE_KEY, base_url: '%s'}"
        text = (
            (ROOT / "configs" / "smoke.yaml")
            .read_text()
            .replace(
                "llm:\n  provider: local          # the embedded SmolLM2-135M-Instruct\n",
                f"llm:\n  provider: openai\n  model: scripted\n  api_key_env: ROLE_KEY\n  base_url: '{gen_url}'\n",
            )
        )
        text += f"models:\n  critic: {end % crit_url}\n  strict: {end % a_url}\n  kind: {end % b_url}\n"
        text += "roles:\n  critic: critic\n  judge: [strict, kind]\n"
        (tmp_path / "c.yaml").write_text(text)
        cfg, _ = load_config(tmp_path / "c.yaml")
        run = tmp_path / "run"
        build.task(Stage("00_task", cfg, run))
        rows, summary = build.build_prompts(Stage("01_prompts", cfg, run))
        build.candidates(Stage("02_responses", cfg, run))
        judged, judgments, _, m, tables = build.judge_stage(Stage("03_judge", cfg, run))

    chats = {name: [r for r in seen if r["path"].endswith("/chat/completions")]
             for name, seen in (("gen", gen_seen), ("crit", crit_seen), ("a", a_seen), ("b", b_seen))}  # fmt: skip
    assert summary["kept"] > 0 and summary["critiques_parsed"] > 0
    # the generator wrote the inputs and the candidates, and judged and critiqued nothing
    assert chats["gen"] and not [r for r in chats["gen"] if _system(r).startswith((JUDGE_SYSTEM, CRITIC_SYSTEM))]
    # the critic's endpoint saw only critiques; each judge's only judgments, one per (row, dimension, juror)
    assert chats["crit"] and all(_system(r).startswith(CRITIC_SYSTEM) for r in chats["crit"])
    kept = int(rows["keep_prompts"].sum())
    # each judge judged the kept rows and the calibration's known-good and known-bad dev rows
    per_judge = (kept + 2 * cfg.judge.calibration_rows) * len(judge.rubric(cfg)) * cfg.judge.jurors
    for name in ("a", "b"):
        assert len(chats[name]) == per_judge and all(_system(r).startswith(JUDGE_SYSTEM) for r in chats[name])
    # the judgments say which model each juror was; the jury's two models disagree, and the queue shows it
    by_model = judgments.groupby("juror_model")["score"]
    assert by_model.min()["strict"] == by_model.max()["strict"] == 0.25 and by_model.max()["kind"] == 1.0
    assert sorted(judgments["juror"].unique()) == [0, 1, 2, 3]
    assert judged.loc[judged["keep_prompts"], "judge_spread"].gt(0).all()
    assert len(tables["queue"]) > 0 and m["jurors"] == cfg.judge.jurors
    # the calibration tells the judges apart: the one that knows the labels separates right from wrong
    calib = tables["calibration"].set_index("judge")
    assert calib.loc["kind", "auc"] == 1.0 and calib.loc["strict", "auc"] == 0.5
    assert calib.loc["jury (mean)", "auc"] == 1.0 and m["calibration_auc"] == 1.0
    assert (calib["good"] == cfg.judge.calibration_rows).all() and (calib["bad"] == cfg.judge.calibration_rows).all()


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ("roles:\n  judge: [strong]\n", "roles.judge", "names 'strong', which is not a model"),
        ("models:\n  strong: {model: x}\n", "models", "no role names them"),
        ("models:\n  strong: {model: x}\nroles:\n  judge: [strong, strong]\n", "roles.judge", "twice"),
        ("models:\n  llm: {model: x}\nroles:\n  critic: llm\n", "models", "cannot name a model"),
        ("models:\n  s: {provider: openai, base_url: 'ftp://h'}\nroles:\n  namer: s\n", "models.s.base_url", "http"),
    ],
)
def test_bad_roles_name_the_field(tmp_path, extra, field, message):
    p = tmp_path / "c.yaml"
    p.write_text((ROOT / "configs" / "smoke.yaml").read_text() + extra)
    with pytest.raises(ConfigError, match=rf"c.yaml:\d+: field '{field}'.*{message}"):
        load_config(p)


def test_a_third_juror_of_one_greedy_model_is_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text((ROOT / "configs" / "smoke.yaml").read_text().replace("jurors: 2 ", "jurors: 3 "))
    with pytest.raises(ConfigError, match="repeats an earlier one word for word"):
        load_config(p)
    p.write_text(p.read_text().replace("  min_score: 0.0", "  temperature: 0.7\n  min_score: 0.0"))
    assert load_config(p)[0].judge.jurors == 3


def test_the_estimate_prices_each_roles_calls_at_its_models_prices(tmp_path):
    from workbench import plan
    from workbench.config import RunConfig

    priced = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}
    cfg = RunConfig.model_validate(
        {
            "task": {"labels": ["a", "b"]},
            "sampling": {"rows_per_label": 5},
            "llm": {**priced, "price_input_per_1m": 1.0, "price_output_per_1m": 2.0},
            "models": {"big": {**priced, "price_input_per_1m": 10.0, "price_output_per_1m": 30.0},
                       "free": {**priced, "model": "other"}},
            "roles": {"judge": ["big", "free"]},
        }
    )  # fmt: skip
    est = plan.estimate(cfg, ["a", "b"], cache_dir=tmp_path).set_index("stage")
    # (rows + the calibration's 20 good and 20 bad) × dimensions × one juror of each model
    assert est.loc["03_judge", "llm_calls"] == (10 + 40) * 3 * 2
    judge = est.loc["03_judge"]
    # half the calls go to "big" at its prices, half to "free", which has none
    assert judge["cost"] == pytest.approx(
        (judge["prompt_tokens"] * 10 + judge["completion_tokens"] * 30) / 2e6, rel=1e-3
    )
    gen = est.loc["02_responses"]
    assert gen["cost"] == pytest.approx((gen["prompt_tokens"] + gen["completion_tokens"] * 2) / 1e6, rel=1e-3)


def test_roles_naming_one_model_share_one_llm(tmp_path):
    from workbench.config import RunConfig

    cfg = RunConfig.model_validate(
        {"models": {"big": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "big"}},
         "roles": {"namer": "big", "refusal_judge": "big"}}
    )  # fmt: skip
    stage = Stage("07_gaps", cfg, tmp_path)
    assert stage.llm("namer") is stage.llm("refusal_judge") and stage.llm("namer").cfg.model == "big"
    assert stage.llm("critic") is stage.llm("generator") and stage.llm("critic").cfg.provider == "local"
    assert list(stage.jury()) == ["llm"]


def test_the_calibration_table_reads_each_judges_separation():
    scored = pd.DataFrame(
        {
            "id": ["g1", "g2", "b1", "b2"] * 3,
            "known": ["good", "good", "bad", "bad"] * 3,
            "juror_model": ["sharp"] * 4 + ["blind"] * 4 + ["backwards"] * 4,
            "score": [1.0, 0.75, 0.25, 0.0] + [0.5] * 4 + [0.0, 0.25, 0.75, None],
        }
    )
    table = judge.calibration_table(scored)
    t = table.set_index("judge")
    assert t.loc["sharp", "auc"] == 1.0 and t.loc["blind", "auc"] == 0.5 and t.loc["backwards", "auc"] == 0.0
    assert t.loc["backwards", "unscored"] == 1 and t.loc["backwards", "bad"] == 1
    assert t.loc["sharp", "good_mean"] == 0.875 and "jury (mean)" in t.index
    assert "AUC" in judge.calibration_markdown(table) and "chance" in judge.calibration_markdown(table.iloc[[1]])
    assert "No calibration" in judge.calibration_markdown(None)
