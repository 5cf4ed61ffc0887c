"""The bad-input matrix: each case is what a user gets wrong, run through the `workbench` command
where it can be. Each must give a message that says what was wrong, where (file:line:field,
stage, row id) and how to fix it, exit non-zero, and leave nothing half-written marked complete."""

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from scripted_llm import ScriptedLLM
from support import SEEDS, prompt_rows, simserver

from workbench import cli, driver, files, judge, runs
from workbench.config import LLMConfig, RunConfig
from workbench.llm import LLM, EndpointError, Request

ROOT = Path(__file__).resolve().parent.parent
SMOKE = (ROOT / "configs" / "smoke.yaml").read_text()


def cli_error(argv: list[str], capsys) -> str:
    """Run the command; it must fail with exit status 2 and say why on stderr."""
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("workbench: error: "), err
    return err


def config(tmp_path: Path, text: str = SMOKE, *, replace: tuple[str, str] | None = None, name: str = "c.yaml") -> Path:
    if replace:
        assert replace[0] in text, replace[0]
        text = text.replace(*replace)
    p = tmp_path / name
    p.write_text(text)
    return p


def run_check(tmp_path, capsys, p: Path, *extra: str) -> str:
    """`workbench run` of config `p` into tmp_path/runs; nothing may be created there."""
    err = cli_error(["run", str(p), "--runs-dir", str(tmp_path / "runs"), *extra], capsys)
    made = list((tmp_path / "runs").rglob("provenance.json")) if (tmp_path / "runs").exists() else []
    assert made == [], "a run folder was created for a config that cannot run"
    return err


# ---------------------------------------------------------------- the config file


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    p = config(tmp_path, replace=("  name: smoke\n", "  name: [smoke\n"))
    err = run_check(tmp_path, capsys, p)
    assert f"{p}:" in err and "YAML syntax error" in err


def test_unknown_key_names_line_and_the_valid_keys(tmp_path, capsys):
    p = config(tmp_path, replace=("  rows_per_label: 6", "  rows_per_lable: 6"))
    err = run_check(tmp_path, capsys, p)
    line = SMOKE.splitlines().index("  rows_per_label: 6") + 1
    assert f"{p}:{line}: field 'sampling.rows_per_lable': unknown key" in err and "rows_per_label" in err


def test_wrong_type_names_field_and_value(tmp_path, capsys):
    p = config(tmp_path, replace=("  rows_per_label: 6", "  rows_per_label: six"))
    err = run_check(tmp_path, capsys, p)
    assert "field 'sampling.rows_per_label'" in err and "'six'" in err and "integer" in err


def test_out_of_range_value(tmp_path, capsys):
    p = config(tmp_path, replace=("  jurors: 2 ", "  jurors: -1 "))
    err = run_check(tmp_path, capsys, p)
    assert "field 'judge.jurors'" in err and "-1" in err and "greater than or equal" in err


def test_empty_label_set(tmp_path, capsys):
    p = config(tmp_path, replace=("  labels: [card_arrival, lost_or_stolen_card, exchange_rate, top_up_failed, "
                                  "cash_withdrawal_charge]", "  labels: []"))  # fmt: skip
    err = run_check(tmp_path, capsys, p)
    assert "task.labels" in err and "empty" in err.lower()


def test_duplicate_labels(tmp_path, capsys):
    p = config(tmp_path, replace=("[card_arrival, lost_or_stolen_card,", "[card_arrival, card_arrival,"))
    err = run_check(tmp_path, capsys, p)
    assert f"{p}:8: field 'task.labels'" in err and "duplicate labels: ['card_arrival']" in err


