"""lm-eval task YAMLs for every GSM8K variant the harness runs (`lm_eval --include_path tasks ...` from the repo root).

Each variant comes in a hub-data form and a `_local` form reading JSONL files. The hub forms inherit lm-eval's own
YAMLs (see `_inherit.py`); the local forms `include:` their hub form and change only the data source. Local paths
such as `../shared/data/gsm8k/test.jsonl` are relative to the working directory, as `datasets` resolves them: run
`lm_eval` from the repository root. The harness (`evalharness gsm8k --task NAME`) also tries them against the
repository root when they are not found from the working directory.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
