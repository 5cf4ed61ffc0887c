"""The package reads bottom-up: no import cycle among its modules, counting imports inside
functions too, and a function-local import only for a heavy optional library, with a comment."""

import ast
from pathlib import Path

import pytest
from support import cycle, graph_of, modules

ROOT = Path(__file__).resolve().parent.parent
# libraries a function may import late, each slow to import or needed by one path only
HEAVY = {"presidio_analyzer", "profanity_check", "torch", "transformers", "trl", "peft", "datasets", "umap", "hdbscan", "sentence_transformers", "openai",
         "uvloop", "langdetect", "llguidance", "rouge_score", "sklearn"}  # fmt: skip


def test_the_package_has_no_import_cycle():
    found = cycle(graph_of(ROOT / "workbench"))
    assert found is None, "import cycle: " + " → ".join(found)


def test_function_local_imports_are_heavy_optional_libraries_with_a_comment():
    bad = []
    for path in modules(ROOT / "workbench").values():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Import | ast.ImportFrom) or node.col_offset == 0:
                continue
            top = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name) or ""
            commented = "#" in lines[node.lineno - 1] or any(
                ln.strip().startswith("#") for ln in lines[node.lineno - 3 : node.lineno - 1]
            )
            if getattr(node, "level", 0) or top.split(".")[0] not in HEAVY or not commented:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "function-local imports that are not a commented heavy optional library:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"a.py": "from pkg import b\n", "b.py": "def f():\n    from pkg.c import x\n", "c.py": "import pkg.a\n"},
         ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]),
        ({"a.py": "from pkg import b\n", "b.py": "import json\n"}, None),
        ({"__init__.py": "from pkg.a import f\n", "a.py": "from pkg import helpers\n",
          "helpers.py": "X = 1\n"}, None),
    ],
    ids=["planted cycle through a function-level import", "no cycle", "package init re-exporting"],
)  # fmt: skip
def test_the_cycle_check_finds_a_planted_cycle(tmp_path, files, expected):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in files.items():
        (pkg / name).write_text(text)
    assert cycle(graph_of(pkg)) == expected
