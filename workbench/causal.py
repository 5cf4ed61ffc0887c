"""The causal student: a chat LM fine-tuned with trl, scored as a classifier and checked for safety.

Training (`fit`) passes trl's own config classes through: `TRAINER_DEFAULTS` below, then the config's
`train.sft` / `train.dpo` / `train.grpo` dicts over them (any field of SFTConfig, DPOConfig, GRPOConfig),
and `train.lora` (any field of peft.LoraConfig; null = full fine-tune).

- **sft**: prompt/completion rows (system = the task, user = the message, assistant = the label), so
  the loss is on the completion only.
- **dpo**: 03's best-vs-worst pairs, from the SFT model, with the SFT model as the explicit reference.
- **grpo**: prompts with their intended label, from the SFT model; the verifiable reward is
  `correct` (the generated label is the intended one) plus a small `label_format` term (how close
  the reply is to some label: 1.0 for a valid label), so a model that starts far from the label set
  still gets a signal. With `train.grpo_reward` naming `judge`, `judge_reward` adds the judges'
  score of each reply (roles.judge's models, batched and cached). Each reward function carries its
  `weight` (format terms 0.2), used unless `train.grpo.reward_weights` is set.

Each method writes `adapter/` (LoRA only), `merged/` (a plain model folder, float32) and `curve.json`
(trl's log history) under its folder.

Scoring (`classify`) is greedy decoding constrained to the label set: a token trie over the labels'
tokens followed by end of message, so every answer is a valid label and accuracy measures which one.
It runs through the one decode loop (`llm.decode`): the prompt shared by every row (the chat
template and system message, with the label list for the untuned model) is read once and its keys
and values attended to by every row without being copied per row.

`answers` generates free text (greedy) for the safety check: AdvBench instructions are sent as a
plain chat, no task system message, to see whether tuning on labels kept the model's refusals.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench import precision
from workbench.config import ConfigError, RunConfig, TrainConfig
from workbench.export import system_prompt as with_labels
from workbench.files import replace_dir, write_atomic
from workbench.llm import Request, generate_by
from workbench.llm.decode import Decoder, end_id
from workbench.llm.types import history_turns, read_rating

log = logging.getLogger(__name__)

# trl argument defaults for a short run on a CPU; the config's train.sft/dpo/grpo override any field.
TRAINER_DEFAULTS: dict[str, dict[str, Any]] = {
    "common": {
        "logging_steps": 1,
        "report_to": [],
        "save_strategy": "no",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    },
    "sft": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "learning_rate": 1e-3, "max_length": 160},
    "dpo": {
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "learning_rate": 2e-4,
        "beta": 0.1,
        "max_length": 160,
    },
    "grpo": {
        "max_steps": 20,
        "per_device_train_batch_size": 16,
        "num_generations": 4,
        "max_completion_length": 12,
        "learning_rate": 2e-4,
    },
}


def _trl_class(method: str):
    import trl  # trl (and torch) only where a model trains

    return {"sft": trl.SFTConfig, "dpo": trl.DPOConfig, "grpo": trl.GRPOConfig}[method]


def check_args(cfg: TrainConfig) -> None:
    """Unknown trl/peft fields are errors that name the config field (before anything trains)."""
    from peft import LoraConfig  # trl (and torch) only where a model trains

    for method in ("sft", "dpo", "grpo"):
        known = {f.name for f in dataclasses.fields(_trl_class(method))}
        bad = sorted(set(getattr(cfg, method)) - known)
        if bad:
            hint = {b: difflib.get_close_matches(b, known, 1) for b in bad}
            raise ConfigError(f"train.{method}: unknown {_trl_class(method).__name__} fields {hint}")
    if cfg.lora is not None:
        known = {f.name for f in dataclasses.fields(LoraConfig)}
        bad = sorted(set(cfg.lora) - known)
        if bad:
            raise ConfigError(f"train.lora: unknown peft.LoraConfig fields {bad}")


def trainer_args(method: str, cfg: TrainConfig, out: Path, seed: int):
    import torch  # torch loads in seconds: only where a model runs

    args = {**TRAINER_DEFAULTS["common"], **TRAINER_DEFAULTS[method], "seed": seed, "output_dir": str(out)}
    args["use_cpu"] = not torch.cuda.is_available()
    # trl turns checkpointing on; on a 135M model it only costs time (transformers 5 renames the field)
    fields = {f.name for f in dataclasses.fields(_trl_class(method))}
    args["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = False
    user = getattr(cfg, method)
    if (bf16 := precision.trainer_bf16(user)) is not None:
        args["bf16"] = bf16  # trl's own default is bf16 mixed precision, even on a CPU without it
    args.update(user)
    log.info(
        "%s: bf16 mixed precision %s (%s)",
        method,
        args.get("bf16"),
        "set in the config" if "bf16" in user or "fp16" in user else "auto",
    )
    return _trl_class(method)(**args)


def lora_config(cfg: TrainConfig):
    if cfg.lora is None:
        return None
    from peft import LoraConfig  # trl (and torch) only where a model trains

    return LoraConfig(task_type="CAUSAL_LM", **cfg.lora)


# ---------------------------------------------------------------- prompts and rows


def system_prompt(cfg: RunConfig, labels: list[str] | None = None) -> str:
    """The task as a system message. With `labels` (the untuned model, which has never seen them) it is
    the exports' prompt with the label list; a tuned student learned the labels and gets the short one."""
    if labels:
        return with_labels(cfg, labels)
    return f"{cfg.task.description.strip()} Answer with exactly one label."


