"""The stages, one type-blind module each: every stage asks the task type's flow
(`workbench.flows`) to do its job and returns a result (`results`), and adds what every type's
page shows alike (the reject pile, throughput, calibration, training curves, the review, the
report's header). The notebooks call these and draw."""

from workbench.flows.common import metrics_markdown  # noqa: F401
from workbench.flows.results import Section, show  # noqa: F401
from workbench.pipeline.candidates_stage import candidates, throughput  # noqa: F401
from workbench.pipeline.evaluate_stage import evaluate  # noqa: F401
from workbench.pipeline.filter_stage import final_filter, rejects_shown  # noqa: F401
from workbench.pipeline.gaps_stage import gaps, review  # noqa: F401
from workbench.pipeline.judge_stage import calibration, judge  # noqa: F401
from workbench.pipeline.prompts_stage import prompts  # noqa: F401
from workbench.pipeline.report_stage import dataset_rejects, gaps_line, header, lineage, report, training_table  # noqa: F401
from workbench.pipeline.task_stage import about, parent_diff, task  # noqa: F401
from workbench.pipeline.train_stage import curves, train  # noqa: F401
