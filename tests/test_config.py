import pytest

from workbench.config import ConfigError, RunConfig, dump_config, leaf_fields, load_config


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_load(root):
    """Every config in configs/ loads, is named for its file, and `run` implements every stage of it."""
    from workbench.config import check_runnable

    shipped = sorted((root / "configs").glob("*.yaml"))
    assert len(shipped) == 8, shipped
    for path in shipped:
        cfg, _ = load_config(path)
        # banking77-full is the demo's task sized for a GPU: its runs are iterations of banking77
        assert cfg.task.name == {"banking77-full": "banking77"}.get(path.stem, path.stem), path.name
        check_runnable(cfg)


def test_unknown_key_names_file_line_field_and_valid_keys(tmp_path):
    p = write(tmp_path, "task:\n  name: x\nsampling:\n  rows_per_label: 3\n  rows_per_labl: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:5" in msg
    assert "sampling.rows_per_labl" in msg and "unknown key" in msg
    assert "rows_per_label" in msg and "class_balance" in msg  # the valid keys are listed


def test_unknown_section(tmp_path):
    p = write(tmp_path, "task:\n  name: x\nsampling_plan:\n  rows_per_label: 3\n")
    with pytest.raises(ConfigError, match=rf"{p}:3: field 'sampling_plan': unknown key; valid keys here: task, data"):
        load_config(p)


def test_an_unknown_key_inside_a_list_or_dict_of_sections_names_the_valid_ones(tmp_path):
    # an unquoted comma in a flow mapping splits the description: the error says what a parameter takes
    p = write(
        tmp_path,
        "task:\n  type: tools\n  tools:\n    - name: GetWeather\n      description: the weather\n"
        "      parameters:\n        city: {description: e.g. Paris, Oslo}\n",
    )
    with pytest.raises(ConfigError, match=rf"{p}:7: field 'task.tools.0.parameters.city.Oslo': unknown key; valid keys "
                       "here: type, description, values"):  # fmt: skip
        load_config(p)
    p = write(tmp_path, "task:\n  labels:\n    - name: a\n      defintion: x\n    - b\n")
    with pytest.raises(ConfigError, match="'task.labels.0.defintion': unknown key; valid keys here: name, definition"):
        load_config(p)


def test_wrong_type_names_value(tmp_path):
    p = write(tmp_path, "task:\n  name: x\nsampling:\n  rows_per_label: lots\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:4: field 'sampling.rows_per_label'" in str(e.value)
    assert "'lots'" in str(e.value)


def test_out_of_range(tmp_path):
    p = write(tmp_path, "judge:\n  min_score: 1.5\n")
    with pytest.raises(ConfigError, match=rf"{p}:2: field 'judge.min_score': .*less than or equal to 1"):
        load_config(p)


def test_bad_yaml_names_line(tmp_path):
    p = write(tmp_path, "task:\n  name: x\n  description: [unclosed\nsampling:\n  rows_per_label: 3\n")
    with pytest.raises(ConfigError, match=rf"{p}:\d+: YAML syntax error"):
        load_config(p)


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_set_overrides_and_their_errors(tmp_path):
    p = write(tmp_path, "task:\n  name: x\n")
    cfg, _ = load_config(p, ["sampling.rows_per_label=9", "llm.stream=true", "task.labels=[a, b]"])
    assert cfg.sampling.rows_per_label == 9 and cfg.llm.stream is True and cfg.task.label_names() == ["a", "b"]
    with pytest.raises(ConfigError, match=r"--set sampling.rows_per_label: field 'sampling.rows_per_label'"):
        load_config(p, ["sampling.rows_per_label=many"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(p, ["per_label"])


def test_dump_keeps_comments_fills_defaults_and_round_trips(tmp_path):
    p = write(tmp_path, "# my experiment\ntask:\n  name: x  # short name\nsampling:\n  rows_per_label: 7\n")
    cfg, doc = load_config(p)
    text = dump_config(cfg, doc)
    assert "# my experiment" in text and "# short name" in text
    assert "# Inputs to generate per label (balanced plan)." not in text  # the user set it: no help added
    assert "# Seed examples shown in each generation call." in text  # a filled-in default is explained
    again = write(tmp_path, text)
    cfg2, _ = load_config(again)
    assert cfg2 == cfg
    assert cfg2.sampling.rows_per_label == 7


def test_defaults_are_complete(tmp_path):
    """The default config written out names every field under its section, each with its help text
    as the comment above it, and reads back as the same defaults."""
    default = RunConfig()
    text = dump_config(default)
    lines = text.splitlines()
    for dotted in leaf_fields():
        *path, name = dotted.split(".")
        model = RunConfig
        for part in path:
            model = model.model_fields[part].annotation
        help_text = model.model_fields[name].description
        indent = "  " * len(path)
        block = lines[lines.index(f"{path[0]}:") :] if path else lines
        at = next((i for i, ln in enumerate(block) if ln.startswith(f"{indent}{name}:")), None)
        assert at is not None, f"{dotted} is not in the dumped defaults"
        # a field derived by task type has its reason after its help text (RunConfig._derive)
        assert f"{indent}# {help_text}" in block[at - 2 : at], (dotted, block[at - 2 : at])
    p = tmp_path / "defaults.yaml"
    p.write_text(text)
    assert load_config(p)[0] == default
