"""tasks/ (shipped as evalharness/tasks) and tests/tasks (the _local variants): every YAML loads through lm-eval's TaskManager and renders lm-eval's prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "gsm8k"
TASKS = REPO / "tasks"
YAMLS = sorted(TASKS.glob("*.yaml")) + sorted((REPO / "tests" / "tasks").glob("*.yaml"))
needs_data = pytest.mark.skipif(not (DATA / "test.jsonl").is_file(), reason=f"GSM8K data not found at {DATA}")


@pytest.fixture(scope="module")
def tm():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS), str(REPO / "tests" / "tasks")], include_defaults=False)


def test_variants_and_no_shared_paths_in_the_package():
    from evalharness.lmeval_task import TASKS_DIR

    assert TASKS_DIR == TASKS.resolve()
    assert not any("shared" in p.read_text() for p in TASKS.glob("*.yaml"))  # the package never points at ../shared
    names = {p.stem for p in YAMLS}
    for base in ("evalharness_gsm8k", "evalharness_gsm8k_cot", "evalharness_gsm8k_chat", "evalharness_gsm8k_platinum"):
        assert {base, base + "_local"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_every_yaml_is_indexed_and_inherits_lm_eval(tm, path):
    from lm_eval.tasks._yaml_loader import load_yaml

    from evalharness.lmeval_inherit import INCLUDE_KEY, lm_eval_tasks_dir, merged_config

    assert path.stem in tm.all_subtasks
    raw = load_yaml(path, resolve_func=True)
    cfg = merged_config(raw)
    base = load_yaml(lm_eval_tasks_dir() / raw[INCLUDE_KEY], resolve_func=True)
    # prompts, filters and metrics are lm-eval's, never copied
    for key in ("doc_to_text", "doc_to_target", "filter_list", "metric_list", "generation_kwargs", "output_type"):
        assert cfg[key] == base[key], key
    assert cfg["task"] == path.stem
    if path.stem.endswith("_local"):
        assert cfg["dataset_path"] == "json" and cfg["dataset_name"] is None
        assert all(str(f).startswith("../shared/data/gsm8k/") for f in cfg["dataset_kwargs"]["data_files"].values())
    else:
        assert cfg["dataset_path"] == base["dataset_path"] in ("openai/gsm8k", "madrylab/gsm8k-platinum")


@needs_data
@pytest.mark.parametrize("name", [p.stem for p in YAMLS if p.stem.endswith("_local")])
def test_local_tasks_load_and_build_requests(tm, name, monkeypatch):
    monkeypatch.chdir(REPO)  # relative data_files resolve against the working directory, as with lm_eval
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = tm.load([name])["tasks"][name]
    task.build_all_requests(limit=2, rank=0, world_size=1)
    assert len(task.instances) == 2
    assert task.instances[0].args[0].rstrip().endswith(("Answer:", "A:"))


@needs_data
@pytest.mark.parametrize("style", ["fewshot", "cot", "chat"])
def test_prompt_style_is_its_task_on_the_given_data(style):
    """`--prompt STYLE` is `--task STYLE_TASKS[STYLE]`: the same prompts, stops, filters and scores as the hub task
    given the same --data, and as its _local variant (the YAML's own data files)."""
    from evalharness.lmeval_task import STYLE_TASKS, TaskSpec

    test = str(DATA / "test.jsonl")
    via_prompt = TaskSpec(prompt=style, data=test, limit=3)
    new = TaskSpec(STYLE_TASKS[style], data=test, limit=3)
    local = TaskSpec(STYLE_TASKS[style] + "_local", limit=3, include_path=[str(REPO / "tests" / "tasks")])
    assert via_prompt.prompts == new.prompts == local.prompts
    assert via_prompt.until == new.until and via_prompt.primary_filter == new.primary_filter == local.primary_filter
    assert via_prompt.style == new.style == style
    assert via_prompt.num_fewshot == new.num_fewshot == {"fewshot": 5, "cot": 8, "chat": 0}[style]
    assert via_prompt.primary_filter == ("flexible-extract" if style == "chat" else "strict-match")
    texts = ["so 18.\n#### 18", "The answer is 3.", "it is 70000"]
    assert [s.correct for s in via_prompt.score(texts)] == [s.correct for s in new.score(texts)]


def test_prompt_without_data_is_the_embedded_copy(monkeypatch):
    """--prompt without --data never reaches for the YAML's hub dataset: the package's embedded GSM8K copy."""
    from evalharness.data import EMBEDDED_LABEL
    from evalharness.lmeval_task import TaskSpec

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = TaskSpec(prompt="cot", limit=2)
    assert task.source.label == EMBEDDED_LABEL and task.name == "evalharness_gsm8k_cot"
    assert len(task.prompts) == 2 and task.prompts[0].count("A:") == 9  # lm-eval's 8 fixed exemplars + the question


@needs_data
def test_prompt_cot_and_task_cot_plan_the_same_jobs(tmp_path):
    """`--prompt cot` and `--task evalharness_gsm8k_cot` on the same data: the same prompts, workload fingerprint and
    job ids (cache folders), so either reuses the other's cached runs."""
    from evalharness.plan import prepare_jobs
    from evalharness.settings import make

    model = {"path": "fake-model", "gguf_file": None, "dtype": "fp32", "trust_remote_code": False, "label": "fake"}
    probes = {"default": {"transformers": "fake", "tuple_graphs": True}}
    base = dict(data=str(DATA / "test.jsonl"), limit=3, max_new_tokens=16, cache=tmp_path / "cache", progress=False)
    plans = [prepare_jobs(make(**base, **kw, out=tmp_path / name), cuda=False, model=model, probes=probes,
                          interpreters={"default": ("python", None)})
             for name, kw in (("prompt", {"prompt": "cot"}), ("task", {"task": "evalharness_gsm8k_cot"}))]
    by_prompt, by_task = plans
    assert by_prompt.settings.workload.prompt == by_task.settings.workload.prompt == "cot"
    assert by_prompt.task.prompts == by_task.task.prompts and by_prompt.task.num_fewshot == 8
    assert by_prompt.fingerprint == by_task.fingerprint
    assert [j.job_dir for j in by_prompt.jobs] == [j.job_dir for j in by_task.jobs] and by_prompt.jobs


def test_unknown_and_unsupported_tasks():
    from evalharness.config import UsageError
    from evalharness.lmeval_task import TaskSpec

    with pytest.raises(UsageError, match="an lm-eval tag"):
        TaskSpec("evalharness_local", include_path=[str(REPO / "tests" / "tasks")])


@pytest.mark.parametrize("style", ["cot", "fewshot"])
def test_compiled_templates_render_and_score_what_lm_eval_does(style):
    """Planning, targets() and score() render lm-eval's Jinja fields through templates compiled once
    (lmeval_task.compiled_once): the same prompts, targets, filtered answers and scores as lm-eval's own rendering of
    the same docs, which compiles each template per call (outside the block)."""
    from lm_eval import utils

    from evalharness.lmeval_task import FEWSHOT_SEED, TaskSpec, _template

    original = utils.apply_template
    _template.cache_clear()
    spec = TaskSpec(prompt=style, limit=6)
    built = _template.cache_info()
    assert built.misses >= 1 and built.hits >= len(spec.prompts)  # the prompts were rendered through the cache
    assert utils.apply_template is original  # everything below renders as lm-eval alone does
    task, docs = spec.task, [inst.doc for inst in spec.instances]
    task.set_fewshot_seed(seed=FEWSHOT_SEED)  # the shots lm-eval drew while planning, drawn again in doc order
    prompts = [task.fewshot_context(doc, num_fewshot=spec.num_fewshot, gen_prefix=task.doc_to_prefix(doc))
               for doc in docs]
    assert spec.prompts == prompts and len(set(prompts)) == len(docs)
    assert all(p.endswith(task.doc_to_text(doc)) for p, doc in zip(spec.prompts, docs))
    assert spec.num_fewshot > 0 and all(len(p) > len(task.doc_to_text(doc)) for p, doc in zip(prompts, docs))  # shots
    targets = [str(task.doc_to_target(doc)) for doc in docs]
    before = _template.cache_info()
    assert spec.targets() == targets
    assert _template.cache_info().hits >= before.hits + len(docs) - 1

    # half right (the gold answer in the task's answer formats), half wrong, one without a number
    gold = [t.split("####")[-1].strip() for t in targets]
    texts = [f"So it is {g}. The answer is {g}.\n#### {g}" if i % 2 == 0 else
             f"So it is {g}1. The answer is {g}1.\n#### {g}1" for i, g in enumerate(gold)]
    texts[-1] = "I do not know."
    for inst, text in zip(spec.instances, texts):
        inst.resps, inst.filtered_resps = [spec.cut(text)], {}
    task.apply_filters()
    answers = [{name: str(inst.filtered_resps[name]) for name in spec.filters} for inst in spec.instances]
    correct = [{name: float(task.process_results(inst.doc, [inst.filtered_resps[name]])[spec.metric]) >= 1.0
                for name in spec.filters} for inst in spec.instances]
    assert utils.apply_template is original
    before = _template.cache_info()
    scored = spec.score(texts)
    assert [s.answers for s in scored] == answers and [s.correct for s in scored] == correct
    assert {v for c in correct for v in c.values()} == {True, False}
    assert _template.cache_info().hits > before.hits  # the metric rendered the targets through the cache


def test_compiled_once_restores_lm_eval_and_compiles_each_template_once(monkeypatch):
    """Inside compiled_once lm-eval's apply_template renders through templates compiled once per distinct string,
    in lm-eval's own Jinja environment; after the block (also one left by an exception) it is lm-eval's function
    again; a nested block changes nothing."""
    from collections import Counter

    from lm_eval import utils

    from evalharness.lmeval_task import TaskSpec, _template, compiled_once

    original = utils.apply_template
    with compiled_once():
        patched = utils.apply_template
        assert patched is not original
        doc = {"a": "x", "b": [1, 2]}
        template = "{{ a | regex_replace('x', 'y') }}{{ b | length }}"  # one of lm-eval's own filters
        assert patched(template, doc) == original(template, doc) == "y2"
        with compiled_once():
            assert utils.apply_template is patched
        assert utils.apply_template is patched  # the nested block's exit did not restore lm-eval's early
    assert utils.apply_template is original
    with pytest.raises(KeyError, match="inside"):
        with compiled_once():
            assert utils.apply_template is not original
            raise KeyError("inside")
    assert utils.apply_template is original

    spec = TaskSpec(prompt="cot", limit=20)
    compiled = Counter()
    compile_ = utils.env.from_string

    def counting(source, *args, **kwargs):  # lm-eval's compilation, counted per template string
        compiled[source] += 1
        return compile_(source, *args, **kwargs)

    monkeypatch.setattr(utils.env, "from_string", counting)
    _template.cache_clear()
    targets = spec.targets()
    first = _template.cache_info()
    assert len(targets) == 20 and len(set(targets)) > 1
    assert compiled == Counter({spec.task.config.doc_to_target: 1})  # one template, compiled once for 20 docs
    assert first.misses == 1 and first.hits == 19
    assert spec.targets() == targets
    again = _template.cache_info()
    assert again.misses == first.misses and again.hits == first.hits + 20 and sum(compiled.values()) == 1
    assert utils.apply_template is original