def test_config_file_not_utf8(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_bytes(SMOKE.replace("Classify online-banking", "Classify caf\xe9 online-banking").encode("latin-1"))
    err = run_check(tmp_path, capsys, p)
    assert f"{p}: not UTF-8" in err


def test_config_file_missing(tmp_path, capsys):
    err = run_check(tmp_path, capsys, tmp_path / "nope.yaml")
    assert "nope.yaml: config file not found" in err


def test_override_without_a_value(tmp_path, capsys):
    err = run_check(tmp_path, capsys, ROOT / "configs" / "smoke.yaml", "--set", "sampling.rows_per_label")
    assert "--set" in err and "sampling.rows_per_label" in err and "KEY=VALUE" in err


def test_unknown_stage(tmp_path, capsys):
    err = run_check(tmp_path, capsys, ROOT / "configs" / "smoke.yaml", "--stages", "00_task,02_respones")
    assert "unknown stages ['02_respones']" in err and "02_responses" in err


# ---------------------------------------------------------------- data files


def _with_seeds(tmp_path, content: bytes, suffix: str = ".csv") -> Path:
    seeds = tmp_path / f"seeds{suffix}"
    seeds.write_bytes(content)
    return config(tmp_path, replace=("  seeds_per_label: 3", f"  seeds_per_label: 3\n  seeds_file: {seeds}"))


def test_missing_seeds_file(tmp_path, capsys):
    p = config(tmp_path, replace=("  seeds_per_label: 3", f"  seeds_per_label: 3\n  seeds_file: {tmp_path}/no.csv"))
    err = run_check(tmp_path, capsys, p)
    assert f"{tmp_path}/no.csv: file not found" in err


def test_seeds_csv_with_the_wrong_columns(tmp_path, capsys):
    p = _with_seeds(tmp_path, b"message,intent\nwhere is my card,card_arrival\n")
    err = run_check(tmp_path, capsys, p)
    assert "seeds.csv:1: expected a header with a text column and a label column; found ['message', 'intent']" in err


def test_seeds_file_not_utf8(tmp_path, capsys):
    p = _with_seeds(tmp_path, "text,label\nmy caf\xe9 card never came,card_arrival\n".encode("latin-1"))
    err = run_check(tmp_path, capsys, p)
    assert "seeds.csv: not UTF-8" in err and "byte" in err


def test_seeds_file_with_a_label_outside_the_task(tmp_path, capsys):
    p = _with_seeds(tmp_path, b"text,label\nwhere is my card,card_arrival\nhow do I fly,book_flight\n")
    err = run_check(tmp_path, capsys, p)
    assert "seeds.csv: unknown labels at line 3 ('book_flight')" in err


def test_seeds_jsonl_with_a_broken_line(tmp_path, capsys):
    p = _with_seeds(tmp_path, b'{"text": "where is my card", "label": "card_arrival"}\n{"text": "oops"\n', ".jsonl")
    err = run_check(tmp_path, capsys, p)
    assert "seeds.jsonl:2: not JSON" in err


@pytest.mark.parametrize(
    "body, said",
    [
        (b'text,label\n"my card has not come,card_arrival\nI lost my card,lost_or_stolen_card\nwhere is it",card_arrival\n',
         "seeds.csv:2: this row's quoted text runs to line 4 over what reads as rows"),
        (b"label,text\ncard_arrival,Hi, where is my new card?\n",
         "seeds.csv:2: 3 fields where the header ['label', 'text'] has 2: a comma in the text?"),
        (b'text,label\nfine,card_arrival\n"never closed,card_arrival\nmore,lost_or_stolen_card\n',
         "seeds.csv:3: the CSV cannot be read from this line on (unexpected end of data)"),
        (b'text,label\n"a text\nover two lines",card_arrival\n"a bad one,lost_or_stolen_card\n',
         "seeds.csv:4: the CSV cannot be read"),
    ],
    ids=["a quote closing rows later", "an unquoted comma", "an unclosed quote at the end", "after a multi-line text"],
)  # fmt: skip
def test_seeds_csv_quoting_errors_name_the_line_where_the_row_starts(tmp_path, capsys, body, said):
    err = run_check(tmp_path, capsys, _with_seeds(tmp_path, body))
    assert said in err


@pytest.mark.parametrize("suffix", [".JSONL", ".json", ".ndjson"])
def test_a_seeds_file_of_json_lines_is_read_as_such_whatever_its_suffix_case(tmp_path, suffix):
    from workbench.data import read_rows

    path = tmp_path / f"seeds{suffix}"
    path.write_text('{"text": "where is my card", "label": "card_arrival"}\n')
    assert read_rows(path)[["text", "label"]].values.tolist() == [["where is my card", "card_arrival"]]


def test_a_seeds_file_of_another_kind_is_refused_by_its_suffix(tmp_path, capsys):
    err = run_check(tmp_path, capsys, _with_seeds(tmp_path, b"text,label\nwhere is my card,card_arrival\n", ".xlsx"))
    assert "seeds.xlsx: a file named .xlsx is neither CSV" in err


# ---------------------------------------------------------------- the endpoint


def endpoint_config(tmp_path, url: str, model: str = "sim", env: str = "WB_TEST_KEY") -> Path:
    return config(tmp_path, replace=("  provider: local          # the embedded SmolLM2-135M-Instruct\n",
                                     f"  provider: openai\n  model: {model}\n  base_url: {url}\n  api_key_env: {env}\n"))  # fmt: skip


def test_api_key_variable_not_set(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WB_TEST_KEY", raising=False)
    err = run_check(tmp_path, capsys, endpoint_config(tmp_path, "http://127.0.0.1:9/v1"))
    assert "llm.api_key_env: environment variable WB_TEST_KEY is not set" in err and "export" in err


def test_the_key_itself_in_api_key_env_is_refused_and_not_echoed(tmp_path, capsys):
    key = "sk-proj-Zx81LmQ0aaaabbbbccccdddd"
    err = run_check(tmp_path, capsys, endpoint_config(tmp_path, "http://127.0.0.1:9/v1", env=key))
    assert "llm.api_key_env" in err and "name of an environment variable" in err
    assert key not in err and key[6:] not in err


def test_endpoint_that_refuses_connections(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WB_TEST_KEY", "sk-test")
    err = run_check(tmp_path, capsys, endpoint_config(tmp_path, "http://127.0.0.1:9/v1"))
    assert "llm.base_url: cannot reach http://127.0.0.1:9/v1" in err and "is the server running" in err


def test_wrong_api_key_401(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WB_TEST_KEY", "sk-wrong-key-123")
    with simserver(api_key="sk-right") as url:
        err = run_check(tmp_path, capsys, endpoint_config(tmp_path, url))
    assert "llm.api_key_env" in err and "refused the key in $WB_TEST_KEY" in err and "HTTP 401" in err
    assert "sk-wrong-key-123" not in err


def test_model_the_endpoint_does_not_serve_404(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WB_TEST_KEY", "sk-test")
    with simserver(models="llama-3-8b,qwen-7b") as url:
        err = run_check(tmp_path, capsys, endpoint_config(tmp_path, url, model="gpt-9"))
    assert "llm.model: 'gpt-9' is not served by" in err and "llama-3-8b, qwen-7b" in err


def test_model_refused_mid_run_stops_the_call_at_once(tmp_path, monkeypatch):
    """A server whose /models is silent still refuses the model on the first call: every
    request would fail the same way, so the call stops instead of filling a stage with errors."""
    monkeypatch.setenv("WB_TEST_KEY", "sk-test")
    with simserver(models="llama-3-8b") as url:
        llm = LLM(LLMConfig(provider="openai", model="gpt-9", base_url=url, api_key_env="WB_TEST_KEY"), tmp_path)
        with pytest.raises(EndpointError, match=r"llm.model / llm.base_url: .*HTTP 404.*gpt-9"):
            llm.generate([Request.chat(None, f"row {i}", seed=i) for i in range(50)])


def test_n_the_endpoint_does_not_support(tmp_path, monkeypatch, caplog):
    """An endpoint that refuses n > 1 with a 400: one request per candidate from then on, said once."""
    import logging

    monkeypatch.setenv("WB_TEST_KEY", "sk-test")
    with simserver(max_n=1) as url, caplog.at_level(logging.WARNING):
        llm = LLM(LLMConfig(provider="openai", model="sim", base_url=url, api_key_env="WB_TEST_KEY"), tmp_path)
        out = llm.generate([Request.chat(None, f"row {i}", seed=i, n=4) for i in range(50)])
    assert all(r["error"] is None for rs in out for r in rs) and all(len(rs) == 4 for rs in out)
    assert [r["seed"] for r in out[3]] == [3, 4, 5, 6]
    said = [r.message for r in caplog.records if "one request per candidate" in r.message]
    assert len(said) == 1 and "n: must be at most 1" in said[0]


# ---------------------------------------------------------------- runs and notebooks


def _notebook(path: Path, params: str, *cells: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)


def test_notebook_with_wrong_parameters(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(driver, "NOTEBOOKS", tmp_path)
    _notebook(tmp_path / "00_task.ipynb", 'config = ""\nrun_dir = ""\nrows = 3')
    err = run_check(tmp_path, capsys, ROOT / "configs" / "smoke.yaml", "--stages", "00_task")
    assert "00_task.ipynb: parameters cell declares ['config', 'rows', 'run_dir']" in err
    assert "expected exactly ['config', 'run_dir']" in err


def test_resuming_a_run_that_already_finished(tmp_path, capsys):
    run = runs.new_run(ROOT / "configs" / "smoke.yaml", runs_root=tmp_path)
    prov = json.loads((run / "provenance.json").read_text())
    (run / "provenance.json").write_text(json.dumps(dict(prov, status="finished", finished="2026-11-01T10:00:00")))
    err = cli_error(["resume", str(run)], capsys)
    assert "finished at 2026-11-01T10:00:00 and is never rewritten; start a new run" in err


def test_resuming_a_run_whose_endpoint_is_gone(tmp_path, capsys, monkeypatch):
    """`workbench resume` checks the endpoint before it starts a stage, and the run stays resumable."""
    monkeypatch.setenv("WB_TEST_KEY", "sk-test")
    run = runs.new_run(endpoint_config(tmp_path, "http://127.0.0.1:9/v1"), runs_root=tmp_path / "runs")
    runs.held_lock(run).release()  # as if the process that created it had died
    err = cli_error(["resume", str(run)], capsys)
    assert "llm.base_url: cannot reach http://127.0.0.1:9/v1" in err
    assert json.loads((run / "provenance.json").read_text())["status"] == "created"


def test_resuming_a_folder_that_is_not_a_run(tmp_path, capsys):
    err = cli_error(["resume", str(tmp_path)], capsys)
    assert f"{tmp_path}: not a run folder (no provenance.json)" in err


def test_disk_full_while_writing_an_artifact(tmp_path, monkeypatch):
    """write_atomic under ENOSPC: the error names the file, the earlier version stays whole and no
    temporary file is left."""
    path = tmp_path / "artifacts" / "rows.parquet"
    files.write_atomic(path, b"the earlier, whole version")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError, match=f"{path}: not written \\(No space left on device\\)"):
        files.write_atomic(path, b"x" * 1000)
    assert path.read_bytes() == b"the earlier, whole version"
    assert [p.name for p in path.parent.iterdir()] == ["rows.parquet"]


def test_disk_full_in_a_stage_fails_the_stage_and_marks_nothing_done(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(driver, "NOTEBOOKS", tmp_path)
    _notebook(
        tmp_path / "00_task.ipynb",
        'config = ""\nrun_dir = ""',
        "import os, pandas as pd\nfrom workbench.stage import open_stage\nstage = open_stage(config, run_dir, '00_task')",
        "def full(fd):\n    raise OSError(28, 'No space left on device')\nos.fsync = full",
        "stage.save(pd.DataFrame({'a': [1]}), 'seeds')",
    )
    err = cli_error(["run", str(ROOT / "configs" / "smoke.yaml"), "--runs-dir", str(tmp_path / "runs"),
                     "--stages", "00_task"], capsys)  # fmt: skip
    assert "stage 00_task failed" in err and "seeds.parquet: not written (No space left on device)" in err
    run = next((tmp_path / "runs" / "smoke").iterdir())
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "failed" and prov["stages"]["00_task"]["status"] == "failed"
    assert not list((run / "artifacts").iterdir())  # no seeds.parquet, whole or half


# ---------------------------------------------------------------- what the LLM replies


@pytest.mark.parametrize(
    "reply",
    ["", "Sure! I would rate it highly.", '{"rating": "great", "why": "clear"}', '{"score": "excellent"}'],
    ids=["empty", "not-json", "json-of-the-wrong-shape", "json-score-not-a-number"],
)
def test_judge_reply_that_cannot_be_read_is_kept_raw_and_rejected_by_row(tmp_path, reply):
    cfg = RunConfig.model_validate({"task": {"labels": ["card_arrival", "lost_or_stolen_card"]}})
    cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"rubric": ["correctness"], "jury": []})})
    llm = ScriptedLLM(lambda req, i: "5 - on topic" if i == 0 else reply, tmp_path)
    rows = prompt_rows(["Where is my card?", "My card is late"], ["card_arrival"] * 2)
    out, judgments = judge.judge_rows(cfg, rows, pd.DataFrame(), SEEDS, llm, tmp_path)
    assert out.loc[0, "keep_judge"] and out.loc[0, "id"] == "r0"
    assert out.loc[1, "id"] == "r1" and out.loc[1, "reject_reason_judge"] == "unparseable"
    assert not out.loc[1, "keep_judge"] and judgments.loc[1, "raw"] == reply  # kept, to be read


# ---------------------------------------------------------------- the siblings found by trying it by hand


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b"])
def test_a_task_name_cannot_leave_the_runs_folder(tmp_path, capsys, name):
    err = run_check(tmp_path, capsys, config(tmp_path), "--set", f"task.name={name}")
    assert "task.name" in err and not any(p.name == "provenance.json" for p in tmp_path.rglob("*"))


def test_a_misspelt_section_in_set_nan_and_an_empty_config(tmp_path, capsys):
    err = run_check(tmp_path, capsys, config(tmp_path), "--set", "trian.sft.max_steps=1")
    assert "--set trian.sft.max_steps: field 'trian': unknown key; valid keys here: task, data" in err
    err = run_check(tmp_path, capsys, config(tmp_path), "--set", "diversity.edge_case_share=.nan")
    assert "diversity.edge_case_share" in err and "finite number" in err
    for text in ("", "# only a comment\n"):
        err = cli_error(["check", str(config(tmp_path, text, name="empty.yaml"))], capsys)
        assert "the config is empty" in err and "workbench init" in err


def test_stages_given_empty_and_check_with_failing_data(tmp_path, capsys):
    err = run_check(tmp_path, capsys, config(tmp_path), "--stages", "")
    assert "--stages: no stage named" in err
    p = config(tmp_path, replace=("dataset: banking77", "dataset: no_such_dataset"))
    err = cli_error(["check", str(p)], capsys)
    assert "data.dataset: folder" in err and "no_such_dataset" in err


@pytest.mark.parametrize(
    "content",
    ['{"status": "runn', "", "[1, 2]", '{"stages": []}', '{"stages": {"00_task": "done"}}', '{"attempts": [1]}',
     '{"status": 3}', '{"parent": ["a"]}'],
)  # fmt: skip
def test_a_broken_provenance_names_its_file_and_stops_nothing_else(tmp_path, capsys, content):
    run = tmp_path / "runs" / "smoke" / "001-20261127-000000"
    run.mkdir(parents=True)
    (run / "provenance.json").write_text(content)
    (run / "config.yaml").write_text(SMOKE)
    err = cli_error(["resume", str(run)], capsys)
    assert f"{run / 'provenance.json'}:" in err
    # a later `workbench run` of the same task looks past it for a run to resume
    assert runs.find_resumable(config(tmp_path), None, tmp_path / "runs") is None


def test_non_ascii_descriptions_and_typing_by_the_leading_verb():
    from workbench import init

    assert init.check_description("Классифицировать сообщения клиентов банка по намерению")
    # scripts written without spaces: a word per two characters, not one "word" for the sentence
    assert init.check_description("サポートチケットを緊急度で分類する") and init.check_description(
        "客服工单按紧急程度分类"
    )
    with pytest.raises(init.InitError, match="1 word"):
        init.check_description("分類")
    kind, _, leading = init.guess_type("Classify what people ask a virtual assistant into intents", None)
    assert (kind, leading) == ("classification", True)
    kind, _, leading = init.guess_type("For a shop's chatbot, sort the messages by topic", ["a", "b"])
    assert kind == "dialogue" and not leading  # a later word: it does not overrule a valid draft


def test_a_type_change_re_derives_the_fields_that_depend_on_it(tmp_path):
    from workbench.config import dump_config, load_config

    cfg = RunConfig.model_validate({"task": {"name": "t", "type": "summarization", "description": "Summarize tickets"},
                                    "data": {"dataset": None}})  # fmt: skip
    text = dump_config(cfg)
    assert "  metrics: null" in text and "rouge_l" not in text  # null (by type), not summarization's metrics
    p = tmp_path / "c.yaml"
    p.write_text(text.replace("type: summarization", "type: classification").replace(
        "labels: null", "labels: [a, b]"))  # fmt: skip
    back, _ = load_config(p)
    assert back.task.type == "classification" and "accuracy" in back.evaluate.metrics


@pytest.mark.parametrize(
    "line, why",
    [('{"text": null, "label": "card_arrival"}', "text must be a string; got NoneType"),
     ('{"text": ["where", "is", "it"], "label": "card_arrival"}', "text must be a string; got list"),
     ('{"text": {"a": 1}, "label": "card_arrival"}', "text must be a string; got dict"),
     ('{"text": "where is it", "label": ["card_arrival"]}', "label must be a string; got list")],
)  # fmt: skip
def test_seed_jsonl_values_of_the_wrong_type(tmp_path, capsys, line, why):
    seeds = tmp_path / "s.jsonl"
    seeds.write_text('{"text": "where is my card", "label": "card_arrival"}\n' + line + "\n")
    err = run_check(tmp_path, capsys, config(tmp_path), "--set", f"data.seeds_file={seeds}")
    assert f"{seeds}:2: {why}" in err


def test_relative_data_paths_follow_the_config_and_the_users_columns(tmp_path, monkeypatch):
    from workbench import data
    from workbench.config import dump_config, load_config

    folder = tmp_path / "project"
    (folder / "ds").mkdir(parents=True)
    rows = "text,intent\n" + "".join(f"message {i} about {lab},{lab}\n" for i in range(4) for lab in ("late", "lost"))
    (folder / "ds" / "train.csv").write_text(rows)
    (folder / "ds" / "test.csv").write_text(rows)
    (folder / "seeds.csv").write_bytes("\ufefftext,label\nwhere is it,late\nI lost it,lost\nI lost it,lost\n".encode())
    p = folder / "c.yaml"
    p.write_text("task:\n  name: t\n  labels: [late, lost]\ndata:\n  dataset: ./ds\n  seeds_file: seeds.csv\n")
    monkeypatch.chdir(tmp_path)  # another folder than the config's
    cfg, doc = load_config(p)
    assert cfg.data.dataset == str(folder / "ds") and cfg.data.seeds_file == str(folder / "seeds.csv")
    assert f"seeds_file: {folder / 'seeds.csv'}" in dump_config(cfg, doc)  # a resumed run finds it too
    assert data.labels(cfg) == ["late", "lost"]  # the dataset's `intent` column, detected
    assert len(data.seeds(cfg)) == 2  # the BOM read, the repeated row used once
    (folder / "seeds.csv").write_text("text,label\nwhere is it,late\n")
    with pytest.raises(Exception, match=r"no seed row for the labels \['lost'\]"):
        data.seeds(cfg)


def test_a_hand_broken_config_patch_names_file_and_line(tmp_path):
    from workbench import gaps
    from workbench.config import ConfigError

    p = tmp_path / "config_patch.yaml"
    p.write_text("edits:\n- {id: e1, kind: more_rows\n")
    with pytest.raises(ConfigError, match=rf"{p}:\d+: YAML syntax error"):
        gaps.load_patch(p)


def test_cache_and_runs_folders_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "a-file"))
    err = run_check(tmp_path, capsys, config(tmp_path))
    assert f"WORKBENCH_CACHE={tmp_path / 'a-file'}: {tmp_path / 'a-file'} is a file, not a folder" in err
    monkeypatch.delenv("WORKBENCH_CACHE")
    with pytest.raises(runs.RunError, match="cannot create the runs folder"):
        runs.new_run(config(tmp_path), runs_root=tmp_path / "a-file")


