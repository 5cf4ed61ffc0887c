import json
import shutil
from pathlib import Path

import nbformat
import pytest

from workbench import config, driver, files, runs
from workbench.runs import RunError


def make_notebook(path, params: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, path)


def test_driver_refuses_notebook_with_wrong_parameters(tmp_path, monkeypatch, root):
    monkeypatch.setattr(driver, "NOTEBOOKS", tmp_path)
    make_notebook(tmp_path / "00_task.ipynb", 'config = ""\nrun_dir = ""')
    make_notebook(tmp_path / "01_prompts.ipynb", 'config = ""\nrun_dir = ""\nlabels = 3')
    run = runs.new_run(root / "configs" / "smoke.yaml", runs_root=tmp_path / "runs")
    with pytest.raises(RunError) as e:
        driver.execute(run, ["00_task", "01_prompts"])
    assert "01_prompts.ipynb: parameters cell declares ['config', 'labels', 'run_dir']" in str(e.value)
    assert "00_task" not in str(e.value)
    assert not (run / "notebooks").exists()  # nothing ran


def test_missing_broken_notebook_and_unknown_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "NOTEBOOKS", tmp_path)
    with pytest.raises(RunError, match="00_task.ipynb: notebook not found"):
        driver.validate_stages(["00_task"])
    (tmp_path / "00_task.ipynb").write_text("{ not a notebook")
    with pytest.raises(RunError, match="00_task.ipynb: cannot read its parameters"):
        driver.validate_stages(["00_task"])
    with pytest.raises(RunError, match=r"unknown stages \['05_trian'\]"):
        driver.validate_stages(["05_trian"])


def test_shipped_notebooks_take_exactly_config_and_run_dir():
    assert driver.validate_stages(None) == runs.STAGES


def test_run_folders_are_numbered_and_hold_config_and_provenance(tmp_path, root):
    a = runs.new_run(root / "configs" / "smoke.yaml", ["sampling.rows_per_label=2"], runs_root=tmp_path)
    b = runs.new_run(root / "configs" / "smoke.yaml", runs_root=tmp_path)
    assert a.parent == b.parent == tmp_path / "smoke"
    assert a.name.startswith("001-") and b.name.startswith("002-")
    assert "rows_per_label: 2" in (a / "config.yaml").read_text()
    prov = json.loads((a / "provenance.json").read_text())
    assert prov["overrides"] == ["sampling.rows_per_label=2"] and prov["status"] == "created"
    assert prov["packages"]["torch"] and "sha" in prov["git"] and "dirty" in prov["git"]


