"""The evidence report's smoke mode (benchmarks/report.py --smoke, reached as `binarize bench accuracy`):
it runs end to end into a temporary folder and writes every section, the claims table and the raw results."""
import csv
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

import binarize
from binarize import cli

VERDICTS = {"holds", "holds within noise", "within noise", "does not hold", "not measured"}


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("report")
    monkeypatch_module.setattr(sys, "argv", list(sys.argv))  # the CLI hands its arguments over in sys.argv
    assert cli.main(["bench", "accuracy", "--smoke", "--out", str(out), "--cache", str(out / "cache"),
                     "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_report_has_every_section_and_the_environment(smoke_report):
    text = (smoke_report / "REPORT.md").read_text()
    for heading in ("## 1. Accuracy and ablations", "### One-factor ablation", "## Claims of the papers, checked",
                    "## 2. Quantization error (BiPer figure 3)", "## 3. Speed, size and training cost",
                    "### Training cost"):
        assert heading in text
    for key in ("| command | `python benchmarks/report.py --smoke", "| binarize commit |",
                "| onnxruntime |", "| ISA flags |"):
        assert key in text


def test_claims_table_checks_the_papers(smoke_report):
    rows = list(csv.DictReader((smoke_report / "claims.csv").open()))
    assert {row["verdict"] for row in rows} <= VERDICTS
    assert {row["claim"] for row in rows} >= {"CBCN error below XNOR on MNIST-rot",
                                              "double skips raise binary accuracy", "kernel loss helps RBCN",
                                              "GAN (discriminators) helps", "BiPer at least as good as Bi-Real"}
    # The smoke grid (bireal with and without double skips) measures exactly this claim.
    measured = [row for row in rows if row["verdict"] != "not measured"]
    assert [(row["better"], row["worse"]) for row in measured] == [("bireal", "bireal -double skip")]
    assert "| double skips raise binary accuracy | CBCN table 3 |" in (smoke_report / "REPORT.md").read_text()


def test_raw_results(smoke_report):
    runs = list(csv.DictReader((smoke_report / "runs.csv").open()))
    assert {row["label"] for row in runs} == {"float", "xnor", "bireal", "bireal -double skip"}
    assert all(0.0 <= float(row["acc"]) <= 1.0 for row in runs)
    qe = json.loads((smoke_report / "qe.json").read_text())
    assert all(abs(p["monte_carlo"] - p["closed_form"]) < 0.01 for p in qe["monte_carlo"])
    assert qe["layers"] and all(layer["omega_auto"] * layer["b"] == pytest.approx(0.27777, rel=1e-3)
                                for layer in qe["layers"])
    steps = list(csv.DictReader((smoke_report / "train_step.csv").open()))
    assert {row["model"] for row in steps} == {"float", "xnor", "bireal"}
    if importlib.util.find_spec("matplotlib"):
        for plot in ("accuracy.png", "ablation.png", "qe.png", "train_step.png"):
            assert (smoke_report / plot).stat().st_size > 1000


def test_a_changed_method_default_retrains_only_that_methods_runs(monkeypatch):
    """The run cache is keyed by each method's own defaults: a changed xnor default names new xnor run
    files and leaves the other methods' (and the teachers') cached runs in place."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import report_accuracy as acc

    cache = Path("cache")
    runs = [acc.FLOAT, acc.Variant("xnor", "xnor"), acc.Variant("bireal", "bireal"),
            acc.Variant("xnor -RSign", "xnor", {"input_threshold": False})]
    before = [acc.run_path(cache, "lenet", "mnist5k", variant, 0) for variant in runs]
    xnor = binarize.METHODS["xnor"]
    changed = dataclasses.make_dataclass("ChangedXnorConfig", [("latent_gain", float, 2.0)], bases=(xnor.config,))
    monkeypatch.setitem(binarize.METHODS, "xnor", dataclasses.replace(xnor, config=changed))
    after = [acc.run_path(cache, "lenet", "mnist5k", variant, 0) for variant in runs]
    assert [b == a for b, a in zip(before, after)] == [True, False, True, False]
    assert len(set(before)) == len(runs)