def test_the_card_and_the_system_prompt_keep_text_as_text():
    from workbench import export

    cfg = RunConfig.model_validate({"task": {"name": "t", "description": "Sort <script>alert(1)</script> tickets",
                                             "labels": ["a, b", "c"]}})  # fmt: skip
    assert export.system_prompt(cfg, ["a, b", "c"]).endswith('from: ["a, b", "c"].')
    assert export.system_prompt(cfg, ["a", "c"]).endswith("from: a, c.")
    card = export.card(cfg, pd.DataFrame({"keep": [True], "label": ["c"], "reject_stage": [None], "reject_reason": [None]}),
                               pd.DataFrame({"stage": [], "rows": []}), 0, "", {}, "")  # fmt: skip
    assert "<script>" not in card and "&lt;script&gt;" in card
    with pytest.raises(Exception, match="label"):
        RunConfig.model_validate({"task": {"labels": ["a\nb", "c"]}})


# ---------------------------------------------------------------- values checked where they enter


@pytest.mark.parametrize(
    "where, value",
    [("sampling.rows_per_label", "true"), ("judge.jurors", "false"), ("data.test_per_label", "true"),
     ("filter.near_dup_threshold", "true"), ("diversity.difficulty", "{easy: true, hard: 1}")],
)  # fmt: skip
def test_a_boolean_is_not_read_as_a_number(tmp_path, capsys, where, value):
    """pydantic's lax mode reads true as 1: `rows_per_label: true` would run 1 row per label."""
    err = run_check(tmp_path, capsys, config(tmp_path), "--set", f"{where}={value}")
    assert where in err and "expected a number, got the boolean" in err


