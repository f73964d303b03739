"""`--task NAME`: any lm-eval generate_until task, loaded by name through lm-eval's TaskManager.

Names are looked up in our `tasks/` first (the GSM8K variants: `evalharness_gsm8k`, `_cot`, `_chat`, `_platinum`)
and in `--include-path` folders, then among lm-eval's own tasks (indexing those takes ~10 s). `gsm8k` is the short form of
`evalharness_gsm8k`. `--prompt STYLE` is a shorthand for `--task STYLE_TASKS[STYLE]` on the embedded GSM8K copy
(`TaskSpec(..., source=data.resolve(...))`). lm-eval renders the prompts (few-shot sampling with its fixed seed), and
its filters and the task's metric score the responses; nothing here re-implements a prompt or a regex.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from . import data as data_mod
from .config import UsageError
from .data import DataSource

# --prompt STYLE -> our task in tasks/ that it stands for (run on the embedded data unless --data is given)
STYLE_TASKS = {"fewshot": "evalharness_gsm8k", "cot": "evalharness_gsm8k_cot", "chat": "evalharness_gsm8k_chat"}
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed
SHORT_NAMES = {"gsm8k": "evalharness_gsm8k"}
# evalharness/tasks/ in an installed wheel; the top-level tasks/ folder beside the package in a source checkout
TASKS_DIR = next((p for p in (Path(__file__).resolve().parent / "tasks", Path(__file__).resolve().parents[1] / "tasks")
                  if (p / "evalharness_gsm8k.yaml").is_file()), Path(__file__).resolve().parent / "tasks")


@functools.lru_cache(maxsize=4)
def task_manager(include_defaults: bool, include_path: tuple[str, ...] = ()):
    """lm-eval's TaskManager over our tasks/ and `include_path` (plus lm-eval's own tasks when include_defaults)."""
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return TaskManager(include_path=[str(TASKS_DIR), *include_path], include_defaults=include_defaults)


def our_tasks(include_path: tuple[str, ...] = ()) -> list[str]:
    return sorted(task_manager(False, include_path).all_subtasks)


def task_config(name: str, include_path: tuple[str, ...] = ()) -> dict:
    """The full config of a named generate_until task (includes and `!function`s resolved)."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    from .lmeval_inherit import INCLUDE_KEY, merged_config

    name = SHORT_NAMES.get(name, name)
    for p in include_path:
        if not Path(p).is_dir():
            raise UsageError(f"--include-path {p}: not a folder")
    tm = task_manager(False, include_path)
    if name not in tm.task_index:
        tm = task_manager(True, include_path)
    entry = tm.task_index.get(name)
    if entry is None:
        raise UsageError(f"--task {name}: no such lm-eval task (ours: gsm8k, {', '.join(our_tasks(include_path))})")
    if entry.kind not in (Kind.TASK, Kind.PY_TASK) or entry.yaml_path is None:
        raise UsageError(f"--task {name}: an lm-eval {entry.kind.name.lower()}, not a single task; name one of its "
                         "tasks")
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    cfg["__yaml_dir__"] = str(Path(entry.yaml_path).resolve().parent)
    if entry.kind == Kind.PY_TASK:
        if INCLUDE_KEY not in cfg:
            raise UsageError(f"--task {name}: a Python-defined lm-eval task; only YAML tasks are supported")
        cfg = merged_config(cfg)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    if cfg.get("output_type", "generate_until") != "generate_until":
        raise UsageError(f"--task {name}: output_type {cfg.get('output_type')!r}; continuous batching runs "
                         "generate_until tasks only")
    if int(cfg.get("repeats") or 1) != 1:
        raise UsageError(f"--task {name}: repeats={cfg['repeats']} (sampling); the harness decodes greedily once")
    return cfg


def harness_hints(cfg: dict) -> dict:
    """`metadata: {evalharness: {style, primary_filter}}` in our YAMLs; {} for other tasks."""
    meta = cfg.get("metadata") or {}
    return dict(meta.get("evalharness") or {}) if isinstance(meta, dict) else {}


def shots_from_split(cfg: dict, num_fewshot: int | None) -> int:
    """How many shots a task draws from a data split (0 when its exemplars are fixed in the YAML)."""
    shots = (cfg.get("num_fewshot") or 0) if num_fewshot is None else num_fewshot
    return 0 if (cfg.get("fewshot_config") or {}).get("samples") else shots


def localise_data_files(cfg: dict, name: str) -> dict:
    """Relative data_files made absolute: against the working directory, as lm-eval does, else against the YAML's
    own folder."""
    yaml_dir = Path(cfg.pop("__yaml_dir__", Path.cwd()))
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if not files:
        return cfg

    def fix(p):
        path = Path(str(p)).expanduser()
        if path.is_absolute() or "://" in str(p):
            return str(p)
        for base in (Path.cwd(), yaml_dir):
            if (base / path).exists():
                return str((base / path).resolve())
        raise UsageError(f"--task {name}: data file {p} not found from the working directory or {yaml_dir} "
                         "(pass --data FILE)")

    if isinstance(files, dict):
        kwargs["data_files"] = {k: [fix(x) for x in v] if isinstance(v, list) else fix(v) for k, v in files.items()}
    elif isinstance(files, list):
        kwargs["data_files"] = [fix(x) for x in files]
    else:
        kwargs["data_files"] = fix(files)
    return {**cfg, "dataset_kwargs": kwargs}


