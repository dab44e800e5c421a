"""Reports: tables shaped like the paper's, JSON, PNG plots, atomic and deterministic writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from dppa_peft.evaluation import report as R
from dppa_peft.evaluation import plots
from dppa_peft.evaluation.report import EvalResults, Variant, VariantScores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DENSE = {"math": {"gsm8k": 0.6, "MATH": 0.1}, "finance": {"fiqa_sa": 0.5, "fpb": 0.8}}
BASE = {"math": {"gsm8k": 0.2, "MATH": 0.05}, "finance": {"fiqa_sa": 0.4, "fpb": 0.6}}
MATH_FIN = ("math", "finance")


def prune(method: str, rate: float, domain: str, **scores: float) -> VariantScores:
    return VariantScores(Variant(method, rate, "prune", (domain,)), scores)


def merge(method: str, rate: float, **scores: float) -> VariantScores:
    return VariantScores(Variant(method, rate, "merge", MATH_FIN), scores)


def results() -> EvalResults:
    """Scores chosen so that every Domain-Ratio is a round number."""
    return EvalResults(
        dense=DENSE,
        base=BASE,
        variants=[
            prune("dppa", 0.9, "math", gsm8k=0.45, MATH=0.12),  # 0.75, 1.2 -> sqrt(0.9) = 94.87 %
            prune("dare", 0.9, "math", gsm8k=0.3, MATH=0.05),  # 0.5, 0.5 -> 50 %
            prune("dppa", 0.8, "math", gsm8k=0.6, MATH=0.1),  # 100 %
            prune("dppa", 0.9, "finance", fiqa_sa=0.25, fpb=0.8),  # 0.5, 1 -> 70.71 %
            merge("dppa", 0.9, gsm8k=0.3, MATH=0.1, fiqa_sa=0.5, fpb=0.2),  # math 70.71 %, finance 50 %
            merge("dare", 0.9, gsm8k=0.15, MATH=0.025, fiqa_sa=0.5, fpb=0.8),  # math 25 %, finance 100 %
        ],
    )


def test_ratios_per_variant_and_domain() -> None:
    ratios = {(r.variant.label, r.variant.kind, r.domain): r for r in R.all_ratios(results())}
    assert ratios[("dppa 90%", "prune", "math")].task_ratios == {"gsm8k": 0.75, "MATH": pytest.approx(1.2)}
    assert ratios[("dppa 90%", "prune", "math")].domain_ratio == pytest.approx(math.sqrt(0.9))
    assert ratios[("dppa 90%", "merge", "finance")].domain_ratio == pytest.approx(0.5)
    assert ratios[("dare 90%", "merge", "math")].domain_ratio == pytest.approx(0.25)
    assert len(ratios) == 8


def test_markdown_tables(tmp_path: Path) -> None:
    md = (R.write_report(results(), tmp_path / "rep") / "report.md").read_text()
    # (d) base vs dense
    assert "| math | gsm8k | 0.2000 | 0.6000 | +0.4000 |" in md
    assert "| finance | fpb | 0.6000 | 0.8000 | +0.2000 |" in md
    # (a) Table 1: domain x rate rows, method columns, Domain-Ratio %
    assert "| Domain | Pruning rate | dppa | dare |" in md
    assert "| math | 80% | 100.00 | - |" in md
    assert "| math | 90% | 94.87 | 50.00 |" in md
    assert "| finance | 90% | 70.71 | - |" in md
    # (b) Tables 5/6: method & rate rows, domain columns
    assert "## Merging math + finance: Domain-Ratio (%)" in md
    assert "| Method & pruning rate | math | finance |" in md
    assert "| dppa 90% | 70.71 | 50.00 |" in md
    assert "| dare 90% | 25.00 | 100.00 |" in md
    # (c) raw per-task scores, Tables 7/9 and the merges
    assert "| Task | Pruning rate | dppa | dare |" in md
    assert "| gsm8k | 90% | 0.4500 | 0.3000 |" in md
    assert "| fiqa_sa | 90% | 0.2500 | - |" in md
    assert "| Method & pruning rate | gsm8k | MATH | fiqa_sa | fpb |" in md
    assert "| dare 90% | 0.1500 | 0.0250 | 0.5000 | 0.8000 |" in md
    assert "![domain_ratio_vs_rate.png](domain_ratio_vs_rate.png)" in md
    assert md.index("math | 80%") < md.index("math | 90%") < md.index("finance | 90%")


def test_json(tmp_path: Path) -> None:
    data = json.loads((R.write_report(results(), tmp_path / "rep") / "report.json").read_text())
    assert data["metric"] == "acc"
    assert data["domains"] == {"math": ["gsm8k", "MATH"], "finance": ["fiqa_sa", "fpb"]}
    assert data["dense"] == DENSE and data["base"] == BASE
    assert data["variants"][4] == {
        "method": "dppa", "rate": 0.9, "kind": "merge", "domains": ["math", "finance"],
        "scores": {"gsm8k": 0.3, "MATH": 0.1, "fiqa_sa": 0.5, "fpb": 0.2}, "stderr": {},
    }  # fmt: skip
    first = data["ratios"][0]
    assert (first["method"], first["rate"], first["kind"], first["domain"]) == ("dppa", 0.9, "prune", "math")
    assert first["domain_ratio"] == pytest.approx(math.sqrt(0.9))
    assert len(data["ratios"]) == 8


def test_standard_errors_show_where_lm_eval_reports_them(tmp_path: Path) -> None:
    variant = VariantScores(
        Variant("dppa", 0.9, "prune", ("math",)), {"gsm8k": 0.45, "MATH": 0.12}, stderr={"gsm8k": 0.0123}
    )
    data = EvalResults(
        dense=DENSE,
        base=BASE,
        variants=[variant],
        dense_stderr={"math": {"gsm8k": 0.02}},
        base_stderr={"finance": {"fpb": 0.03}},
    )
    out = R.write_report(data, tmp_path / "rep")
    md = (out / "report.md").read_text()
    assert "| gsm8k | 90% | 0.4500 ± 0.0123 |" in md and "| MATH | 90% | 0.1200 |" in md
    assert "| math | gsm8k | 0.2000 | 0.6000 ± 0.0200 | +0.4000 |" in md
    assert "| finance | fpb | 0.6000 ± 0.0300 | 0.8000 | +0.2000 |" in md
    saved = json.loads((out / "report.json").read_text())
    assert saved["variants"][0]["stderr"] == {"gsm8k": 0.0123} and saved["dense_stderr"] == {"math": {"gsm8k": 0.02}}


def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    out = R.write_report(results(), tmp_path / "rep")
    assert sorted(p.name for p in out.iterdir()) == [
        "domain_ratio_vs_rate.png", "merge_math-finance.png", "report.json", "report.md",
    ]  # fmt: skip
    for name in ("domain_ratio_vs_rate.png", "merge_math-finance.png"):
        path = out / name
        assert path.stat().st_size > 0 and path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as image:
            image.verify()
    with Image.open(out / "domain_ratio_vs_rate.png") as image:
        assert image.size == (900, 360)  # two domain subplots at 4.5 x 3.6 inches, 100 dpi


def test_output_is_deterministic(tmp_path: Path) -> None:
    first, second = R.write_report(results(), tmp_path / "a"), R.write_report(results(), tmp_path / "b")
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name


def test_write_replaces_an_existing_report_atomically(tmp_path: Path) -> None:
    target = tmp_path / "rep"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    R.write_report(results(), target)
    assert not (target / "stale.txt").exists() and (target / "report.md").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no staging or backup folder left behind


def test_failed_write_keeps_the_old_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "rep"
    target.mkdir()
    (target / "report.md").write_text("old")

    def broken(*args: object) -> None:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(plots, "plot_prune", broken)  # the plots module draws them
    with pytest.raises(RuntimeError, match="plot failed"):
        R.write_report(results(), target)
    assert (target / "report.md").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_report_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "rep").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        R.write_report(results(), tmp_path / "rep")


def test_dense_and_base_only(tmp_path: Path) -> None:
    out = R.write_report(EvalResults(dense=DENSE, base=BASE), tmp_path / "rep")
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]
    assert "Pruning" not in (out / "report.md").read_text()


def test_dense_zero_makes_the_ratio_undefined_not_a_crash(tmp_path: Path) -> None:
    dense = {**DENSE, "finance": {"fiqa_sa": 0.0, "fpb": 0.8}}
    zero = EvalResults(dense=dense, base=BASE, variants=[prune("dppa", 0.9, "finance", fiqa_sa=0.1, fpb=0.8)])
    out = R.write_report(zero, tmp_path / "rep")
    [ratio] = json.loads((out / "report.json").read_text())["ratios"]
    assert ratio["task_ratios"] == {"fiqa_sa": None, "fpb": 1.0} and ratio["domain_ratio"] is None
    assert "| finance | 90% | n/a |" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Variant("dppa", 1.0, "prune", ("math",)), r"fraction in \[0, 1\)"),
        (lambda: Variant("", 0.9, "prune", ("math",)), "non-empty"),
        (lambda: Variant("dppa", 0.9, "mix", ("math",)), "'prune' or 'merge'"),  # type: ignore[arg-type]
        (lambda: Variant("dppa", 0.9, "prune", MATH_FIN), "exactly one domain"),
        (lambda: Variant("dppa", 0.9, "merge", ("math",)), "two or more"),
        (lambda: Variant("dppa", 0.9, "merge", ("math", "math")), "duplicates"),
        (lambda: EvalResults(dense={}, base={}), "dense is empty"),
        (lambda: EvalResults(dense=DENSE, base={"math": BASE["math"]}), "same domains"),
        (lambda: EvalResults(dense=DENSE, base={**BASE, "math": {"gsm8k": 0.2}}), "cover exactly its tasks"),
        (
            lambda: EvalResults(dense={**DENSE, "law": {"fpb": 0.5}}, base={**BASE, "law": {"fpb": 0.1}}),
            "one domain only",
        ),
        (lambda: EvalResults(dense={**DENSE, "law": {}}, base={**BASE, "law": {}}), "'law' has no tasks"),
        (lambda: EvalResults(dense=DENSE, base={**BASE, "math": {"gsm8k": math.nan, "MATH": 0.1}}), "base scores"),
        (lambda: EvalResults(DENSE, BASE, [prune("dppa", 0.9, "math", gsm8k=-1.0, MATH=0.1)]), "finite numbers >= 0"),
        (lambda: EvalResults(DENSE, BASE, [prune("dppa", 0.9, "law", a=1.0)]), "unknown domain"),
        (lambda: EvalResults(DENSE, BASE, [prune("dppa", 0.9, "math", gsm8k=0.5)]), r"missing \['MATH'\]"),
        (
            lambda: EvalResults(DENSE, BASE, [prune("dppa", 0.9, "math", gsm8k=0.5, MATH=0.1, fpb=0.2)]),
            r"unexpected \['fpb'\]",
        ),
        (
            lambda: EvalResults(DENSE, BASE, [prune("m", 0.5, "math", gsm8k=1, MATH=1)] * 2),
            "given twice",
        ),
    ],
)
def test_invalid_results(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_variant_domains_list_is_coerced() -> None:
    variant = Variant("dppa", 0.9, "merge", ["math", "law"])  # type: ignore[arg-type]
    assert variant.domains == ("math", "law") and hash(variant)
    assert variant.label == "dppa 90%" and R.rate_label(0.7) == "70%" and R.rate_label(0.125) == "12.5%"