def test_an_alias_bomb_is_refused_before_anything_reads_it(tmp_path, capsys):
    bomb = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
    p = config(tmp_path, 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + bomb + SMOKE)
    err = cli_error(["check", str(p)], capsys)
    assert f"{p}: its aliases" in err and "expand to more than 100,000 values" in err


@pytest.mark.parametrize("label", ["card_arrival\u200b", "card_\u200darrival", "\ufeffcard_arrival", "card_arrival "])
def test_labels_with_invisible_characters_are_refused(tmp_path, capsys, label):
    p = config(tmp_path, replace=("labels: [card_arrival,", f"labels: [{json.dumps(label)},"))
    err = run_check(tmp_path, capsys, p)
    assert "task.labels" in err and ("invisible character" in err or "starts or ends with a space" in err)


def test_two_spellings_of_one_label_are_one_label():
    """NFC: é written as one character and as e + a combining accent are the same label."""
    with pytest.raises(ValueError, match="duplicate labels"):
        RunConfig.model_validate({"task": {"labels": ["caf\u00e9", "cafe\u0301"]}})
    assert RunConfig.model_validate({"task": {"labels": ["cafe\u0301", "tea"]}}).task.label_names()[0] == "caf\u00e9"


@pytest.mark.parametrize("key", ["model", "messages", "n", "stream", "temperature", "response_format"])
def test_extra_body_cannot_replace_what_the_workbench_sets(tmp_path, capsys, key):
    p = config(tmp_path)
    err = run_check(tmp_path, capsys, p, "--set", "llm.provider=openai", "--set", "llm.base_url=http://127.0.0.1:9/v1",
                    "--set", f"llm.extra_body={{{key}: x}}")  # fmt: skip
    assert "llm.extra_body" in err and f"'{key}': the workbench sets it" in err


