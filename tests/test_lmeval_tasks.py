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
def test_taskspec_renders_the_same_prompts_as_gsm8ktask(style):
    from evalharness import data
    from evalharness.gsm8k import GSM8KTask
    from evalharness.lmeval_task import STYLE_TASKS, TaskSpec

    test = str(DATA / "test.jsonl")
    old = GSM8KTask(data.resolve(test, None, 5 if style == "fewshot" else 0), style=style, limit=3)
    new = TaskSpec(STYLE_TASKS[style], data=test, limit=3)
    local = TaskSpec(STYLE_TASKS[style] + "_local", limit=3, include_path=[str(REPO / "tests" / "tasks")])
    assert old.prompts == new.prompts == local.prompts
    assert old.until == new.until and old.primary_filter == new.primary_filter == local.primary_filter
    assert new.style == style
    texts = ["so 18.\n#### 18", "The answer is 3.", "it is 70000"]
    assert [s.correct for s in old.score(texts)] == [s.correct for s in new.score(texts)]


def test_unknown_and_unsupported_tasks():
    from evalharness.config import UsageError
    from evalharness.lmeval_task import TaskSpec

    with pytest.raises(UsageError, match="an lm-eval tag"):
        TaskSpec("evalharness_local", include_path=[str(REPO / "tests" / "tasks")])
