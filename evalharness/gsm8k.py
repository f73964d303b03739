"""GSM8K prompts and scoring, through lm-eval's own task machinery.

The task configuration is lm-eval's shipped `gsm8k` (or `gsm8k-cot`) YAML, with only the data source and the
number of shots overridden; lm-eval renders the prompts (few-shot sampling with its fixed seed), and its regex
filters and exact_match metric score the responses. Nothing here re-implements a prompt or a regex.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import UsageError
from .data import DataSource

PROMPTS = {
    # style: (lm-eval task yaml, default shots, primary filter)
    "fewshot": ("gsm8k.yaml", 5, "strict-match"),
    "cot": ("gsm8k-cot.yaml", 8, "strict-match"),
    "chat": ("gsm8k.yaml", 0, "flexible-extract"),
}
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


def lm_eval_task_config(style: str) -> dict:
    import lm_eval

    name = PROMPTS[style][0]
    path = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / name
    cfg = yaml.safe_load(path.read_text())
    cfg.pop("tag", None)
    cfg.pop("include", None)
    return cfg


@dataclass
class Scored:
    answers: dict[str, str]  # filter name -> extracted answer
    correct: dict[str, bool]  # filter name -> exact_match


class GSM8KTask:
    """Prompts for the first `limit` test rows, and a scorer for responses to them."""

    def __init__(self, source: DataSource, style: str = "fewshot", num_fewshot: int | None = None,
                 limit: int | None = None, primary_filter: str | None = None):
        if style not in PROMPTS:
            raise UsageError(f"--prompt: unknown style {style!r} (choose from {', '.join(PROMPTS)})")
        self.style = style
        self.num_fewshot = PROMPTS[style][1] if num_fewshot is None else num_fewshot
        if self.num_fewshot < 0:
            raise UsageError("--fewshot must be >= 0")
        if style == "chat" and self.num_fewshot:
            raise UsageError("--prompt chat is zero-shot; drop --fewshot or use --prompt fewshot")
        if limit is not None and limit <= 0:
            raise UsageError("--limit must be a positive integer")
        cfg = lm_eval_task_config(style)
        cfg.update(source.task_overrides())
        if not source.fewshot_split:  # a local test file without train rows: lm-eval must not look for a train split
            cfg.pop("training_split", None)
        cfg["task"] = f"evalharness_gsm8k_{style}"
        cfg["num_fewshot"] = self.num_fewshot
        if self.num_fewshot == 0:
            cfg.pop("fewshot_split", None)
            cfg.pop("fewshot_config", None)
        self._build(cfg, source, limit)
        self.primary_filter = primary_filter or PROMPTS[style][2]
        if self.primary_filter not in self.filters:
            raise UsageError(f"--filter: {self.primary_filter!r} is not one of {', '.join(self.filters)}")

    metric = "exact_match"  # the metric whose value 1 means correct

    def _build(self, cfg: dict, source: DataSource, limit: int | None) -> None:
        """Load the task through lm-eval, render the prompts for the first `limit` docs, note stops and filters."""
        with _quiet():
            self.task = _load_task(cfg, source)
            if hasattr(self.task, "set_fewshot_seed"):
                self.task.set_fewshot_seed(seed=FEWSHOT_SEED)
            self.task.build_all_requests(limit=limit, rank=0, world_size=1)
        self.instances = sorted(self.task.instances, key=lambda inst: inst.doc_id)
        if not self.instances:
            raise UsageError(f"data {source.label}: no rows to evaluate")
        self.prompts = [inst.args[0] for inst in self.instances]
        self.until = list(self.instances[0].args[1].get("until", []))
        self.filters = [f["name"] for f in cfg.get("filter_list") or []] or ["none"]

    def targets(self) -> list[str]:
        return [str(self.task.doc_to_target(inst.doc)) for inst in self.instances]

    def cut(self, text: str) -> str:
        """Cut a generation at the first stop string, as lm-eval's own models do with `until`."""
        for stop in self.until:
            if stop:
                text = text.split(stop)[0]
        return text

    def score(self, texts: list[str]) -> list[Scored]:
        """Run lm-eval's filters and the task's metric over one response per prompt (in prompt order)."""
        if len(texts) != len(self.instances):
            raise ValueError(f"{len(texts)} responses for {len(self.instances)} prompts")
        for inst, text in zip(self.instances, texts):
            inst.resps = [self.cut(text)]
            inst.filtered_resps = {}
        self.task.apply_filters()
        out = []
        for inst in self.instances:
            answers, correct = {}, {}
            for name in self.filters:
                resp = inst.filtered_resps[name]
                metrics = self.task.process_results(inst.doc, [resp])
                answers[name] = str(resp)
                correct[name] = bool(float(metrics.get(self.metric, 0.0)) >= 1.0)
            out.append(Scored(answers, correct))
        return out


@contextlib.contextmanager
def _quiet():
    """No progress bars from datasets and lm-eval while the rows load and the prompts render: it takes a moment, and
    a bad input that is found after it (a model folder without weights) must still print one error line only."""
    import datasets
    import lm_eval.api.task as lm_task

    bars, lm_tqdm = datasets.is_progress_bar_enabled(), getattr(lm_task, "tqdm", None)
    datasets.disable_progress_bars()
    if lm_tqdm is not None:
        lm_task.tqdm = functools.partial(lm_tqdm, disable=True)
    try:
        yield
    finally:
        if lm_tqdm is not None:
            lm_task.tqdm = lm_tqdm
        if bars:
            datasets.enable_progress_bars()


def _load_task(cfg: dict, source: DataSource):
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        loaded = TaskManager(include_defaults=False).load(cfg)
    except Exception as e:
        hint = "" if source.dataset_path in ("json", "parquet") else " (offline? pass --data FILE.jsonl)"
        raise UsageError(f"data {source.label}: cannot load ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                         f"{hint}")
    return loaded["tasks"][cfg["task"]]