def test_extra_body_is_part_of_the_cache_key(tmp_path):
    base = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    plain, routed = (
        LLM(LLMConfig(**base), tmp_path),
        LLM(LLMConfig(**base, extra_body={"provider": {"order": ["a"]}}), tmp_path),
    )
    other = LLM(LLMConfig(**base, extra_body={"provider": {"order": ["b"]}}), tmp_path)
    assert len({plain.identity, routed.identity, other.identity}) == 3


def test_the_same_model_twice_in_the_jury_is_refused(tmp_path, capsys):
    p = config(tmp_path)
    err = run_check(tmp_path, capsys, p, "--set", "models.twin={provider: local, dtype: float32}",
                    "--set", "llm.dtype=float32", "--set", "roles.judge=[llm, twin]")  # fmt: skip
    assert "roles.judge: llm and twin are the same model" in err


@pytest.mark.parametrize(
    "where, value",
    [("llm.base_url", "https://x.example/v1?key=sk-live-123"), ("llm.base_url", "https://x.example/v1?code=abc"),
     ("llm.query", "{api-key: sk-live-123}"), ("llm.query", "{access_token: abc}")],
)  # fmt: skip
def test_a_literal_key_in_a_query_string_is_refused(tmp_path, capsys, where, value):
    p = config(tmp_path)
    err = run_check(tmp_path, capsys, p, "--set", "llm.provider=openai", "--set", f"{where}={value}",
                    *(["--set", "llm.base_url=https://x.example/v1"] if where == "llm.query" else []))  # fmt: skip
    assert where in err and "holds a literal value" in err and "${MY_VAR}" in err
    assert "sk-live-123" not in err.split("input_value")[0]


