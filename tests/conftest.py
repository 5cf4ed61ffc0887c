import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import (
    audited,
    cache_with_models,
    drop_weights,
    endpoint_env,
    run_config,
    sets,
    shared_simserver,
    tiny_model,
)

ROOT = Path(__file__).resolve().parent.parent

# Offline, and one cache for the session's unit tests. Kernels started by runs inherit this.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")  # a run's kernels are this environment's
os.environ.setdefault("WORKBENCH_CACHE", str(ROOT / ".cache" / "tests"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: one thread each for torch (and the runs'
    # kernels, which inherit it), so two workers do not fight over the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# The modules with slow tests, the longest first (their seconds in `make test`: docs/timings.md).
SLOWEST_FIRST = ["test_resume.py", "test_smoke.py", "test_shared_run.py", "test_init.py", "test_tools_run.py",
                 "test_reply.py", "test_summarization.py", "extract_run", "test_concurrent_runs.py",
                 "test_endpoints.py", "test_jupyterlab.py"]  # fmt: skip


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """The slow tests first, the longest modules' first: under xdist (`make test`) the longest
    work starts first, so the workers finish together."""

    size = Counter(_scope(item.nodeid) for item in items)

    def key(item):
        slow, name = item.get_closest_marker("slow") is not None, Path(_scope(item.nodeid)).name
        name = "test_smoke.py" if name == "smoke_run" else name
        rank = SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)
        # then the other modules, the most tests first, as xdist's own --loadscope-reorder orders
        # them (measured: `make test-fast` 2 min 21 s so, 3 min 13 s in the files' order)
        return (not slow, rank if slow else -size[_scope(item.nodeid)])

    items.sort(key=key)


# Under xdist, a test module is one unit of work (its module-scoped runs are made once), and the
# modules that read the session's smoke run are one unit together, so it is made once. This is
# xdist's own loadscope scheduling, grouped by module here rather than by `--dist loadgroup`'s
# xdist_group marks, which pytest 9.2 drops silently (pytest-dev/pytest-xdist#1386).
SMOKE_RUN_READERS = {"test_smoke.py", "test_shared_run.py", "test_resume.py"}
# test_task_types.py checks every task type's run, test_jupyterlab.py drives 02 and 07 of two: each
# type's test goes with the module that reads the same run (its session fixture is made once, on
# that worker); extraction's run is its own unit
TYPE_RUNS = {"classification": "smoke_run", "tools": "test_tools_run.py", "reply": "test_reply.py",
             "summarization": "test_summarization.py", "extraction": "extract_run"}  # fmt: skip


def _scope(nodeid: str) -> str:
    """The unit of work a test belongs to under xdist: its module, the smoke run's readers, or (for
    test_task_types.py) the unit that reads the same run."""
    module = nodeid.split("::")[0]
    if Path(module).name in ("test_task_types.py", "test_jupyterlab.py") and nodeid.endswith("]"):
        group = TYPE_RUNS[nodeid.rsplit("[", 1)[-1][:-1]]
        return str(Path(module).with_name(group)) if group.endswith(".py") else group
    return "smoke_run" if Path(module).name in SMOKE_RUN_READERS else module


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pytest-xdist is a dev dependency: without it the suite runs in one process
    LoadScopeScheduling = None

if LoadScopeScheduling is not None:

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        # in the order above: xdist would otherwise hand out the modules with the most tests first
        # (`--loadscope-reorder`, its default), slow or not, and could start the longest last
        config.option.loadscopereorder = False
        return ModuleScheduling(config, log)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The tiny random-weight Llama (support.tiny_model), built once per session."""
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def sim():
    """The one simulated endpoint of the session's endpoint runs (support.shared_simserver)."""
    with shared_simserver() as url:
        yield url


@dataclass
class Run:
    """A finished run of the `workbench` command: its runs folder, its run, what it printed, its
    call cache and the log of which stage opened the test split."""

    runs_dir: Path
    run: Path
    output: str
    cache: Path
    audit: Path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, sim, tiny):
    """The whole chain once per session, 00 to 99, of the smoke config against the simulated
    endpoint (the generator) with the tiny model as every other model (support.endpoint_run), on an
    empty call cache (the converted models and embeddings shared), the API key planted in the
    environment and hostile text in a third of the generated messages: every classification stage
    notebook is executed here, and test_smoke, test_shared_run and test_resume (its uninterrupted
    reference) read what it left."""
    tmp = tmp_path_factory.mktemp("smoke")
    cache = cache_with_models(tmp / "cache")
    env, audit = audited(endpoint_env(cache), tmp / "audit")
    run, output = run_config(tmp, ROOT / "configs" / "smoke.yaml", sim, tiny, env=env)
    yield Run(tmp / "runs", run, output, cache, audit)
    drop_weights(tmp / "runs")


@pytest.fixture(scope="session")
def tools_run(tmp_path_factory, sim, tiny):
    """`workbench run configs/snips-smoke.yaml` (two SNIPS tools, a few rows) against the simulated
    endpoint with the tiny model as judge and student; the run folder and its test-split audit log."""
    tmp = tmp_path_factory.mktemp("tools")
    env, audit = audited(endpoint_env(cache_with_models(tmp / "cache")), tmp / "audit")
    run, _ = run_config(tmp, ROOT / "configs" / "snips-smoke.yaml", sim, tiny, "tools", env=env)
    yield run, audit
    drop_weights(tmp / "runs")


@pytest.fixture(scope="session")
def extract_run(tmp_path_factory, sim, tiny):
    """`workbench run configs/snips-extract.yaml` at test size (BookRestaurant's slots as fields,
    a few rows, the all-rows reference tagger on 60 real rows as the SNIPS smoke config has it)
    against the simulated endpoint. Its students are the taggers: the structured flow's causal
    student, safety before/after included, is the tools run's (the same code, other wording)."""
    tmp = tmp_path_factory.mktemp("extract")
    small = sets("data.dev_per_label=4", "data.test_per_label=8", "sampling.rows_per_label=4",
                 "evaluate.causal_test_per_label=2", "evaluate.safety_rows=4", "judge.calibration_rows=4",
                 "train.students=[probe]", "evaluate.safety_rows=0", "llm.dtype=float32",
                 "train.reference_rows=60")  # fmt: skip
    run, _ = run_config(tmp, ROOT / "configs" / "snips-extract.yaml", sim, tiny, "extraction", small)
    yield run
    drop_weights(tmp / "runs")


# the replies config, smaller: 2 messages per topic, 2 dev and 1 test message per topic, 4 AdvBench instructions,
# SFT and DPO (GRPO on the judge's reward is test_causal's reply students' test)
REPLY_SMALL = sets("sampling.rows_per_label=2", "data.dev_per_label=2", "evaluate.causal_test_per_label=1",
                   "evaluate.safety_rows=4", "judge.calibration_rows=4", "train.methods=[sft, dpo]")  # fmt: skip


def text_run(factory, sim, tiny, name: str, kind: str, small: list[str]):
    """`workbench run configs/<name>.yaml`, smaller (`small`), against the session's simulated
    endpoint with the tiny model as judge, refusal judge, namer and student (support.endpoint_run)."""
    tmp = factory.mktemp(kind)
    run, _ = run_config(tmp, ROOT / "configs" / f"{name}.yaml", sim, tiny, kind, small)
    return tmp, run


@pytest.fixture(scope="session")
def reply_run(tmp_path_factory, sim, tiny):
    tmp, run = text_run(tmp_path_factory, sim, tiny, "banking77-replies", "reply", REPLY_SMALL)
    yield run
    drop_weights(tmp / "runs")


# the summaries config, smaller: 4 generated abstracts, 4 dev and 2 test abstracts
SUMMARIES_SMALL = sets("sampling.rows_per_label=4", "data.dev_per_label=4", "evaluate.causal_test_per_label=2",
                       "judge.calibration_rows=4")  # fmt: skip


@pytest.fixture(scope="session")
def summaries_run(tmp_path_factory, sim, tiny):
    tmp, run = text_run(tmp_path_factory, sim, tiny, "aclsum-summaries", "summarization", SUMMARIES_SMALL)
    yield run
    drop_weights(tmp / "runs")
