"""Real labelled data: seeds and dev samples from the train split, and the test split.

Columns of every table returned here: `id` (str), `text` (str), `label` (str).
The test split is read by `test_split()` only, and only `06_evaluate` calls it: it never steers
generation or failure analysis (tests/test_smoke.py runs 00-05 and 07 with the file absent).

Seeds come from `data.seeds_file` when the config names one (CSV with text,label columns, or JSONL
with text and label keys), else from the dataset's train split.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pandas as pd

from workbench.config import ConfigError, RunConfig, check_plan

log = logging.getLogger(__name__)
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def dataset_dir(cfg: RunConfig) -> Path:
    """The dataset folder: an absolute path (config files resolve relative ones on loading), else
    a name under data/."""
    if cfg.data.dataset is None:
        raise ConfigError("data.dataset is null: this step needs real labelled data (train.csv and test.csv)")
    p = Path(cfg.data.dataset)
    d = p if p.is_absolute() or p.parts[0] in (".", "..") else DATA_DIR / p
    if not d.is_dir():
        raise ConfigError(f"data.dataset: folder {d} not found; expected a folder with train.csv and test.csv")
    return d


def dataset_labels(dataset: str) -> list[str]:
    """The labels of a dataset's train split (a folder under data/, or a path), sorted: `init`'s
    label set when it is given a dataset without labels."""
    p = Path(dataset)
    folder = p if p.is_absolute() or p.parts[0] in (".", "..") or p.is_dir() else DATA_DIR / p
    train = folder / "train.csv"
    if not train.is_file():
        raise ConfigError(f"{train} not found; expected a folder with train.csv and test.csv (text and a label column)")
    return sorted(read_rows(train)["label"].unique())


ONE_KIND = "document"  # the label of every row of a file with text and reference columns only


def _label_key(path: Path, columns: list[str], label_key: str | None, where: str) -> str:
    """The label column: `label_key` when the config names one, else label, category, or the one
    column besides text (and id, and a summary's `reference`); `ONE_KIND` when the only other
    column is `reference` (a summarization dataset without kinds: every row is a `document`)."""
    if label_key is not None:
        if label_key not in columns:
            raise ConfigError(f"{where}: no column {label_key!r} (data.label_column); found {columns}")
        return label_key
    for name in ("label", "category"):
        if name in columns:
            return name
    others = [c for c in columns if c not in ("text", "id", "reference")]
    if len(others) == 1:
        return others[0]
    if not others and "reference" in columns:
        return ONE_KIND
    raise ConfigError(
        f"{where}: cannot tell the label column among {columns}; expected text and label (or category), or set "
        "data.label_column"
    )


CSV_SUFFIXES = (".csv", ".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")  # a .json file of rows is one object per line


def _csv_rows(path: Path, f, label_key: str | None) -> tuple[list[tuple[int, int, str, str]], str]:
    """(line, number, text, label) of each record of a CSV file (tab-separated for .tsv): the line it
    starts on (a quoted text may run over several), for messages; its number (the header is 1, the
    first record 2), for its id, which stays what it always was. Refuses, at the right line: a quote not
    closed where it should be (a record running over what reads as further rows, or to the end of
    the file), and a record with more or fewer fields than the header (an unquoted comma in the text)."""
    reader = csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",", strict=True)
    start, records = 1, []
    try:
        header = next(reader, None)
        while True:
            start = reader.line_num + 1
            rec = next(reader, None)
            if rec is None:
                break
            records.append((start, reader.line_num, rec))
    except csv.Error as e:
        raise ConfigError(
            f"{path}:{start}: the CSV cannot be read from this line on ({e}): a quote opened here is not closed where "
            'the text ends; close it (a quote inside a text is written twice: "")'
        ) from None
    if header is None or "text" not in header:
        raise ConfigError(f"{path}:1: expected a header with a text column and a label column; found {header}")
    label_key = _label_key(path, list(header), label_key, f"{path}:1")
    one = label_key == ONE_KIND and ONE_KIND not in header
    at = {name: i for i, name in enumerate(header)}
    rows = []
    for first, last, rec in records:
        if rec == []:
            continue  # a blank line
        if len(rec) != len(header):
            raise ConfigError(
                f"{path}:{first}: {len(rec)} fields where the header {header} has {len(header)}"
                + (': a comma in the text? quote the text ("Hi, where is my card?")' if len(rec) > len(header) else "")
            )
        text, label = rec[at["text"]], ONE_KIND if one else rec[at[label_key]]
        rows.append((first, len(rows) + 2, text, label, last))
    labels = {row[3].strip() for row in rows}
    for first, _, text, _, last in rows:
        inner = [ln for ln in text.splitlines()[:-1] if ln.rsplit(",", 1)[-1].strip().strip('"') in labels]
        if last > first and inner:
            raise ConfigError(
                f"{path}:{first}: this row's quoted text runs to line {last} over what reads as rows ({inner[0]!r}): "
                f"a quote opened on line {first} is closed only on line {last}; close it where the text ends"
            )
    return [row[:4] for row in rows], label_key


def read_rows(path: Path, label_key: str | None = None) -> pd.DataFrame:
    """Rows of a CSV or JSONL file (a text column and a label column: see _label_key), as id, text,
    label. A UTF-8 BOM (spreadsheets' "CSV UTF-8") is allowed. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    rows = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if path.suffix.lower() in JSONL_SUFFIXES:
                key = label_key
                for line, raw in enumerate(f, start=1):
                    if not raw.strip():
                        continue
                    try:
                        r = json.loads(raw)
                    except json.JSONDecodeError as e:
                        raise ConfigError(f"{path}:{line}: not JSON ({e.msg})") from None
                    if not isinstance(r, dict):
                        raise ConfigError(
                            f"{path}:{line}: expected an object with text and a label; got {type(r).__name__}"
                        )
                    key = key or _label_key(path, sorted(r), None, f"{path}:{line}")
                    if "text" not in r or (key not in r and key != ONE_KIND):
                        raise ConfigError(f"{path}:{line}: expected an object with keys text, {key}; got {sorted(r)}")
                    text, label = r["text"], r.get(key, ONE_KIND)
                    if not isinstance(text, str):
                        raise ConfigError(
                            f"{path}:{line}: text must be a string; got {type(text).__name__} {text!r:.60}"
                        )
                    if not isinstance(label, str | int) or isinstance(label, bool):
                        raise ConfigError(
                            f"{path}:{line}: {key} must be a string; got {type(label).__name__} {label!r:.60}"
                        )
                    rows.append((line, line, text, str(label)))
                label_key = key or "label"
            elif path.suffix.lower() in CSV_SUFFIXES:
                rows, label_key = _csv_rows(path, f, label_key)
            else:
                raise ConfigError(
                    f"{path}: a file named {path.suffix or 'without a suffix'} is neither CSV ({', '.join(CSV_SUFFIXES)}) "
                    f"nor JSON lines ({', '.join(JSONL_SUFFIXES)}): rename it to what it holds"
                )
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from e
    for line, _, text, label in rows:
        if not text.strip() or not label.strip():
            raise ConfigError(f"{path}:{line}: empty text or {label_key}")
    return pd.DataFrame(
        [(f"{path.stem}-{number}", t.strip(), lab.strip(), line) for line, number, t, lab in rows],
        columns=["id", "text", "label", "line"],
    )


def _read(path: Path, label_key: str | None = None) -> pd.DataFrame:
    return read_rows(path, label_key).drop(columns="line")


def _train(cfg: RunConfig) -> pd.DataFrame:
    return _read(dataset_dir(cfg) / "train.csv", cfg.data.label_column)


def labels(cfg: RunConfig) -> list[str]:
    """The run's labels: `task.labels`, checked against the dataset, or all of the train split's."""
    names = cfg.task.label_names()
    if cfg.data.dataset is None:
        if names is None:
            raise ConfigError("task.labels is null and data.dataset is null: list the labels in task.labels")
        return names
    return _labels(cfg, _train(cfg))


def _labels(cfg: RunConfig, train: pd.DataFrame) -> list[str]:
    known = sorted(train["label"].unique())
    names = cfg.task.label_names()
    if names is None:
        names = known
    else:
        unknown = [x for x in names if x not in set(known)]
        if unknown:
            raise ConfigError(
                f"task.labels: unknown labels {unknown}; data.dataset {cfg.data.dataset!r} has "
                f"{len(known)} labels, e.g. {known[:5]}"
            )
    try:
        check_plan(cfg, names)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return list(names)


def label_counts(cfg: RunConfig) -> dict[str, int]:
    """Rows per label in the dataset's train split (for a proportional sampling plan)."""
    return _train(cfg)["label"].value_counts().to_dict() if cfg.data.dataset else {}


def describe_label(label: str) -> str:
    """`card_arrival` → `card arrival`: the label as words for prompts and zero-shot matching."""
    return label.replace("_", " ").replace("-", " ").strip()


def label_topic(cfg: RunConfig, label: str) -> str:
    """What a label means, for prompts: its name as words, with its definition when the config has one."""
    definition = cfg.task.label(label).definition
    return f"{describe_label(label)} ({definition.rstrip('.')})" if definition else describe_label(label)


def _train_samples(cfg: RunConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    d = cfg.data
    train = _train(cfg)
    train = train[train["label"].isin(_labels(cfg, train))]
    shuffled = train.sample(frac=1.0, random_state=d.seed)
    rank = shuffled.groupby("label").cumcount()
    seeds = shuffled[rank < d.seeds_per_label]
    dev = shuffled[(rank >= d.seeds_per_label) & (rank < d.seeds_per_label + d.dev_per_label)]
    short = seeds.groupby("label").size()
    short = short[short < d.seeds_per_label]
    if len(short):
        raise ConfigError(f"data.seeds_per_label={d.seeds_per_label}: too few train rows for {dict(short)}")
    return seeds.sort_values(["label", "id"]).reset_index(drop=True), dev.sort_values(["label", "id"]).reset_index(
        drop=True
    )


def seeds_from_file(path: str | Path, known: list[str] | None, label_key: str | None = None) -> pd.DataFrame:
    """Seed examples from a user's file; every label must be one of `known` (None: any), named by
    line, and every known label must have a row. A row repeated (same text and label) is kept once,
    and the log says which lines."""
    rows = read_rows(Path(path), label_key)
    bad = rows[~rows["label"].isin(known)] if known is not None else rows.iloc[:0]
    if len(bad):
        where = ", ".join(f"line {r.line} ({r.label!r})" for r in bad.head(5).itertuples())
        raise ConfigError(f"{path}: unknown labels at {where}; known labels: {known[:10]}")
    if rows.empty:
        raise ConfigError(f"{path}: no seed rows")
    missing = sorted(set(known or []) - set(rows["label"]))
    if missing:
        raise ConfigError(
            f"{path}: no seed row for the labels {missing[:10]}; the generator needs at least one example of each "
            "(add rows, or remove those labels from task.labels)"
        )
    dup = rows.duplicated(["text", "label"])
    if dup.any():
        log.warning("%s: lines %s repeat earlier rows; each is used once", path, list(rows.loc[dup, "line"])[:20])
        rows = rows[~dup]
    return rows.drop(columns="line").sort_values(["label", "id"]).reset_index(drop=True)


def seeds(cfg: RunConfig) -> pd.DataFrame:
    """The seed examples: from `data.seeds_file` (at most seeds_per_label per label, chosen with
    `data.seed`), else `seeds_per_label` real train rows per label."""
    if cfg.data.seeds_file:
        rows = seeds_from_file(cfg.data.seeds_file, labels(cfg), cfg.data.label_column)
        rows = rows.sample(frac=1.0, random_state=cfg.data.seed).groupby("label").head(cfg.data.seeds_per_label)
        return rows.sort_values(["label", "id"]).reset_index(drop=True)
    return _train_samples(cfg)[0]


def dev_split(cfg: RunConfig) -> pd.DataFrame:
    """`dev_per_label` real train rows per label, disjoint from the seeds: for failure analysis."""
    return _train_samples(cfg)[1]


def test_split(cfg: RunConfig, whole: bool = False) -> pd.DataFrame:
    """The real test split (capped at `test_per_label` rows per label unless `whole`). Only
    06_evaluate reads it (the whole of it for its contamination check)."""
    test = _read(dataset_dir(cfg) / "test.csv", cfg.data.label_column)
    if whole:
        return test.sort_values(["label", "id"]).reset_index(drop=True)
    test = test[test["label"].isin(labels(cfg))]
    if cfg.data.test_per_label is not None:
        test = test.sample(frac=1.0, random_state=cfg.data.seed).groupby("label").head(cfg.data.test_per_label)
    return test.sort_values(["label", "id"]).reset_index(drop=True)


def sample_per_label(rows: pd.DataFrame, per_label: int | None, seed: int) -> pd.DataFrame:
    """At most `per_label` rows of each label (a seeded sample, in label/id order); None keeps all."""
    if per_label is None:
        return rows
    out = rows.sample(frac=1.0, random_state=seed).groupby("label").head(per_label)
    return out.sort_values(["label", "id"]).reset_index(drop=True)


def reference_split(cfg: RunConfig) -> pd.DataFrame:
    """Real train rows for the *reference* students (curated real data, never mixed into the synthetic
    sets): `train.reference_rows` of them (a seeded sample), or all, for the run's labels."""
    train = _train(cfg)
    train = train[train["label"].isin(_labels(cfg, train))]
    n = cfg.train.reference_rows
    if n is not None and n < len(train):
        train = train.sample(n=n, random_state=cfg.data.seed)
    return train.sort_values(["label", "id"]).reset_index(drop=True)


ADVBENCH = DATA_DIR / "advbench" / "harmful_behaviors.csv"


def harmful_instructions(n: int | None, seed: int) -> pd.DataFrame:
    """AdvBench harmful instructions (id, text): a seeded sample of `n`, or all 520 when n is None."""
    path = ADVBENCH
    if not path.is_file():
        raise ConfigError(f"{path}: AdvBench file not found (expected goal,target columns)")
    df = pd.read_csv(path)
    if "goal" not in df.columns:
        raise ConfigError(f"{path}:1: expected a goal column; found {list(df.columns)}")
    df = pd.DataFrame({"id": [f"advbench-{i + 2}" for i in range(len(df))], "text": df["goal"].astype(str)})
    if n is not None and n < len(df):
        df = df.sample(n=n, random_state=seed).sort_index()
    return df.reset_index(drop=True)