def test_a_query_key_from_the_environment_is_sent_and_never_written(tmp_path, monkeypatch):
    from workbench.llm import endpoint

    monkeypatch.setenv("QKEY", "sk-live-123")
    cfg = LLMConfig(provider="openai", base_url="https://x.example/v1?key=${QKEY}", query={"api-key": "${QKEY}"})
    assert endpoint._url(cfg, cfg.base_url, "base_url") == "https://x.example/v1?key=sk-live-123"
    assert endpoint._query(cfg) == {"api-key": "sk-live-123"}
    assert "sk-live-123" not in RunConfig(llm=cfg).model_dump_json()


@pytest.mark.parametrize(
    "sets, said",
    [(["data.seed=4294967296"], "data.seed"), (["seed=-1"], "seed"),
     (["quality.language=zz"], "'zz' is not a language the language check (langdetect) knows"),
     (["llm.provider=openai", "llm.base_url=http://127.0.0.1:9/v1", "llm.dtype=int8"], "dtype: int8 quantizes the embedded model"),
     (["task.type=reply", "task.must_refuse=[]", "diversity.refusal_share=0.2"], "task.must_refuse is empty")],
    ids=["seed too large", "seed negative", "unknown language", "int8 on an endpoint", "refusals without a list"],
)  # fmt: skip
def test_values_out_of_what_a_stage_can_use_are_refused_at_check(tmp_path, capsys, sets, said):
    err = run_check(tmp_path, capsys, config(tmp_path), *[a for s in sets for a in ("--set", s)])
    assert said in err