def source_of(cfg: dict, name: str) -> DataSource:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    split = cfg.get("test_split") or "test"
    if isinstance(files, dict) and split in files:
        label = f"{name}: {files[split]}"
    else:
        label = f"{name}: {cfg.get('dataset_path')}" + (f" ({cfg['dataset_name']}, {split})"
                                                          if cfg.get("dataset_name") else f" ({split})")
    return DataSource(dataset_path=cfg.get("dataset_path"), dataset_name=cfg.get("dataset_name"),
                      dataset_kwargs=dict(cfg.get("dataset_kwargs") or {}), test_split=split,
                      fewshot_split=cfg.get("fewshot_split"), label=label)


@dataclass
class Scored:
    answers: dict[str, str]  # filter name -> extracted answer
    correct: dict[str, bool]  # filter name -> exact_match


class TaskSpec:
    """A named lm-eval task's prompts for the first `limit` docs, and a scorer for responses to them.

    `data`/`fewshot_data` (the --data/--fewshot-data strings) replace the task's data source. `prompt` (a --prompt
    style, a key of STYLE_TASKS) names the task instead of `name`; its data is always replaced: by --data, else by
    the embedded GSM8K copy.
    """

    def __init__(self, name: str | None = None, data: str | None = None, fewshot_data: str | None = None,
                 num_fewshot: int | None = None, limit: int | None = None, primary_filter: str | None = None,
                 include_path: tuple[str, ...] | list[str] = (), prompt: str | None = None):
        if prompt is not None:
            if prompt not in STYLE_TASKS:
                raise UsageError(f"--prompt: unknown style {prompt!r} (choose from {', '.join(STYLE_TASKS)})")
            name = STYLE_TASKS[prompt]
        if limit is not None and limit <= 0:
            raise UsageError("--limit must be a positive integer")
        if num_fewshot is not None and num_fewshot < 0:
            raise UsageError("--fewshot must be >= 0")
        self.name = SHORT_NAMES.get(name, name)
        cfg = task_config(self.name, tuple(str(p) for p in include_path))
        hints = harness_hints(cfg)
        self.style = hints.get("style", "fewshot")
        self.num_fewshot = (cfg.get("num_fewshot") or 0) if num_fewshot is None else num_fewshot
        if self.style == "chat" and self.num_fewshot:
            raise UsageError(f"--prompt {prompt} is zero-shot; drop --fewshot or use --prompt fewshot" if prompt else
                             f"--task {self.name} is zero-shot chat; drop --fewshot")
        if data or prompt is not None:
            cfg.pop("__yaml_dir__", None)
            source = data_mod.resolve(data, fewshot_data, shots_from_split(cfg, num_fewshot))
            cfg.update(source.task_overrides())
            if not source.fewshot_split:  # a local test file without train rows: lm-eval must not look for them
                for key in ("training_split", "fewshot_split"):
                    cfg.pop(key, None)
        else:
            cfg = localise_data_files(cfg, self.name)
            source = source_of(cfg, self.name)
        self.source = source
        cfg["num_fewshot"] = self.num_fewshot
        if self.num_fewshot == 0:
            cfg.pop("fewshot_split", None)
            cfg.pop("fewshot_config", None)
        self._build(cfg, source, limit)
        self.metric = next((m["metric"] for m in cfg.get("metric_list") or [] if isinstance(m.get("metric"), str)),
                           "exact_match")
        self.primary_filter = primary_filter or hints.get("primary_filter") or self.filters[0]
        if self.primary_filter not in self.filters:
            raise UsageError(f"--filter: {self.primary_filter!r} is not one of {', '.join(self.filters)}")

    def _build(self, cfg: dict, source: DataSource, limit: int | None) -> None:
        """Load the task through lm-eval, render the prompts for the first `limit` docs, note stops and filters."""
        with _quiet(), compiled_once():
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
        with compiled_once():
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
        out = []
        with compiled_once():
            self.task.apply_filters()
            for inst in self.instances:
                answers, correct = {}, {}
                for name in self.filters:
                    resp = inst.filtered_resps[name]
                    metrics = self.task.process_results(inst.doc, [resp])
                    answers[name] = str(resp)
                    correct[name] = bool(float(metrics.get(self.metric, 0.0)) >= 1.0)
                out.append(Scored(answers, correct))
        return out


@functools.lru_cache(maxsize=64)
def _template(source: str):
    from lm_eval import utils

    return utils.env.from_string(source)


@contextlib.contextmanager
def compiled_once():
    """lm-eval renders a task's Jinja fields (doc_to_text, doc_to_target, ...) through `utils.apply_template`, which
    compiles the template string again for every document and field (0.4.13: `env.from_string(template)` per call,
    `from_string` has no cache). For 200 CoT questions that was 3,600 compilations while planning and 1,800 while
    scoring, two thirds of both on the critical path of a verdict. Inside this block each distinct template string is
    compiled once, in lm-eval's own environment, and rendered as before: the same text."""
    from lm_eval import utils

    original = utils.apply_template
    if getattr(original, "_evalharness", False) or not hasattr(utils, "env"):  # nested, or an lm-eval without it
        yield
        return

    def apply_template(template: str, doc: dict) -> str:
        return _template(template).render(**doc)

    apply_template._evalharness = True
    utils.apply_template = apply_template
    try:
        yield
    finally:
        utils.apply_template = original


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
