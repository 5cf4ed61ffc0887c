"""What each stage notebook runs, one function per step: it does the stage's job through the
stage's module, keeps the throughput bookkeeping, saves the artifacts and returns the rows with
the summary the notebook records; and the Markdown line the notebook shows. The notebooks only
call these and draw. `build` serves 00–04, `learn` 05–07, `summary` 99."""

from workbench.pipeline.build import (  # noqa: F401
    build_prompts,
    calibration,
    candidates,
    critic_views,
    filter_markdown,
    filter_stage,
    grid_columns,
    judge_markdown,
    judge_report_markdown,
    judge_stage,
    jury_agreement,
    metrics_markdown,
    model_candidates,
    present,
    prompts_markdown,
    prompts_report_markdown,
    rationales,
    task,
    task_markdown,
)
from workbench.pipeline.learn import (  # noqa: F401
    config_patch,
    contamination,
    error_analysis,
    evaluate_stage,
    evaluation_tables,
    gaps_markdown,
    gaps_stage,
    review_edits,
    safety_stage,
    students,
    train_stage,
    training_curves,
)
from workbench.pipeline.summary import (  # noqa: F401
    ABLATION_STUDENTS,
    ablation_markdown,
    contamination_markdown,
    lineage_views,
    run_header_markdown,
    training_table,
)