def prompt_messages(system: str, text: str, history=None) -> list[dict]:
    """System, the earlier turns of a multi-turn row (`history`, JSON), then the user's message."""
    return [{"role": "system", "content": system}, *history_turns(history), {"role": "user", "content": text}]


def _history(rows: pd.DataFrame) -> list:
    return list(rows["history"]) if "history" in rows else [None] * len(rows)


def sft_dataset(train: pd.DataFrame, system: str):
    from datasets import Dataset  # datasets (pyarrow) only where a dataset is written or mapped

    return Dataset.from_list(
        [
            {"prompt": prompt_messages(system, t, h), "completion": [{"role": "assistant", "content": lab}]}
            for t, lab, h in zip(train["text"], train["label"], _history(train))
        ]
    )


def dpo_dataset(pairs: pd.DataFrame, system: str):
    from datasets import Dataset  # datasets (pyarrow) only where a dataset is written or mapped

    return Dataset.from_list(
        [
            {
                "prompt": prompt_messages(system, r.text, getattr(r, "history", None)),
                "chosen": [{"role": "assistant", "content": r.chosen}],
                "rejected": [{"role": "assistant", "content": r.rejected}],
            }
            for r in pairs.itertuples()
        ]
    )


def grpo_dataset(train: pd.DataFrame, system: str):
    from datasets import Dataset  # datasets (pyarrow) only where a dataset is written or mapped

    return Dataset.from_list(
        [{"prompt": prompt_messages(system, t), "label": lab} for t, lab in zip(train["text"], train["label"])]
    )


def _reply(completion) -> str:
    return (completion[-1]["content"] if isinstance(completion, list) else str(completion)).strip()


def rewards(labels: list[str]) -> list:
    """GRPO's verifiable rewards for classification: `correct` and `label_format`."""
    known = list(labels)

    def correct(completions, label, **_: Any) -> list[float]:
        return [float(_reply(c) == lab) for c, lab in zip(completions, label)]

    def label_format(completions, **_: Any) -> list[float]:
        out = []
        for c in completions:
            r = _reply(c)
            out.append(1.0 if r in known else max(difflib.SequenceMatcher(None, r, k).ratio() for k in known) * 0.5)
        return out

    label_format.weight = 0.2
    return [correct, label_format]


# What the reward's judge rates a student's reply on, per rubric dimension: the reply, not the input
REWARD_CRITERIA = {
    "correctness": "the reply is the right answer to the request (for a label: the one the message is about)",
    "helpfulness": "the reply does what the user asked, completely and usefully",
    "policy_compliance": "the reply is something a {domain} assistant may say: nothing harmful, abusive or private, "
    "and a request that must be refused is refused",
    "formatting": "the reply is in the form asked for, with no preamble, notes, placeholders or markup",
    "tool_usage": "a tool call names the right tool with correct arguments, and only when needed",
    "refusal_quality": "a refusal is brief and polite, says why, and offers a safe alternative",
}
REWARD_SYSTEM = "You are a strict grader of an assistant's replies for {domain}."
REWARD_USER = (
    'Criterion: {criterion}.\nThe assistant\'s instructions: "{system}"\nRequest: "{text}"\nReply: "{reply}"\n'
    "Score the reply 1 (fails) to 5 (fully meets), then give a one-sentence reason."
)


