"""The README's layout block lists every file of the package, configs and tests, in an order that
shows the layers: each package module imports only modules listed before it."""

import re

from support import graph_of

LISTED_DIRS = ["workbench", "configs", "tests"]  # every file under these is listed (package: recursively)


def readme_tree(root) -> list[str]:
    """The paths of the README's layout block, in order; a folder line ends with '/' and the
    lines indented under it (two spaces a level) are inside it."""
    text = (root / "README.md").read_text()
    block = re.search(r"## Layout\n.*?```\n(.*?)```", text, re.S).group(1)
    paths, parents = [], []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        parents = parents[:depth]
        paths.append("".join(parents) + name.rstrip("/"))
        if name.endswith("/"):
            parents.append(name)
    return paths


def test_readme_tree_matches_files(root):
    listed = set(readme_tree(root))
    missing = sorted(p for p in listed if not (root / p).exists())
    assert not missing, f"README lists paths that do not exist: {missing}"
    on_disk = {
        str(p.relative_to(root))
        for d in LISTED_DIRS
        for p in ((root / d).rglob("*") if d == "workbench" else (root / d).iterdir())
        if p.is_file() and not p.name.startswith(".") and "__pycache__" not in p.parts
    }
    unlisted = sorted(on_disk - listed)
    assert not unlisted, f"files missing from the README's layout: {unlisted}"


def test_readme_lists_each_module_after_the_modules_it_imports(root):
    order = {}
    for path in readme_tree(root):
        if path.startswith("workbench/") and path.endswith(".py"):
            name = path[: -len(".py")].replace("/", ".").removesuffix(".__init__")
            order[name] = len(order)
    graph = graph_of(root / "workbench")
    late = sorted(
        f"{m} imports {d}, listed after it" for m, deps in graph.items() for d in deps if order.get(d, -1) > order[m]
    )
    assert set(graph) - {"workbench"} <= set(order)
    assert not late, "the README's layout is not in layer order:\n" + "\n".join(late)


def test_the_estimate_has_a_row_for_each_stage_the_driver_runs(root):
    """The rows the estimate computes are the stages the driver executes, which are the stage
    notebooks on disk, in order: a notebook added without its estimate row fails here, and so does
    a row, or a stage of the driver, with no notebook."""
    from workbench import plan, runs
    from workbench.config import RunConfig

    notebooks = sorted(p.stem for p in (root / "notebooks").glob("*.ipynb"))
    cfg = RunConfig.model_validate({"task": {"name": "t", "labels": ["a", "b"]}, "data": {"dataset": None}})
    est = plan.estimate(cfg, ["a", "b"])
    assert list(est["stage"]) == [*notebooks, "total"]
    assert runs.STAGES == notebooks
