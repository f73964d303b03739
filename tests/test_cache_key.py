"""The engine-run cache key (the runs/<hash> folder of a job) of settings read from an old, flat settings.json is
pinned: the values were computed by the flat-Settings code before settings became nested groups, so a run cached by
that code (or a resume of it) is found again, not recomputed. The key is job_hash(workload fingerprint, interpreter,
run key, probe, model); the settings reach it through the workload fingerprint and the plan's run keys, pinned here.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

from evalharness import store
from evalharness.plan import prepare_jobs, workload_fingerprint

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "reports" / "h200-decode" / "clean" / "settings.json"  # written by the flat-Settings code
MODEL = {"path": "fake-model", "gguf_file": None, "dtype": "bf16", "trust_remote_code": False, "label": "fake"}
PROBES = {"default": {"transformers": "fake", "tuple_graphs": True}}


def old_settings(tmp_path, **changes):
    """The committed flat settings.json (format 1) with `changes`, read back as a resume reads it."""
    doc = json.loads(COMMITTED.read_text())
    assert doc["format"] == 1 and isinstance(doc["settings"]["model"], str)  # flat: the old layout
    doc["settings"].update(changes)
    folder = tmp_path / "old-run"
    folder.mkdir(parents=True)
    (folder / store.SETTINGS_FILE).write_text(json.dumps(doc))
    return store.load_settings(folder)


def test_workload_fingerprint_of_an_old_flat_settings_json_is_unchanged(tmp_path):
    task = types.SimpleNamespace(prompts=["Q: 1+1?\nA:", "Q: 2+2?\nA:"])
    model = {"path": "/tmp/g/models", "gguf_file": "x.gguf", "dtype": "bf16", "trust_remote_code": False}
    assert workload_fingerprint(task, model, old_settings(tmp_path)) == "4224355df09a4c68"
    chat = old_settings(tmp_path / "chat", prompt="chat", max_new_tokens=32)
    assert workload_fingerprint(task, model, chat) == "41bef921b6a274d7"


def test_job_cache_folders_of_an_old_flat_settings_json_are_unchanged(tmp_path):
    s = old_settings(tmp_path, data=None, fewshot_data=None, limit=3, out=str(tmp_path / "out"),
                     cache=str(tmp_path / "cache"), inject=["decode=decode-coarse"], max_bts=[128, 384])
    p = prepare_jobs(s, cuda=True, model=MODEL, probes=PROBES, interpreters={"default": ("python", None)})
    assert p.fingerprint == "92e0f06296bf6a64"
    assert sorted(j.key for j in p.jobs) == [
        "0af7781251d6", "1bae5449f12b", "1fa639c03b72", "309c28086d85", "388a727d01c0", "40fd37e39549",
        "50973496fd2d", "5444e4a8dc3f", "778e4a6a9021", "82463209b6ff", "a5a36a7431cf", "a7a5770d7f92"]
    for job in p.jobs:  # the folder is the job hash of exactly these parts
        assert job.job_dir == tmp_path / "cache" / store.job_hash("92e0f06296bf6a64", "python", None, job.key,
                                                                  PROBES["default"], MODEL)