def judge_reward(
    cfg: RunConfig,
    judges: dict,
    log_to: list | None = None,
    dims: list[str] | None = None,
    criteria: dict | None = None,
):
    """GRPO's judge reward: each reply of a step's batch rated 1-5 (as 0-1) on each dimension of
    `dims` (default `judge.rubric`, correctness when null) by each model of `judges` (roles.judge's LLMs by name),
    shown the instructions, the request and the reply; the reward is the mean over dimensions and
    judges. One `generate` per model and step (batched), through the LLM cache (a reply seen before
    costs nothing). A rating that cannot be read scores 0 and is counted in `log_to` (one dict per
    step: calls, cached, unreadable). `criteria`: each dimension's wording (default `REWARD_CRITERIA`;
    a summary's faithfulness and coverage are the summaries' own)."""
    dims = list(dims or cfg.judge.rubric or ["correctness"])
    criteria = criteria or REWARD_CRITERIA
    j, domain = cfg.judge, cfg.task.domain

    def judge(completions, prompts, **_: Any) -> list[float]:
        reqs, names = [], []
        for prompt, c in zip(prompts, completions):
            system = next((m["content"] for m in prompt if m["role"] == "system"), "")
            text = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
            for dim in dims:
                user = REWARD_USER.format(
                    criterion=criteria[dim].format(domain=domain), system=system, text=text, reply=_reply(c)
                )
                for name in judges:
                    reqs.append(
                        Request.rating(
                            REWARD_SYSTEM.format(domain=domain),
                            user,
                            temperature=j.temperature,
                            max_tokens=j.max_tokens,
                            seed=cfg.seed,
                        )
                    )
                    names.append(name)
        results = generate_by(judges, reqs, names, "05 grpo judge reward")
        scores = [read_rating(r[0]["text"], r[0]["parsed"], r[0].get("first_probs"))[0] for r in results]
        if log_to is not None:
            log_to.append({"calls": len(results), "cached": sum(bool(r[0]["cached"]) for r in results),
                           "unreadable": sum(s is None for s in scores)})  # fmt: skip
        per = len(dims) * len(judges)
        return [float(np.mean([s or 0.0 for s in scores[k * per : (k + 1) * per]])) for k in range(len(completions))]

    return judge


# ---------------------------------------------------------------- training


def load(path: str | Path, dtype: str = "float32"):
    import torch  # torch loads in seconds: only where a model runs
    from transformers import AutoModelForCausalLM, AutoTokenizer  # torch loads in seconds: only where a model runs

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model, tok


def longest(tok, data) -> int:
    """Tokens of the longest example of an SFT (prompt, completion) or DPO (prompt, chosen,
    rejected) dataset, chat template included."""
    out = 0
    for r in data:
        answers = [r[k] for k in ("completion", "chosen", "rejected") if k in r]
        for a in answers:
            ids = tok.apply_chat_template(list(r["prompt"]) + list(a), tokenize=True, return_dict=True)["input_ids"]
            out = max(out, len(ids))
    return out


def fit(
    method: str,
    base: str | Path,
    data,
    cfg: RunConfig,
    out: Path,
    labels: list[str] | None = None,
    reward_funcs: list | None = None,
) -> dict:
    """Train one method from the model folder `base`; write adapter/, merged/ and curve.json under
    `out`. GRPO's rewards are `reward_funcs` where given (a task module's), else classification's
    for `labels`. Returns train_rows, train_seconds, steps and the paths."""
    import torch  # torch loads in seconds: only where a model runs
    from trl import DPOTrainer, GRPOTrainer, SFTTrainer  # trl (and torch) only where a model trains

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load(base)
    args = trainer_args(method, cfg.train, out / "checkpoints", cfg.seed)
    if method in ("sft", "dpo") and "max_length" not in getattr(cfg.train, method) and len(data):
        # the default (160 tokens, sized for a label answer) must not cut a longer example's answer
        args.max_length = max(args.max_length or 0, longest(tok, data))
    kw: dict[str, Any] = {"args": args, "train_dataset": data, "processing_class": tok}
    if cfg.train.lora is not None:
        kw["peft_config"] = lora_config(cfg.train)
    if method == "sft":
        trainer = SFTTrainer(model=model, **kw)
    elif method == "dpo":
        ref, _ = load(base)  # the explicit reference: the model DPO starts from, frozen
        trainer = DPOTrainer(model=model, ref_model=ref, **kw)
    elif method == "grpo":
        if labels is None and reward_funcs is None:
            raise ValueError("grpo needs the label set or reward functions for its reward")
        funcs = reward_funcs or rewards(labels)
        if "reward_weights" not in cfg.train.grpo:  # each term's own weight (format terms 0.2)
            args.reward_weights = [float(getattr(f, "weight", 1.0)) for f in funcs]
        trainer = GRPOTrainer(model=model, reward_funcs=funcs, **kw)
    else:
        raise ValueError(f"unknown method {method!r}; expected sft, dpo or grpo")
    if len(trainer.train_dataset) == 0:  # trl drops examples whose answer is cut off entirely
        raise ValueError(
            f"{method}: none of the {len(data)} examples fits train.{method}.max_length={args.max_length} tokens "
            "with its answer; raise it (or leave it unset: then it fits the longest example)"
        )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    trained = trainer.model
    result = {"method": method, "train_rows": len(data), "train_seconds": round(seconds, 1)}
    result["steps"] = int(trainer.state.global_step)
    if method in ("sft", "dpo"):
        result["max_length"] = args.max_length  # tokens of an example, answer included, before truncation
    # each folder is written under a temporary name and renamed: a crash never leaves a half-saved model
    if cfg.train.lora is not None:
        tmp = out / f".adapter.tmp{os.getpid()}"
        trained.save_pretrained(tmp)
        replace_dir(tmp, out / "adapter")
        result["adapter"] = str(out / "adapter")
        trained = trained.merge_and_unload()
    trained = trained.to(torch.float32)
    tmp = out / f".merged.tmp{os.getpid()}"
    trained.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    replace_dir(tmp, out / "merged")
    result["merged"] = str(out / "merged")
    history = [h for h in trainer.state.log_history if "step" in h]
    write_atomic(out / "curve.json", json.dumps(history, indent=1))
    result["curve"] = str(out / "curve.json")
    return result


