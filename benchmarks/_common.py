"""What the benchmark scripts share: where the repo and the local GSM8K copy are, the tests' tiny seeded Llama, and
one worker-like model load in a fresh interpreter."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL_DATA = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def tiny_llama(dest: Path) -> Path:
    """Build the tests' tiny seeded Llama (tests/conftest.py) into `dest`."""
    spec = importlib.util.spec_from_file_location("evalharness_test_conftest", REPO / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return conftest.build_tiny_llama(dest)


# One model load as a worker does it (`transformers_cb.load_model`: for a GGUF model, through the dequantized cache
# where it is on), in a fresh interpreter: argv MODEL GGUF_FILE DTYPE ONLY_CACHED; prints one JSON line {"load_s",
# "info"} (the cache's report), or with ONLY_CACHED=1, for a model without the cache, {"gguf", "cache"} unloaded.
LOAD_MODEL = """
import json, sys, time
from evalharness import models
from evalharness.engine import gguf_cache
from evalharness.engine.transformers_cb import load_model
spec = models.resolve(sys.argv[1], sys.argv[2] or None, sys.argv[3])
if sys.argv[4] == "1" and not (spec.get("gguf_file") and gguf_cache.enabled()):
    print(json.dumps({"gguf": bool(spec.get("gguf_file")), "cache": gguf_cache.enabled()}))
    sys.exit(0)
t0 = time.perf_counter()
lm, tok = load_model(spec, "sdpa")
print(json.dumps({"load_s": round(time.perf_counter() - t0, 2), "info": getattr(lm, "_evalharness_gguf_cache", None)}))
"""


def load_model_cmd(python: str, model: str, gguf_file: str | None, dtype: str, only_cached: bool = False) -> list[str]:
    """The command of one LOAD_MODEL run with `python`."""
    return [python, "-c", LOAD_MODEL, model, gguf_file or "", dtype, "1" if only_cached else "0"]
