"""The 00_task form: edits keep comments and order, bad values are refused, the diff shows values."""

import pytest

from workbench import form
from workbench.config import ConfigError, load_config

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
    with pytest.raises(ConfigError, match=rf"{p}:\d+: field 'task.labels': .*duplicate labels"):
        form.save(p, values)
    assert p.read_text() == CONFIG


def test_widgets_save_through_the_same_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(CONFIG)
    box = form.config_form(p, parent_text=CONFIG)
    fields = {w.description: w for w in box.children if hasattr(w, "description")}
    fields["rows per label"].value = 12
    save_button = box.children[-2].children[1]
    save_button.click()
    assert load_config(p)[0].sampling.rows_per_label == 12


def test_diff_shows_value_changes_not_comments():
    d = form.diff("a: 1  # x\nb: 2\n", "a: 1  # y\nb: 3\n")
    assert "-b: 2" in d and "+b: 3" in d
