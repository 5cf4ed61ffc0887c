"""Notebooks only call the package and draw: every code cell at most 10 lines, with no `def`,
`class`, `lambda` or loop (a comprehension is a loop too). What a cell would compute belongs in the
package, where it is tested; the notebook records and shows it."""

import ast
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 10
BANNED = {
    ast.FunctionDef: "def",
    ast.AsyncFunctionDef: "def",
    ast.ClassDef: "class",
    ast.Lambda: "lambda",
    ast.For: "for loop",
    ast.AsyncFor: "for loop",
    ast.While: "while loop",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "comprehension",
}


def cell_problems(path: Path) -> list[str]:
    """What breaks the rules in each code cell of the notebook at `path` (cell numbers from 0)."""
    out = []
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        lines = [ln for ln in cell.source.splitlines() if ln.strip()]
        if len(lines) > MAX_LINES:
            out.append(f"{path.name} cell {i}: {len(lines)} lines (at most {MAX_LINES})")
        found = sorted({BANNED[type(n)] for n in ast.walk(ast.parse(cell.source)) if type(n) in BANNED})
        if found:
            out.append(f"{path.name} cell {i}: {', '.join(found)} (belongs in the package)")
    return out


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_nine_stage_notebooks_for_every_task_type():
    """One set: notebooks/ holds the nine stages and nothing else, and no page names a task type's
    own module (a type's differences are its flow's sections, `pipeline.show`)."""
    from workbench.runs import STAGES

    assert [p.stem for p in NOTEBOOKS] == STAGES
    assert [p.name for p in (ROOT / "notebooks").iterdir() if p.is_dir() and not p.name.startswith(".")] == []
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
        for kind in ("tools", "reply", "summarization", "classification_", "structured", "flows"):
            assert f"import {kind}" not in source and f"{kind} as steps" not in source, (path.name, kind)


def test_the_notebooks_take_config_and_run_dir():
    """What `workbench run` checks before it starts (papermill's tagged parameters cell)."""
    from workbench import driver
    from workbench.runs import STAGES

    driver.check_notebooks(STAGES)  # raises RunError naming each notebook that is not runnable


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT / "notebooks")))
def test_cells_only_call_and_draw(path):
    assert cell_problems(path) == []


@pytest.mark.parametrize(
    "source, problem",
    [
        ("\n".join(f"x{i} = {i}" for i in range(11)), "11 lines (at most 10)"),
        ("def f(rows):\n    return rows", "def (belongs in the package)"),
        ("for r in rows:\n    print(r)", "for loop (belongs in the package)"),
        ("labels = [r.label for r in rows.itertuples()]", "comprehension (belongs in the package)"),
        ("rows.apply(lambda r: r.text, axis=1)", "lambda (belongs in the package)"),
    ],
    ids=["11-line cell", "def", "loop", "comprehension", "lambda"],
)
def test_a_planted_cell_is_caught(tmp_path, source, problem):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, tmp_path / "planted.ipynb")
    assert cell_problems(tmp_path / "planted.ipynb") == [f"planted.ipynb cell 1: {problem}"]


def test_ten_lines_of_calls_pass(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("\n".join(f"x{i} = f({i})" for i in range(10)))]
    nbformat.write(nb, tmp_path / "ok.ipynb")
    assert cell_problems(tmp_path / "ok.ipynb") == []


def test_pages_show_whole_tables_with_text_left_aligned(root):
    """The field → gate table (64 rows) is not cut to 10 by pandas' default of 60 rows, and text
    columns are left-aligned (the notebook stylesheet right-aligns every cell)."""
    import pandas as pd

    from workbench import plan, stage, tables
    from workbench.config import load_config

    stage._inert_tables()
    pd.set_option("display.max_rows", 60)  # what open_stage replaces
    import logging

    before = list(logging.getLogger().handlers)
    stage.open_stage(str(root / "configs" / "smoke.yaml"), str(_scratch_run(root)), "00_task")
    for h in [h for h in logging.getLogger().handlers if h not in before]:
        logging.getLogger().removeHandler(h)  # its log routing is tested in test_runs
    table = plan.gate_table(load_config(root / "configs" / "smoke.yaml")[0])
    html = tables.page_html(table)
    assert html.count("<tr") == len(table) + 1 and len(table) > 60
    text_cols = [i + 2 for i, c in enumerate(table.columns) if str(table[c].dtype) in ("object", "str", "string")]
    assert text_cols and all(f"td:nth-child({k})" in html for k in text_cols)
    assert "td:nth-child(7)" not in html  # rows_rejected: a number, right-aligned as numbers are
    big = pd.DataFrame({"id": [f"p{i:05d}" for i in range(2000)]})
    assert "2000 rows × 1 columns" in tables.page_html(big) and tables.page_html(big).count("<tr") == 61 + 1


def _scratch_run(root):
    import tempfile

    run = Path(tempfile.mkdtemp()) / "run"
    (run / "artifacts").mkdir(parents=True)
    return run
