"""What the stage pages of classification and of the structured tasks (tool calls, extraction) say
about each stage, in each type's own words (`pages.text`'s first part; replies' and summaries' are in
`pages`)."""

TEXT: dict[str, dict[str, str]] = {
    "classification": {
        "00_task": (
            "What a row is, the labels and the real seed examples, what the run will cost, three sample rows"
            " per label from the current config (before anything large runs), the diff against the parent "
            "run's config, and which stage enforces each field. Opened in JupyterLab without a `run_dir`, it"
            ' also shows the config as an editable form.\n\nA new config starts with `workbench init "TASK '
            'DESCRIPTION" --labels a,b,c` (see the README).'
        ),
        "01_prompts": (
            "Inputs are generated over the coverage grid (label × persona × tone × difficulty × edge case, "
            "in the config's proportions), each call seeing a fresh sample of real seed examples. An LLM "
            "critic labels each prompt *vague*, *redundant*, *mis-scoped* or *unrealistic* and keeps, "
            "rewrites or drops it; then the gates: constraints, duplicates (within the stage, the seeds and "
            "earlier iterations), contamination (near-copies of real dev rows, matched against a hash index;"
            " the test split is not read before 06), domain validity and complexity balance. Cells that fell"
            " short are topped up in further rounds whose instructions carry the previous round's defects. "
            "Nothing is dropped: every reject stays in the table with its gate and reason."
        ),
        "02_responses": (
            "For classification the response is a label. Candidate 0 is the intended label; candidates 1…N "
            "are the model's **blind** answers: it sees the message and a shuffled list of the intended "
            "label and its nearest labels, and names one. Those answers vote in the jury (03), and a wrong "
            "one is the rejected side of a DPO pair. Every candidate row carries model, seed, tokens, "
            "latency and time to first token, and is streamed to `candidates.jsonl` as it arrives."
        ),
        "03_judge": (
            "**Rubric judge**: each row is scored 1–5 (shown as 0–1) on the dimensions of `judge.rubric`, "
            "with a one-line rationale, by the jurors: each model `roles.judge` names (a jury of different "
            "models, or the generator's model by default), `judge.jurors` times with its own seed and "
            "wording each. A reply with no score is kept raw and the row is rejected as "
            "`unparseable`.\n\n**Label jury** (classification): the probe, the nearest seed and the LLM's "
            "blind candidates each name a label without being told the intended one; the verdict is "
            "`judge.aggregate`. A row whose jury names another label is rejected as `label_mismatch`; a row "
            "the jury cannot decide is excluded as `uncertain`.\n\n**Best-of-N**: the best candidate per "
            "prompt is the SFT row; best vs worst, when the margin is at least `judge.pair_margin`, is a DPO"
            " pair."
        ),
        "04_filter": (
            "One chain, each gate marking rows: optional rewrite (`filter.rewrite`, then every check again),"
            " the quality constraints (length, language, profanity, PII redaction — redacted text is what "
            "trains), toxicity, domain (against the task description, labels and seeds), then exact and "
            "near-duplicates across the whole dataset (one row kept per group, the rest record `dup_of`). A "
            "gate that cannot decide excludes the row as `uncertain`. Rejected rows stay, with their reason "
            "and the config field that set it.\n\nExports: `export/sft.jsonl` (chat messages), "
            "`export/dpo.jsonl` (trl preference pairs), `export/hf/` (a `datasets` folder) and "
            "`export/README.md` (the dataset card)."
        ),
        "05_train": (
            "- **probe**: a frozen all-MiniLM-L6-v2 encoder with a logistic-regression head, trained on the "
            "seeds alone, on seeds + every generated row (unfiltered) and on seeds + the kept rows.\n- "
            "**causal**: a chat LM fine-tuned with trl — SFT (LoRA by default) on seeds + the kept rows, "
            "then DPO on 03's best-vs-worst pairs and GRPO with a verifiable reward (the generated label is "
            "the intended one), both from the SFT model.\n- **reference**: each student trained on real train"
            " rows (curated data), kept apart from the synthetic rows: the ceiling the synthetic data is "
            "measured against."
        ),
        "06_evaluate": (
            "Every model is scored on the same real test rows, never seen by generation or training. "
            "Intervals are 95% bootstrap. `group` says what a row is: **baseline** (no training), "
            "**synthetic** (trained on seeds and generated rows) or **reference** (trained on real train "
            "rows: the ceiling, never part of the synthetic numbers)."
        ),
        "07_gaps": (
            "What the student gets wrong, from three sources (`gaps.sources`): real **dev** rows it "
            "misclassifies (train rows disjoint from the seeds; the test split is never read before 06 and "
            "never steers generation), synthetic rows the judge scored low, and synthetic rows the blind "
            "label jury gave another label (kept or rejected: what the generator got wrong). They are "
            "embedded (MiniLM, cached), mapped with UMAP (fixed `random_state`, exact nearest neighbours "
            "precomputed) and clustered with HDBSCAN; **noise points are shown in grey, not hidden**. The "
            "LLM names each cluster from its exemplars."
        ),
        "99_report": (
            "One page: the before/after table with safety and contamination, the funnel, the reject pile and"
            " the failure clusters. Each stage's own page is linked above."
        ),
    },
    "tools": {
        "00_task": (
            "The structured task's tools (or, for extraction, its one schema of fields) with their "
            "arguments, the real seed rows the generator sees and the real dev rows 07 analyses, drawn from "
            "the dataset's train split. The test split is not read before 06. Open this notebook in "
            "JupyterLab to see the task before a run; `workbench check` explains every config field."
        ),
        "01_prompts": (
            "For each cell of the coverage grid (tool × the arguments a real seed carries × difficulty, in "
            "the sampling plan's numbers; plus `diversity.no_tool_share` requests no tool serves) the "
            "argument values are drawn first, from the seeds' values and the generator's own suggestions. "
            "The generator then rewrites the seed with those values in other words. The gate is verifiable: "
            "every intended value must be in the message (`value_missing`), no value of the example it saw "
            "that was not intended (`value_unintended`), no echo of the instructions "
            "(`echoes_instructions`). A cell whose message fails is tried again with a fresh draw, up to "
            "`prompts.rounds` rounds. Every attempt stays, with its reason."
        ),
        "02_responses": (
            "`responses.candidates` answers per kept request, as JSON that must validate against the tools' "
            "schema: the embedded model decodes under the schema's grammar, an endpoint gets the schema as "
            "`response_format`. Each candidate answers blind and is checked against the request's intended "
            "answer, field by field: its agreement is the jury's vote in 03, and the worst candidate is the "
            "rejected side of a DPO pair. Every candidate keeps its seed, tokens, latency and whether the "
            "cache answered it."
        ),
        "03_judge": (
            "Each row's answer was drawn before its message was written. It is kept only if it validates "
            "under the schema (`answer_invalid`) and each of its values is in the message (`value_missing`)."
            " 02's candidates answered blind: their agreement with it, field by field, is the jury's "
            "agreement below. The judge (`judge.rubric`; the models of `roles.judge`, `judge.jurors` each) "
            "then scores each candidate answer of a kept row, 1-5 per dimension with a rationale, shown the "
            "request (and with `judge.anchor` a real request of the same tool with its answer). Best-of-N "
            "ranks the candidates by agreement, then by the judge's score; the row's training answer stays "
            "the checked one. The worst candidate, when the checked answer beats it by `judge.pair_margin` "
            "in field agreement, is the rejected side of a DPO pair. With the embedded 135M model as judge, "
            "read the rank correlation of its score with the checked agreement before trusting it."
        ),
        "04_filter": (
            "The requests that passed 01 and 03 go through the final filter: the optional rewrite "
            "(`filter.rewrite`; a rewrite that loses a value is rejected as `value_missing`), constraints "
            "(length, language, profanity, PII, forbidden content), toxicity, domain, and near-duplicates "
            "across the dataset and against the seeds. The answer's values are spans of the message, so the "
            "message's verdict is the row's. Nothing is dropped: each reject keeps its stage and "
            "reason.\n\nExports, in `artifacts/export/`: `sft.jsonl` (chat records whose system message lists "
            "the tools or fields and whose assistant turn is the answer as JSON, as 05's student learns it),"
            " `dpo.jsonl` (03's pairs of kept rows, in trl's preference form), `hf/` (a `datasets` folder; "
            "`arguments` as JSON text there) and `README.md` (the dataset card)."
        ),
        "05_train": (
            "- **tagger** (`train.students: probe`, the structured tasks' probe): frozen all-MiniLM-L6-v2 "
            "token vectors with a BIO head for the argument spans and a tool head, fitted on seeds only, on "
            "seeds + every generated message (unfiltered) and on seeds + the kept rows; and, with "
            "`train.reference`, on real train rows: as many as the kept set (per tool) and all of them (or "
            "`train.reference_rows`), the ceilings.\n- **causal** (`train.students: causal`): LoRA SFT of "
            "`train.model` writing the answer JSON on seeds + the kept rows; DPO on 03's pairs and GRPO with"
            " the verifiable rewards (field F1 and schema validity), both from the SFT model, as "
            "`train.methods` asks. The references are taggers only: a causal SFT on real rows would double "
            "the demo's training time on a CPU."
        ),
        "06_evaluate": (
            "Every model answers real held-out requests nobody here generated (for SNIPS, the benchmark's "
            "own test set). Scores: tool accuracy; slot precision, recall and F1 over (argument, value) "
            "pairs, micro-averaged; exact match of the whole answer; the share of answers that parse. "
            "Intervals are 95% bootstrap over rows. `group`: **baseline** (untuned, answering under the "
            "schema), **synthetic** (trained on seeds and generated rows), **reference** (trained on real "
            "train rows: the ceiling, never part of the synthetic numbers)."
        ),
        "07_gaps": (
            "The tagger on seeds + kept rows answers the real dev rows; a row with the wrong tool, or a "
            "wrong, missing or extra argument, is a failure with its error signature (`wrong_tool`, "
            "`missing:<argument>`, `extra:…`, `wrong:…`, `unparsed`). Failures are embedded as signature and"
            " text, mapped with UMAP and clustered with HDBSCAN; each cluster is named by its most common "
            "tool → signature. The patch asks for more generated requests for the tools the largest clusters"
            " are about (`sampling.extra_rows`); `workbench iterate` applies the edits a person accepts."
        ),
        "99_report": (
            "The run's results on one page: the before/after table on the real test rows with the published "
            "results beside it, the reject pile, the students and the failure clusters. Every stage's own "
            "page is linked from this report's index."
        ),
    },
}
