"""A task that inherits one of lm-eval's own task YAMLs, so prompts, regexes and metrics are never copied here.

lm-eval's `include:` takes a path relative to the including YAML, which cannot point into the installed `lm_eval`
package portably. A YAML here instead says

    class: !function _inherit.LmEvalTask   (tasks/_inherit.py imports it from here)
    lm_eval_include: gsm8k/gsm8k.yaml      # a path under lm_eval/tasks/

and this class loads that YAML with lm-eval's own loader (its includes and `!function`s resolved), lays the keys of
the YAML here over it (its `metadata` merged key by key), and is otherwise lm-eval's `ConfigurableTask`.
"""

from __future__ import annotations

from pathlib import Path

from lm_eval.api.task import ConfigurableTask

INCLUDE_KEY = "lm_eval_include"
# keys of the base YAML that name or group the base task, not the inheriting one
_BASE_ONLY = ("task", "tag", "group", "task_list", "include", "task_alias")


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent / "tasks"


def merged_config(cfg: dict) -> dict:
    """The inheriting YAML's keys over lm-eval's base YAML (no `class` / `lm_eval_include` left)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = dict(cfg)
    cfg.pop("class", None)
    rel = cfg.pop(INCLUDE_KEY, None)
    if rel is None:
        return cfg
    path = lm_eval_tasks_dir() / rel
    if not path.is_file():
        raise FileNotFoundError(f"{INCLUDE_KEY}: {rel} is not a task YAML of this lm-eval ({path})")
    base = load_yaml(path, resolve_func=True)
    for key in _BASE_ONLY:
        base.pop(key, None)
    meta = {**(base.get("metadata") or {}), **(cfg.get("metadata") or {})}
    out = {**base, **cfg}
    out["metadata"] = meta
    return out


class LmEvalTask(ConfigurableTask):
    def __init__(self, data_dir=None, cache_dir=None, download_mode=None, config: dict | None = None) -> None:
        super().__init__(data_dir=data_dir, cache_dir=cache_dir, download_mode=download_mode,
                         config=merged_config(config or {}))
