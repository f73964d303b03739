"""transformers' async-batching reset race (engine/reset_race.py): the force (`reset-late`), the fix (`sync-reset`) and
the probe (`reset-probe`) install on this machine's transformers and on 5.17 where a copy is found, refuse a layout
without their targets, are removed after their job, and are listed with their descriptions. Their CUDA paths run on a
GPU only (reports/h200-session.sh gemma-race-force / gemma-race-fix / gemma-race-probe)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from evalharness.cli import main  # noqa: E402
from evalharness.config import EngineConfig, UsageError  # noqa: E402
from evalharness.engine import reset_race  # noqa: E402
from evalharness.engine.patches import PatchError  # noqa: E402
from evalharness.faults import FAULTS, listing  # noqa: E402
from evalharness.parsers import parse_injections  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
INSTALLS = {"reset-late": reset_race.install_force, "sync-reset": reset_race.install_fix,
            "reset-probe": reset_race.install_probe}


def _targets():
    from transformers.generation.continuous_batching import cache, input_outputs

    return input_outputs.ContinuousBatchingAsyncIOs, cache.PagedAttentionCache


def _class_attrs():
    async_cls, cache_cls = _targets()
    return {(cls, name): cls.__dict__[name] for cls in (async_cls, cache_cls)
            for name in ("__init__", "reset", "get_model_kwargs") if name in cls.__dict__}


# --- the host state a replayed reset must not clear (pure) ------------------------------------------------------

class Holder:
    def __init__(self):
        self.max_seqlen_q = 384
        self.max_seqlen_k = {"full_attention": 1152, "sliding_attention": 512}
        self.sizes = [3, 4]
        self.bulk = torch.arange(6)
        self.cu_k = {"full_attention": self.bulk[:3]}
        self.requests = []


def test_host_state_survives_a_reset_that_clears_it_and_tensors_keep_the_reset():
    h = Holder()
    max_k = h.max_seqlen_k  # other objects may hold this dict: it is restored in place
    saved = reset_race.host_state(h)
    assert set(saved) == {"max_seqlen_q", "max_seqlen_k", "sizes", "requests"}  # tensors are the replay's
    h.max_seqlen_q = 0
    h.max_seqlen_k["full_attention"] = 0
    h.sizes.append(9)
    h.bulk.zero_()
    reset_race.restore_host_state(h, saved)
    assert h.max_seqlen_q == 384 and h.sizes == [3, 4]
    assert h.max_seqlen_k is max_k and max_k == {"full_attention": 1152, "sliding_attention": 512}
    assert h.bulk.tolist() == [0] * 6 and h.cu_k["full_attention"].tolist() == [0, 0, 0]


def test_replay_reset_runs_the_full_reset_and_keeps_the_host_side():
    calls = []

    class DeviceIO(Holder):
        def _reset_static_tensors(self, full_reset=False):
            calls.append(full_reset)
            self.bulk.zero_()
            self.max_seqlen_q = 0
            for k in self.max_seqlen_k:
                self.max_seqlen_k[k] = 0

    io = DeviceIO()
    reset_race.replay_reset(io)
    assert calls == [True]
    assert io.bulk.tolist() == [0] * 6 and io.max_seqlen_q == 384 and io.max_seqlen_k["full_attention"] == 1152


# --- installing on the real classes, removal, refusal -----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(INSTALLS))
def test_patch_installs_on_this_transformers_and_is_removed(name):
    before = _class_attrs()
    installed = INSTALLS[name]()
    try:
        wrapped = [key for key, original in before.items() if key[0].__dict__[key[1]] is not original]
        assert {f"{cls.__name__}.{attr}" for cls, attr in wrapped} == set(installed.targets)
        assert installed.report()["patch"] == name
    finally:
        installed.remove()
    assert _class_attrs() == before  # every method is the original again: a reused worker serves the next job clean


@pytest.mark.parametrize("name", sorted(INSTALLS))
def test_patch_refuses_a_layout_without_its_target(name):
    async_cls, cache_cls = _targets()
    no_reset = type("ContinuousBatchingAsyncIOs", (), {"__init__": async_cls.__init__,
                                                       "get_model_kwargs": async_cls.get_model_kwargs})
    import transformers

    with pytest.raises(PatchError, match=rf"transformers {transformers.__version__}: ContinuousBatchingAsyncIOs "
                                         r"has no attribute 'reset'; this patch does not know"):
        INSTALLS[name](async_cls=no_reset)
    no_replay = type("ContinuousBatchingIOs", (), {})
    before = _class_attrs()
    with pytest.raises(PatchError, match="ContinuousBatchingIOs has no attribute '_reset_static_tensors'"):
        INSTALLS[name](io_cls=no_replay)
    assert _class_attrs() == before  # refused before anything was patched


# a pip --target folder holding transformers 5.17.0 and what it needs beyond this venv, e.g.
#   pip install --no-deps --target /tmp/tf517t transformers==5.17.0 httpx httpcore h11 anyio sniffio \
#       "huggingface-hub>=1.5,<2"
TF517_CANDIDATES = [os.environ.get("EVALHARNESS_TF517", ""), "/tmp/tf517t"]


def _tf517() -> str | None:
    for path in filter(None, TF517_CANDIDATES):
        init = Path(path) / "transformers" / "__init__.py"
        if init.exists() and '__version__ = "5.17.0"' in init.read_text():
            return path
    return None


def test_patches_install_on_transformers_517_in_a_subprocess():
    """transformers 5.17 (the H200's) from a pip --target folder (EVALHARNESS_TF517, or /tmp/tf517t)."""
    path = _tf517()
    if path is None:
        pytest.skip("no transformers 5.17.0 copy (set EVALHARNESS_TF517 to a pip --target folder)")
    code = ("import json, transformers\n"
            "from evalharness.engine import reset_race as r\n"
            "out = {'version': transformers.__version__}\n"
            "for name, f in (('reset-late', r.install_force), ('sync-reset', r.install_fix), "
            "('reset-probe', r.install_probe)):\n"
            "    i = f(); out[name] = i.targets; i.remove()\n"
            "print(json.dumps(out))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([path, str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["version"] == "5.17.0"
    assert "ContinuousBatchingAsyncIOs.get_model_kwargs" in out["reset-late"]
    assert "PagedAttentionCache.__init__" in out["reset-late"]
    assert out["sync-reset"] == ["ContinuousBatchingAsyncIOs.__init__", "ContinuousBatchingAsyncIOs.reset"]


# --- the registry, the CLI, the plan ----------------------------------------------------------------------------

def test_registry_kinds_and_twin():
    assert FAULTS["reset-late"].kind == "fault" and not FAULTS["reset-late"].patches_twin  # the twin stays clean
    assert FAULTS["sync-reset"].kind == "fix" and FAULTS["sync-reset"].patches_twin
    assert FAULTS["reset-probe"].kind == "probe" and FAULTS["reset-probe"].patches_twin
    assert all(f.about for f in FAULTS.values())


def test_faults_command_lists_each_with_its_description(capsys):
    assert main(["faults"]) == 0
    out = capsys.readouterr().out
    assert out == listing() + "\n"
    fix_section = out.split("fix candidates for transformers (not faults")[1].split("probes")[0]
    assert f"sync-reset     [run and twin] {FAULTS['sync-reset'].about}" in fix_section
    assert "not a fault: a fix candidate for transformers' reset race" in fix_section
    faults_section = out.split("fix candidates")[0]
    assert f"reset-late     [run only] {FAULTS['reset-late'].about}" in faults_section
    assert "sync-reset" not in faults_section


def test_gsm8k_help_names_the_fix_as_not_a_fault(capsys):
    with pytest.raises(SystemExit):
        main(["gsm8k", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "reset-late; or, not a fault, a fix candidate for transformers (sync-reset" in help_text


def test_fix_goes_into_every_mode_and_the_twin():
    from evalharness.config import Capabilities, plan_runs

    injections = parse_injections(["off=sync-reset", "varlen=sync-reset"], ["off", "varlen"])
    caps = Capabilities(cuda=True, attn="torch-flash")
    plan = plan_runs(["off", "varlen"], [384], caps, injections)
    assert {cfg.fault for cfg in plan.runs.values()} == {"sync-reset"}  # off, the graph run and its twin
    forced = plan_runs(["off", "varlen"], [384], caps, parse_injections(["varlen=reset-late"], ["off", "varlen"]))
    varlen = next(p for p in forced.modes if p.mode == "varlen")
    assert forced.runs[varlen.run].fault == "reset-late" and forced.runs[varlen.twin].fault is None
    with pytest.raises(UsageError, match="sync-reset"):
        parse_injections(["varlen=sync-rest"], ["off", "varlen"])


# --- one real job on the CPU: the patch is installed for the job, reported, and removed ---------------------------

def test_job_reports_the_patch_and_removes_it(tiny_llama, tmp_path):
    from evalharness.engine.run_job import WorkerState, run

    before = _class_attrs()
    engine = dataclasses.asdict(EngineConfig(max_bt=64, attn="sdpa", cuda_graph=(False, False), fault="reset-late"))
    job = {"engine": engine, "model": {"path": str(tiny_llama), "dtype": "fp32"},
           "prompts": ["Question: 2 + 3?\nAnswer:"], "max_new_tokens": 3, "chat": False, "timeout_s": 60}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert run(tmp_path, WorkerState()) == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["status"] == "done"
    patch = meta["patch"]
    assert patch["patch"] == "reset-late" and "ContinuousBatchingAsyncIOs.reset" in patch["targets"]
    assert patch["fired"] == 0 and patch["armed"] == 0  # no async IOs on a CPU: the race cannot be forced here
    assert patch["kv_zeroed"] >= 1  # the KV cache was built, and zeroed, through the patched constructor
    assert any("reset-late never fired" in n for n in meta["notes"])
    assert _class_attrs() == before