def test_check_on_a_folder_names_its_configs(tmp_path, capsys):
    config(tmp_path)
    err = cli_error(["check", str(tmp_path)], capsys)
    assert f"{tmp_path}: a folder, not a config file; name one of its configs: ['c.yaml']" in err


@pytest.mark.parametrize(
    "edit, said",
    [({"kind": "phrasing", "label": "card_arrival", "value": "where is my card"}, "value must be a list of texts"),
     ({"kind": "more_rows", "label": "card_arrival", "value": "abc"}, "value must be a whole number of rows"),
     ({"kind": "more_rows", "label": "card_arrival", "value": True}, "value must be a whole number of rows"),
     ({"kind": "definition", "label": "card_arrival", "value": ["a", "b"]}, "value must be one sentence"),
     ({"kind": "refusals", "label": "x", "value": 3}, "value must be a share between 0 and 1")],
    ids=["phrasing as a string", "more_rows as text", "more_rows as a boolean", "definition as a list", "refusals above 1"],
)  # fmt: skip
def test_a_hand_edited_patch_is_read_against_each_kinds_value(tmp_path, edit, said):
    from workbench import gaps

    path = tmp_path / "patch.yaml"
    path.write_text("edits:\n- " + json.dumps({"id": "e1", **edit}) + "\n")
    with pytest.raises(ValueError, match=said) as e:
        gaps.load_patch(path)
    assert f"{path}: edit e1 ({edit['kind']})" in str(e.value)