def test_finished_run_is_never_rewritten(tmp_path, root):
    run = runs.new_run(root / "configs" / "smoke.yaml", runs_root=tmp_path)
    prov = json.loads((run / "provenance.json").read_text())
    prov.update(status="finished", finished="2026-01-01T00:00:00")
    (run / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(RunError, match="never rewritten"):
        driver.execute(run)


def test_stage_failure_stops_the_run_and_keeps_the_notebook(tmp_path, monkeypatch, root):
    monkeypatch.setattr(driver, "NOTEBOOKS", tmp_path)
    make_notebook(tmp_path / "00_task.ipynb", 'config = ""\nrun_dir = ""')
    bad = nbformat.read(tmp_path / "00_task.ipynb", as_version=4)
    bad.cells.append(nbformat.v4.new_code_cell("raise ValueError('planted failure')"))
    nbformat.write(bad, tmp_path / "01_prompts.ipynb")
    make_notebook(tmp_path / "02_responses.ipynb", 'config = ""\nrun_dir = ""')
    run = runs.new_run(root / "configs" / "smoke.yaml", runs_root=tmp_path / "runs")
    with pytest.raises(RunError, match="(?s)stage 01_prompts failed.*ValueError: planted failure"):
        driver.execute(run, ["00_task", "01_prompts", "02_responses"])
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "failed"
    assert prov["stages"]["00_task"]["status"] == "done" and prov["stages"]["01_prompts"]["status"] == "failed"
    assert "02_responses" not in prov["stages"]
    assert (run / "notebooks" / "01_prompts.ipynb").is_file()
    assert "planted failure" in (run / "report" / "01_prompts.html").read_text()


def _fake_stages(monkeypatch, tmp_path, names):
    monkeypatch.setattr(driver, "NOTEBOOKS", tmp_path)
    for n in names:
        make_notebook(tmp_path / f"{n}.ipynb", 'config = ""\nrun_dir = ""')


def test_an_unfinished_run_of_the_same_config_is_found_and_locked(tmp_path, monkeypatch, root):
    cfg = root / "configs" / "smoke.yaml"
    stages = ["00_task", "01_prompts"]
    done = runs.new_run(cfg, runs_root=tmp_path, stages=stages)
    prov = json.loads((done / "provenance.json").read_text())
    (done / "provenance.json").write_text(json.dumps(dict(prov, status="partial")))
    other = runs.new_run(cfg, ["seed=7"], runs_root=tmp_path, stages=stages)
    unfinished = runs.new_run(cfg, runs_root=tmp_path, stages=stages)
    assert other != unfinished
    # the process that creates a run holds it until it executes it
    assert runs.find_resumable(cfg, runs_root=tmp_path, stages=stages) is None
    for r in (other, unfinished):  # as if the process that made them had died
        runs.held_lock(r).release()
    found = runs.find_resumable(cfg, runs_root=tmp_path, stages=stages)
    assert found is not None and found[0] == unfinished
    # while it is held (a process executing it), nobody else gets it
    assert runs.find_resumable(cfg, runs_root=tmp_path, stages=stages) is None
    with pytest.raises(RunError, match="another process is executing this run"):
        driver.execute(unfinished, stages)
    found[1].release()
    assert runs.find_resumable(cfg, ["seed=7"], runs_root=tmp_path, stages=stages)[0] == other
    assert runs.find_resumable(cfg, runs_root=tmp_path, stages=["00_task"]) is None  # other stages: a new run


def test_resume_skips_done_stages_and_marks_the_dead_one_interrupted(tmp_path, monkeypatch, root):
    names = ["00_task", "01_prompts", "02_responses"]
    _fake_stages(monkeypatch, tmp_path, names)
    run = runs.new_run(root / "configs" / "smoke.yaml", runs_root=tmp_path / "runs", stages=names)
    prov = json.loads((run / "provenance.json").read_text())
    prov.update(status="running", stages={"00_task": {"status": "done"}, "01_prompts": {"status": "running"}})
    (run / "provenance.json").write_text(json.dumps(prov))  # as a process killed in 01 leaves it
    (run / "artifacts" / ".prompts.parquet.tmp4242").write_text("half")
    ran = []
    real = driver.papermill_execute

    def spy(src, out, **kw):
        ran.append(Path(src).stem)
        return real(src, out, **kw)

    monkeypatch.setattr(driver, "papermill_execute", spy)
    driver.execute(run, names)
    prov = json.loads((run / "provenance.json").read_text())
    assert ran == ["01_prompts", "02_responses"]
    assert prov["stages"]["01_prompts"]["status"] == "done"
    assert len(prov["stages"]["01_prompts"]["interrupted"]) == 1
    assert [a["from_stage"] for a in prov["attempts"]] == ["01_prompts"]
    assert not (run / "artifacts" / ".prompts.parquet.tmp4242").exists()


def test_ctrl_c_marks_the_stage_and_run_interrupted(tmp_path, monkeypatch, root):
    names = ["00_task", "01_prompts"]
    _fake_stages(monkeypatch, tmp_path, names)
    run = runs.new_run(root / "configs" / "smoke.yaml", runs_root=tmp_path / "runs", stages=names)

    def interrupted(src, out, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "papermill_execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        driver.execute(run, names)
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "interrupted" and prov["stages"]["00_task"]["status"] == "interrupted"
    assert runs.RunLock(run).acquire()  # the lock went with the interrupted process


def test_a_notebook_opened_without_a_run_folder_works_in_the_scratch_folder(root, tmp_path):
    """Run All in JupyterLab: a notebook's default parameters (the smoke config, no run_dir) give a
    stage in `runs/<task>/scratch/` of the config's project (beside its `configs/` folder; never
    the checkout when the config lives elsewhere), a folder that is not a numbered run."""
    from workbench import stage as stage_module

    (tmp_path / "configs").mkdir()
    shutil.copy(root / "configs" / "smoke.yaml", tmp_path / "configs" / "smoke.yaml")
    st = stage_module.open_stage(str(tmp_path / "configs" / "smoke.yaml"), "", "00_task")
    assert st.run_dir == tmp_path / "runs" / "smoke" / "scratch" and st.artifacts.is_dir()
    assert (st.run_dir / "config.yaml").read_text().startswith("# Smoke config")
    assert st.provenance() == {} and st.stage_times().empty and st.parent_config() is None
    st.record(rows=3)
    assert st.metrics() == {"00_task": {"rows": 3}}
    # a config outside any configs/ folder: its own folder is the project
    shutil.copy(root / "configs" / "smoke.yaml", tmp_path / "alone.yaml")
    assert (
        files.project_dir(tmp_path / "alone.yaml") == tmp_path
        and files.project_dir(root / "configs" / "x.yaml") == root
    )


def test_a_bare_dataset_name_is_looked_up_in_the_projects_data_folder_first(root, tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "data" / "banking77").mkdir(parents=True)  # the project's own copy, e.g. a newer export
    for f in ("train.csv", "test.csv"):
        shutil.copy(root / "data" / "banking77" / f, tmp_path / "data" / "banking77" / f)
    text = (root / "configs" / "smoke.yaml").read_text()
    (tmp_path / "configs" / "smoke.yaml").write_text(text)
    cfg, _ = config.load_config(tmp_path / "configs" / "smoke.yaml")
    assert cfg.data.dataset == str(tmp_path / "data" / "banking77")
    assert config.load_config(root / "configs" / "smoke.yaml")[0].data.dataset == "banking77"  # the bundled one


def test_a_stage_page_shows_each_warning_once_and_no_info_line(tmp_path, capsys):
    """INFO lines go to <run>/logs/<stage>.log only; a warning said after every batch, and a
    library's FutureWarning raised again and again, reach the page once (the log has them all)."""
    import logging
    import warnings

    from workbench import stage as stage_module

    root_handlers, show = list(logging.getLogger().handlers), warnings.showwarning
    try:
        path = stage_module.route_logs(tmp_path, "02_responses")
        log = logging.getLogger("workbench.llm.front")
        for batch in range(3):
            log.info("batch %d: 32 requests, 0 from cache", batch)
            log.warning("batch %d: %d answers were cut at max_tokens", batch, 5)
            warnings.warn("`past_key_values` is deprecated", FutureWarning, stacklevel=1)
            logging.getLogger("transformers.generation").warning("generation flags are not valid")
        page = capsys.readouterr().err
        assert "requests" not in page  # no INFO line
        assert page.count("answers were cut") == 1 and page.count("past_key_values") == 1
        assert page.count("generation flags") == 1
        text = path.read_text()
        assert text.count("32 requests") == 3 and text.count("answers were cut") == 3
        assert stage_module.route_logs(tmp_path, "03_judge") == tmp_path / "logs" / "03_judge.log"
        assert sum(getattr(h, "_workbench", False) for h in logging.getLogger().handlers) == 2  # replaced, not added
    finally:
        for h in list(logging.getLogger().handlers):
            if h not in root_handlers:
                logging.getLogger().removeHandler(h)
        warnings.showwarning = show
