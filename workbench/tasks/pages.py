"""What the stage pages say, in each task type's own words (replies' and summaries' here,
classification's and the structured tasks' in `pages_intro`): `text(cfg, key)` is the Markdown of a page's introduction (key: the stage) or of one of its
sections (key: "<stage>.<section>"). A section a type does not have is shown only where its result
is there, in words common to both."""

from __future__ import annotations

from workbench.config import RunConfig
from workbench.tasks import pages_intro

TEXT: dict[str, dict[str, str]] = {
    "reply": {
        "02_responses": (
            "`responses.candidates` replies per kept message from the generator (`roles.generator`), under "
            "the assistant's instructions: the domain, `task.policies` and what must be refused "
            "(`task.must_refuse`). Each candidate keeps its call's metadata (model, seed, tokens, latency, "
            "time to first token, cache); a reply that refuses, by the refusal phrases of AdvBench's "
            "evaluation, is marked, so refusals where due and over-refusals show before the judge."
        ),
        "03_judge": (
            "Each candidate reply is scored 1-5 (shown as 0-1) on each dimension of `judge.rubric` (by "
            "default helpfulness, policy compliance and refusal quality) with a one-line rationale, by every "
            "juror of `roles.judge`, shown the customer's message and the reply. Refusal quality is judged "
            "both ways: a message that must be refused needs a brief, polite refusal with a safe alternative;"
            " a legitimate one that is refused fails (over-refusal). Best-of-N keeps each message's "
            "best-scored reply; a DPO pair is best over worst when their scores differ by `judge.pair_margin`"
            " or more (ties make no pair). A message whose best reply scores below `judge.min_score` is "
            "rejected as `low_score`."
        ),
        "04_filter": (
            "Each kept message's best reply goes through the final filter's gates on the reply itself: the "
            "optional rewrite in the assistant's voice (`filter.rewrite`), length, language, profanity, "
            "placeholders and meta-talk, PII, toxicity, domain, and near-duplicate replies. Every message 01 "
            "wrote is here, so the reject pile holds every row with the stage and reason that stopped it. The"
            " kept replies are exported as chat records for SFT (the refusal examples among them), and the "
            "confirmed pairs of kept messages for DPO, in `artifacts/export/`: `sft.jsonl`, `dpo.jsonl`, a "
            "`datasets` folder `hf/` and the dataset card `README.md`."
        ),
        "05_train": (
            "`train.model` (or the parent run's student, `train.start_from: parent`) fine-tuned with trl on "
            "04's kept replies, each method as `train.methods` asks: **sft** on every kept reply, the refusal"
            " examples among them; **sft_no_refusals**, the same without the refusal examples (the ablation "
            "06 compares on safety); **dpo** on the confirmed pairs; **grpo** from the SFT model with "
            "`train.grpo_reward`: verifiable terms (the reply refuses exactly where it must; its length) "
            "and/or the judges' score of each reply (`roles.judge`, one cached batch per step)."
        ),
        "06_evaluate": (
            "`evaluate.causal_test_per_label` real Banking77 test messages per topic, answered greedily under"
            " the assistant's instructions by the untuned model and by each of 05's students. **Win-rate**: "
            "each student's reply against the untuned model's, asked of every judge of `roles.judge` in both "
            "orders; a verdict that follows the position is a tie (counted half); 95% bootstrap CIs. "
            "**Over-refusal**: the share of these benign messages a model refuses. **Safety**: the refusal "
            "rate on `evaluate.safety_rows` AdvBench instructions (the refusal judge, `roles.refusal_judge`, "
            "with the refusal phrases as a second opinion); `sft` against `sft_no_refusals` shows what the "
            "refusal examples did."
        ),
        "07_gaps": (
            "Where the tuned assistant fails, on real **dev** messages (Banking77 train messages disjoint "
            "from the seeds; the test split never steers generation): 05's final student (GRPO after DPO "
            "after SFT, never the ablation) and the untuned model answer each message; a message is a failure"
            " where the student's reply **lost** to the untuned one's (every judge of `roles.judge`, both "
            "orders), **refused** a legitimate request, or scored below `gaps.low_score` on a rubric "
            "dimension (`low:<dimension>`). With `gaps.sources` holding `low_judge`, 03's best replies that "
            'scored low or refused wrongly join them. Failures are embedded as "signature: message", mapped '
            "with UMAP and clustered with HDBSCAN (noise in grey); the namer (`roles.namer`) names each "
            "cluster and suggests a policy and a persona for it."
        ),
        "99_report": (
            "The replies run on one page: each student's win-rate against the untuned model on real messages "
            "with over-refusal, safety before and after with and without the refusal examples, the judge with"
            " its calibration and its judged candidates, the funnel and reject pile, the students, and the "
            "failure clusters. Each stage's own page is linked above."
        ),
        "02_responses.candidates": (
            "## Candidates\n"
            "\n"
            "The first replies, with whether the message must be refused and whether the reply refuses."
        ),
        "03_judge.judged": ("## Judged candidates with rationales\n\nBest first per message."),
        "03_judge.jury": (
            "## The jury: agreement and the disagreement queue\n"
            "\n"
            "With more than one juror (`roles.judge` models × `judge.jurors`), Krippendorff's alpha per "
            "dimension is in the line above, and each candidate reply whose jurors' scores spread more than "
            "`judge.max_spread` is here, widest spread first, for a person to look at."
        ),
        "03_judge.refusals": (
            "## Refusals: where due, and over-refusal\n"
            "\n"
            "The judge's refusal-quality score of each candidate, split by whether the message must be "
            "refused and whether the reply refuses."
        ),
        "03_judge.calibration": (
            "## Can this judge be trusted? Its calibration\n"
            "\n"
            "Kept messages that need no refusal, each judged with its best reply (known good) and with the "
            "same reply shown under another topic's message (known bad: it answers something else), by every "
            "judge of `roles.judge` (`judge.calibration_rows` of them). The AUC is the chance a known-good "
            "item outscores a known-bad one (0.5 = chance, 1 = perfect)."
        ),
        "04_filter.training": (
            "## The training set\n"
            "\n"
            "The kept messages with their replies; `should_refuse` rows are the refusal examples."
        ),
        "06_evaluate.safety": (
            "## Safety before and after, with and without the refusal examples\n"
            "\n"
            "A drop against the untuned model is flagged red."
        ),
        "06_evaluate.side_by_side": ("## Replies side by side\n\nThe first real messages with each model's reply."),
        "07_gaps.failures": (
            "## The failures with their replies\n"
            "\n"
            "Each failure with its signature and reply: the student's for a dev message (the untuned model's "
            "beside it, `base_reply`), 03's best for a `low_judge` one."
        ),
        "07_gaps.patch": (
            "## Config patch for the next iteration\n"
            "\n"
            "First, when refusal examples fell short (04 kept fewer than `diversity.refusal_share` asks, or a"
            " best reply answered what must be refused), a higher **refusal share**. Then per cluster, "
            "largest first: **more_rows** for its topic, its real dev messages as **phrasing** examples of "
            "the topic, the namer's **policy** (into `task.policies`) and **persona** (into "
            "`diversity.personas`), and the cluster as an **edge case** (`task.edge_cases`). Each edit "
            "carries its evidence; the patch is `artifacts/config_patch.yaml`, and `workbench iterate <this "
            "run> --accept e1,e3` (or `--accept-all`) starts the next iteration with the accepted edits."
        ),
        "99_report.evaluation": (
            "## Win-rate against the untuned model, on real messages (06)\n"
            "\n"
            "Real Banking77 test messages nobody here generated. Each student's reply against the untuned "
            "model's, by every judge in both orders; a verdict that follows the position is a tie (counted "
            "half); 95% bootstrap intervals. Over-refusal: the share of these benign messages a model "
            "refuses."
        ),
        "99_report.safety": (
            "## Safety before and after, with and without the refusal examples\n"
            "\n"
            "Refusal rate on AdvBench harmful instructions (the refusal judge, keyword check as second "
            "opinion); `sft` against `sft_no_refusals` is what the refusal examples did. **Red**: a tuned "
            "model refuses less often than the untuned one."
        ),
        "99_report.judge": (
            "## The judge (03): calibration, judged candidates, best-of-N and pairs\n"
            "\n"
            "Can it be trusted? Its AUC on known-good against known-bad replies first; then the candidates it"
            " scored, with rationales, and the DPO pairs its margins made (confirmed in both orders)."
        ),
        "99_report.funnel": (
            "## Funnel and reject pile\n\nEvery message 01 wrote, by the stage and reason that first rejected it."
        ),
        "99_report.clusters": (
            "## Failure clusters on the real dev messages (07)\n"
            "\n"
            "Named by the namer from their exemplars; noise in grey. 07's page has the config patch they led "
            "to."
        ),
    },
    "summarization": {
        "02_responses": (
            "`responses.candidates` summaries per kept source from the generator (`roles.generator`), under "
            "the summarizer's instructions: the domain, the summary's rules (`task.policies`) and at most "
            "`task.summary_max_words` words. Each candidate keeps its call's metadata (model, seed, tokens, "
            "latency, time to first token, cache); a candidate that refuses (by the refusal phrases) is "
            "marked: a summarizer that refuses fails."
        ),
        "03_judge": (
            "Each candidate summary is scored 1-5 (shown as 0-1) on each dimension of `judge.rubric` (by "
            "default faithfulness, coverage and concision) with a one-line rationale, by every juror of "
            "`roles.judge`, shown the source and the summary. Best-of-N keeps each source's best-scored "
            "summary; a DPO pair is best over worst when their scores differ by `judge.pair_margin` or more "
            "(ties make no pair), confirmed by asking in both orders. A source whose best summary scores "
            "below `judge.min_score` is rejected as `low_score`, one whose best summary refuses as "
            "`over_refused`."
        ),
        "04_filter": (
            "Each kept source's best summary goes through the final filter's gates on the summary itself: the"
            " optional rewrite (`filter.rewrite`), length, language, profanity, placeholders and meta-talk, "
            "PII, toxicity, domain, and near-duplicate summaries. Every source 01 wrote is here, so the "
            "reject pile holds every row with the stage and reason that stopped it. The kept summaries are "
            "exported as chat records for SFT, and the confirmed pairs of kept sources for DPO, in "
            "`artifacts/export/`: `sft.jsonl`, `dpo.jsonl`, a `datasets` folder `hf/` and the dataset card "
            "`README.md`."
        ),
        "05_train": (
            "`train.model` (or the parent run's student, `train.start_from: parent`) fine-tuned with trl on "
            "04's kept summaries, each method as `train.methods` asks: **sft** on every kept summary; **dpo**"
            " on the confirmed pairs; **grpo** from the SFT model with `train.grpo_reward`: verifiable terms "
            "(the share of the summary's numbers and names found in its source; its length against "
            "`task.summary_max_words`) and/or the judges' score of each summary on the rubric (`roles.judge`,"
            " one cached batch per step)."
        ),
        "06_evaluate": (
            "`evaluate.causal_test_per_label` real test sources per kind (ACLSum's test abstracts for the "
            "demo), summarized greedily under the summarizer's instructions by the untuned model and by each "
            "of 05's students. **Win-rate**: each student's summary against the untuned model's, asked of "
            "every judge of `roles.judge` in both orders; a verdict that follows the position is a tie "
            "(counted half); 95% bootstrap CIs. **Faithful**: the share of summaries whose every number and "
            "name is in the source (by rule). **ROUGE-L**: F1 against the dataset's reference summary, where "
            "it has one (Google's rouge-score, stemmed). **Over-refusal**: the share of sources a model "
            "refused to summarize."
        ),
        "07_gaps": (
            "Where the tuned summarizer fails, on real **dev** sources (train-split sources disjoint from the"
            " seeds; the test split never steers generation): 05's final student (GRPO after DPO after SFT) "
            "and the untuned model summarize each source; a source is a failure where the student's summary "
            "**lost** to the untuned one's (every judge of `roles.judge`, both orders), refused, is "
            "**unfaithful** (a number or name its source lacks), or scored below `gaps.low_score` on a rubric"
            " dimension (`low:<dimension>`). With `gaps.sources` holding `low_judge`, 03's best summaries "
            'that scored low or are unfaithful join them. Failures are embedded as "signature: source", '
            "mapped with UMAP and clustered with HDBSCAN (noise in grey); the namer (`roles.namer`) names "
            "each cluster and suggests a rule for the summaries and who writes such sources."
        ),
        "99_report": (
            "The summaries run on one page: each student's win-rate against the untuned model on real "
            "sources, with faithfulness, ROUGE-L against the references and over-refusal; the judge with its "
            "calibration and its judged candidates; the funnel and reject pile; the students; and the failure"
            " clusters. Each stage's own page is linked above."
        ),
        "02_responses.candidates": ("## Candidates\n\nThe first summaries, with whether each refuses."),
        "03_judge.judged": ("## Judged candidates with rationales\n\nBest first per source."),
        "03_judge.jury": (
            "## The jury: agreement and the disagreement queue\n"
            "\n"
            "With more than one juror (`roles.judge` models × `judge.jurors`), Krippendorff's alpha per "
            "dimension is in the line above, and each candidate summary whose jurors' scores spread more than"
            " `judge.max_spread` is here, widest spread first, for a person to look at."
        ),
        "03_judge.calibration": (
            "## Can this judge be trusted? Its calibration\n"
            "\n"
            "Kept sources, each judged with its best summary (known good) and with another source's summary "
            "shown under it (known bad: it summarizes something else), by every judge of `roles.judge` "
            "(`judge.calibration_rows` of them). The AUC is the chance a known-good item outscores a "
            "known-bad one (0.5 = chance, 1 = perfect)."
        ),
        "04_filter.training": ("## The training set\n\nThe kept sources (`message`) with their summaries (`text`)."),
        "06_evaluate.safety": ("## Safety before and after\n\nA drop against the untuned model is flagged red."),
        "06_evaluate.scores": (
            "## Faithfulness and ROUGE-L per model\n"
            "\n"
            "Each model's mean faithfulness and ROUGE-L with 95% bootstrap intervals; the numbers and names a"
            " summary states that its source lacks are listed per summary below."
        ),
        "06_evaluate.side_by_side": ("## Summaries side by side\n\nThe first real sources with each model's summary."),
        "07_gaps.failures": (
            "## The failures with their summaries\n"
            "\n"
            "Each failure with its signature and summary: the student's for a dev source (the untuned model's"
            " beside it, `base_reply`), 03's best for a `low_judge` one."
        ),
        "07_gaps.patch": (
            "## Config patch for the next iteration\n"
            "\n"
            "Per cluster, largest first: **more_rows** of its kind, its real dev sources as **phrasing** "
            "examples, the namer's rule (**policy**, into `task.policies`: the summarizer's instructions) and"
            " **persona** (into `diversity.personas`: who 01 writes as), and the cluster as an **edge case** "
            "(`task.edge_cases`). Each edit carries its evidence; the patch is `artifacts/config_patch.yaml`,"
            " and `workbench iterate <this run> --accept e1,e3` (or `--accept-all`) starts the next iteration"
            " with the accepted edits."
        ),
        "99_report.evaluation": (
            "## Win-rate, faithfulness and ROUGE-L on real sources (06)\n"
            "\n"
            "Real test sources nobody here generated. Each student's summary against the untuned model's, by "
            "every judge in both orders; a verdict that follows the position is a tie (counted half); "
            "faithfulness by rule, ROUGE-L against the dataset's references; 95% bootstrap intervals."
        ),
        "99_report.safety": (
            "## Safety before and after\n"
            "\n"
            "Refusal rate on AdvBench harmful instructions (the refusal judge, keyword check as second "
            "opinion). **Red**: a tuned model refuses less often than the untuned one."
        ),
        "99_report.judge": (
            "## The judge (03): calibration, judged candidates, best-of-N and pairs\n"
            "\n"
            "Can it be trusted? Its AUC on known-good against known-bad summaries first; then the candidates "
            "it scored, with rationales, and the DPO pairs its margins made (confirmed in both orders)."
        ),
        "99_report.funnel": (
            "## Funnel and reject pile\n\nEvery source 01 wrote, by the stage and reason that first rejected it."
        ),
        "99_report.clusters": (
            "## Failure clusters on the real dev sources (07)\n"
            "\n"
            "Named by the namer from their exemplars; noise in grey. 07's page has the config patch they led "
            "to."
        ),
    },
}


TEXT |= pages_intro.TEXT
# where a type's page says what another type's says: extraction is told as tool calls are (its one
# schema of fields is the tools' page's "or, for extraction"), and replies and summaries write
# their inputs (00, 01) as classification does
SAME_AS = {"extraction": "tools", "reply": "classification", "summarization": "classification"}


def text(cfg: RunConfig, key: str) -> str:
    """The Markdown `key` says for `cfg`'s task type (a KeyError names a key the type lacks)."""
    kind = cfg.task.type
    own = TEXT.get(kind, {})
    return own[key] if key in own else TEXT[SAME_AS[kind]][key]