def curves(folder: Path) -> pd.DataFrame:
    """Every trained causal model's log history under `folder` (one row per logged step):
    model, step, loss, and reward (GRPO) or reward margin (DPO) where logged."""
    rows = []
    for path in sorted(Path(folder).glob("*/curve.json")):
        for h in json.loads(path.read_text()):
            if "loss" not in h and "reward" not in h:
                continue  # the closing summary row
            rows.append(
                {
                    "model": path.parent.name,
                    "step": h.get("step"),
                    "loss": h.get("loss"),
                    "reward": h.get("reward", h.get("rewards/margins")),
                }
            )
    return pd.DataFrame(rows, columns=["model", "step", "loss", "reward"])


# ---------------------------------------------------------------- decoding


class LabelTrie:
    """Token paths of every label followed by end of message; `allowed(node)` lists the next tokens."""

    def __init__(self, tok, labels: list[str], end_id: int):
        self.root: dict = {}
        self.end_id = end_id
        for label in labels:
            node = self.root
            for t in tok.encode(label, add_special_tokens=False) + [end_id]:
                node = node.setdefault(t, {})
            node[None] = label  # the leaf after end of message names the label


def _forced(node: dict) -> str | None:
    """The label `node` leads to when only one path is left (greedy decoding would only read
    tokens it cannot choose between), else None."""
    while None not in node:
        if len(node) != 1:
            return None
        node = next(iter(node.values()))
    return node[None]


def _encode(tok, messages: list[dict]) -> list[int]:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def _as_decoder(model, tok) -> Decoder:
    """`model` itself when it is a `Decoder` (`llm.decode.load`), else one over it (float)."""
    if isinstance(model, Decoder):
        return model
    return Decoder(model, tok.pad_token_id if tok.pad_token_id is not None else end_id(tok))


def classify(model, tok, texts: list[str], labels: list[str], system: str, batch_size: int = 32) -> np.ndarray:
    """The label each text gets: greedy decoding constrained to the label set (always a valid label).
    `model` is a transformers model or a `Decoder`; the prompt every text shares (chat template,
    system message, label list) is read once."""
    trie = LabelTrie(tok, labels, end_id(tok))
    nodes: list[Any] = [trie.root] * len(texts)
    got: list[Any] = [None] * len(texts)

    def pick(step: int, rows: list[int], logits) -> list[int | None]:
        out: list[int | None] = []
        for k, r in enumerate(rows):
            node = nodes[r]
            allowed = [t for t in node if t is not None]
            t = allowed[int(logits[k, allowed].argmax())] if len(allowed) > 1 else allowed[0]
            nodes[r] = node[t]
            if (label := _forced(nodes[r])) is not None:  # one path left: the label is decided
                got[r] = label
                out.append(None)
            else:
                out.append(t)
        return out

    prompts = [_encode(tok, prompt_messages(system, t)) for t in texts]
    depth = max(len(tok.encode(label, add_special_tokens=False)) for label in labels) + 1
    _as_decoder(model, tok).decode(prompts, depth, pick, batch_size)
    return np.asarray(got, dtype=object)


def answers(model, tok, texts: list[str], max_new: int, batch_size: int = 32, system: str | None = None) -> list[str]:
    """Free greedy replies to each text sent as a user message (after `system` when given; none by
    default, as the safety check sends AdvBench instructions)."""
    end = {end_id(tok), tok.eos_token_id}
    got: list[list[int]] = [[] for _ in texts]

    def pick(step: int, rows: list[int], logits) -> list[int | None]:
        out: list[int | None] = []
        for r, t in zip(rows, logits.argmax(-1).tolist()):
            if t in end:
                out.append(None)
                continue
            got[r].append(t)
            out.append(t)
        return out

    head = [{"role": "system", "content": system}] if system else []
    prompts = [_encode(tok, [*head, {"role": "user", "content": t}]) for t in texts]
    _as_decoder(model, tok).decode(prompts, max_new, pick, batch_size)
    return [tok.decode(g, skip_special_tokens=True).strip() for g in got]
