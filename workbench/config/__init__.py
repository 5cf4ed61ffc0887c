"""The run configuration, in four layers: the task section (`task`), every other section and the
run (`schema`), the sampling arithmetic (`sampling`), the field → gate table (`enforce`) and the
YAML file round trip with its file:line errors (`files`). Import from here."""

from workbench.config.enforce import (  # noqa: F401
    _RULE_REASONS,
    ALL,
    ENFORCED_BY,
    RUNNABLE,
    STAGE_ORDER,
    TEXT,
    _get,
    check_runnable,
    enforcer,
    leaf_fields,
    reason_fields,
)
from workbench.config.files import (  # noqa: F401
    _describe,
    _line_of,
    _merge,
    _model_at,
    _plain,
    _set_dotted,
    _yaml,
    check_expansion,
    dump_config,
    load_config,
    parse_overrides,
    to_yaml_value,
    unenforced,
)
from workbench.config.sampling import allocate, plan_counts  # noqa: F401
from workbench.config.schema import (  # noqa: F401
    JUDGE_WORDINGS,
    RUBRIC,
    DiversityConfig,
    EvaluateConfig,
    FilterConfig,
    GapsConfig,
    JudgeConfig,
    LLMConfig,
    PromptsConfig,
    QualityConfig,
    ResponsesConfig,
    RolesConfig,
    RunConfig,
    SamplingConfig,
    TrainConfig,
    check_plan,
)
from workbench.config.task import (  # noqa: F401
    _NAME,
    METRICS,
    ROW_SCHEMA,
    SAMPLING,
    TASK_TYPES,
    ConfigError,
    DataConfig,
    FieldSpec,
    LabelSpec,
    Share,
    TaskConfig,
    ToolSpec,
    _Section,
    _unique,
    task_kind,
)
