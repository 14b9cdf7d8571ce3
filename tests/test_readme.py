"""README statements that issue 13 found wrong, checked against the code they describe."""
import os
import re
import subprocess
import sys
from pathlib import Path

from binarize import FinetuneConfig, convert
from binarize.methods import training_policy
from binarize.models import resnet_small

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quickstart_epoch_count_is_what_finetune_plans_for_biper():
    line = next(line for line in README.splitlines() if "FinetuneConfig(epochs=5)" in line)
    stated = int(re.search(r"(\d+) in all", line).group(1))
    student = convert(resnet_small(widths=(16, 16), blocks=(1, 1)), "biper")
    phases = training_policy(student).training_phases(student, FinetuneConfig(epochs=5))
    assert sum(p.epochs for p in phases) == stated


def test_register_schemas_snippet_runs_after_a_plain_import(tmp_path):
    snippet = re.search(r"\(`(import binarize\.converters[^`]*register_schemas\(\))`", README).group(1)
    result = subprocess.run([sys.executable, "-c", f"import binarize; {snippet}"], capture_output=True, text=True,
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert result.returncode == 0, result.stderr


def test_parity_claim_states_the_tie_tolerance_the_tests_use():
    tie = float(re.search(r"^TIE = (\S+)", (ROOT / "tests" / "test_export.py").read_text(), re.M).group(1))
    claim = README[README.index("Runtime outputs equal"):][:700]
    assert "tie" in claim and float(re.search(r"\|x\| ≤ (\S+) of the layer's largest", claim).group(1)) == tie
