"""The 00_task form: edits keep comments and order, bad values are refused, the diff shows values."""

import difflib

import pytest

from workbench import form
from workbench.config import ConfigError, load_config
from workbench.files import ROOT

CONFIG = """# my banking experiment
task:
  name: demo   # keep this name
  labels: [card_arrival, exchange_rate]
sampling:
  rows_per_label: 6   # small on purpose
"""


def test_save_changes_values_and_keeps_comments(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(CONFIG)
    cfg, _ = load_config(p)
    values = form.form_values(cfg)
    values.update({"sampling.rows_per_label": 9, "diversity.tones": "calm\nangry: 0.25", "task.edge_cases": "two asks"})
    values["diversity.edge_case_share"] = 0.2
    new = form.save(p, values)
    text = p.read_text()
    assert "# my banking experiment" in text and "# keep this name" in text and "# small on purpose" in text
    assert text.index("task:") < text.index("sampling:")  # order kept
    assert new.sampling.rows_per_label == 9 and [t.name for t in new.diversity.tones] == ["calm", "angry"]
    assert new.diversity.tones[1].share == 0.25 and new.task.edge_cases == ["two asks"]
    assert load_config(p)[0] == new


def test_a_bad_value_is_refused_and_the_file_is_unchanged(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(CONFIG)
    values = form.form_values(load_config(p)[0])
    values["task.labels"] = "card_arrival\ncard_arrival"
    with pytest.raises(ConfigError, match=r"field 'task.labels': .*duplicate labels") as e:
        form.save(p, values)
    assert p.read_text() == CONFIG
    # the values are the form's, not the file's: no line of the (valid) file is blamed
    assert f"{p}:" not in str(e.value) and f"not saved; {p} is unchanged" in str(e.value)


def shown(box) -> str:
    return "".join(o.get("text", "") for o in box.out.outputs)


def test_widgets_show_the_diff_then_save_through_the_same_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(CONFIG)
    box = form.config_form(p, parent_text=CONFIG)
    box.fields["sampling.rows_per_label"].value = 12
    box.buttons["review"].click()
    text = shown(box)
    assert "-  rows_per_label: 6   # small on purpose" in text and "+  rows_per_label: 12  # small on purpose" in text
    assert p.read_text() == CONFIG  # nothing written before the user confirms
    box.buttons["confirm"].children[0].click()
    assert load_config(p)[0].sampling.rows_per_label == 12
    assert p.read_text() == CONFIG.replace("rows_per_label: 6   #", "rows_per_label: 12  #")  # one line changed


@pytest.mark.parametrize("name", ["smoke.yaml", "banking77.yaml"])
def test_an_untouched_form_saves_nothing_and_changes_no_byte(tmp_path, name):
    p = tmp_path / name
    p.write_bytes((ROOT / "configs" / name).read_bytes())
    before = p.stat().st_mtime_ns
    box = form.config_form(p)
    box.buttons["review"].click()
    assert "no change" in shown(box) and not box.buttons["confirm"].children
    assert p.read_bytes() == (ROOT / "configs" / name).read_bytes() and p.stat().st_mtime_ns == before
    # what apply_values returns for untouched values is the file itself
    assert form.apply_values(p, form.form_values(load_config(p)[0]))[1] == p.read_text()


def test_one_edit_changes_only_its_line_and_keeps_styles(tmp_path):
    p = tmp_path / "banking77.yaml"
    text = (ROOT / "configs" / "banking77.yaml").read_text()
    p.write_text(text)
    values = form.form_values(load_config(p)[0])
    values["diversity.difficulty"] = {"easy": 0.5, "medium": 0.25, "hard": 0.25}
    values["prompts.top_p"] = 0.9  # not in the file: added at the end of its section, before the blank line
    values["task.edge_cases"] = "two asks\nsarcasm"
    _, new = form.apply_values(p, values)
    removed = [x for x in difflib.ndiff(text.splitlines(), new.splitlines()) if x.startswith("- ")]
    assert removed == ["-   difficulty: {easy: 0.34, medium: 0.33, hard: 0.33}"]  # flow style kept
    assert "  difficulty: {easy: 0.5, medium: 0.25, hard: 0.25}\n" in new
    assert "  labels: null             # all 77 intents of data.dataset\n" in new  # null stays null
    assert (
        "the schema (2.6 min a round):\n                           # point llm at an endpoint and set true\n  top_p: 0.9\n\njudge:"
        in new
    )
    assert "  edge_cases:\n    - two asks\n    - sarcasm\n\ndata:" in new


def test_save_to_another_file_leaves_the_config_and_a_shipped_config_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(CONFIG)
    box = form.config_form(p)
    box.fields["sampling.rows_per_label"].value = 7
    box.save_to.value = str(tmp_path / "mine.yaml")
    box.buttons["review"].click()
    assert "new file" in shown(box)
    box.buttons["confirm"].children[0].click()
    assert p.read_text() == CONFIG and load_config(tmp_path / "mine.yaml")[0].sampling.rows_per_label == 7
    assert "set config = " in shown(box)
    assert form.shipped(ROOT / "configs" / "smoke.yaml") and not form.shipped(p)
    box.save_to.value = str(ROOT / "configs" / "smoke.yaml")  # reviewed only: never confirmed here
    box.buttons["review"].click()
    assert "ships with the workbench" in shown(box)
    assert box.buttons["confirm"].children[0].button_style == "warning"


def test_a_file_changed_after_the_review_is_not_overwritten(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(CONFIG)
    box = form.config_form(p)
    box.fields["sampling.rows_per_label"].value = 8
    box.buttons["review"].click()
    p.write_text(CONFIG + "# edited elsewhere\n")
    box.buttons["confirm"].children[0].click()
    assert "changed on disk" in shown(box) and p.read_text().endswith("# edited elsewhere\n")


def test_diff_shows_value_changes_not_comments():
    d = form.diff("a: 1  # x\nb: 2\n", "a: 1  # y\nb: 3\n")
    assert "-b: 2" in d and "+b: 3" in d