@pytest.mark.parametrize(
    "row, said",
    [({"text": "Invoice 42 from ACME", "fields": {"vendorr": "ACME"}}, "fields ['vendorr'] are not declared"),
     ({"text": "Invoice 42 from ACME", "fields": {"vendor": "ACME", "total": "Paris"}}, "total = 'Paris' is not of its declared type number")],
    ids=["an undeclared field", "a value not of its type"],
)  # fmt: skip
def test_every_row_of_a_structured_dataset_is_checked_not_only_the_seeds(tmp_path, capsys, row, said):
    good = [
        {"text": f"Invoice {i} from ACME for {i}.50", "fields": {"vendor": "ACME", "total": f"{i}.50"}}
        for i in range(30)
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in [*good, row]) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in good) + "\n")
    text = (f"task:\n  name: invoices\n  type: extraction\n  description: Extract invoice fields\n"
            f"  fields:\n    - {{name: vendor}}\n    - {{name: total, type: number}}\n"
            f"data:\n  dataset: {tmp_path}\n  seeds_per_label: 2\n  dev_per_label: 2\n")  # fmt: skip
    err = cli_error(["check", str(config(tmp_path, text))], capsys)
    assert said in err and "train split, line 31" in err


def test_a_named_models_error_names_its_own_section(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WB_JUDGE_KEY", raising=False)
    p = config(tmp_path)
    err = run_check(tmp_path, capsys, p, "--set", "models.j={provider: openai, base_url: 'http://127.0.0.1:9/v1', "
                    "api_key_env: WB_JUDGE_KEY}", "--set", "roles.judge=[llm, j]")  # fmt: skip
    assert "models.j.api_key_env: environment variable WB_JUDGE_KEY is not set" in err and "llm.api_key_env" not in err
