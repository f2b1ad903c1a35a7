"""Sweep reports of instruction-tuning cells: the generated answers' scores, per language too."""

import csv
from types import SimpleNamespace

from tunelab.sweep.aggregate import aggregate, run_row
from tunelab.sweep.report import write_reports


def fake_run(variant: str, seed: int, folder: str):
    cell = SimpleNamespace(group="", dataset="", variant=variant, slug=variant, question="")
    return SimpleNamespace(cell=cell, seed=seed, home=SimpleNamespace(folder=folder), alias_of=None)


def sft_summary(precision_ko: float, f1: float) -> dict:
    return {"task": "sft", "trainable_params": 10, "train_seconds": 5.0, "validation": {"loss": 0.3},
            "test": {"loss": 0.5, "exact_match": 0.4, "token_f1": f1, "refusal_precision": 0.5, "refusal_recall": 0.75,
                     "by_lang": {"ko": {"token_f1": f1, "refusal_precision": precision_ko, "refusal_recall": 1.0},
                                 "en": {"token_f1": f1, "refusal_precision": 0.25, "refusal_recall": 0.5}}}}


def test_sft_cells_report_refusal_scores_per_language(tmp_path):
    rows = [run_row(fake_run("lora", 1, str(tmp_path / "a")), sft_summary(0.6, 0.40)),
            run_row(fake_run("lora", 2, str(tmp_path / "b")), sft_summary(0.8, 0.50))]
    cells = aggregate(rows)
    assert cells[0]["test_ko_refusal_precision"]["mean"] == 0.7
    paths = write_reports(rows, cells, tmp_path / "report", "docqa", [])
    md = paths["md"].read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| dataset"))
    assert "refusal precision %" in header and "ko refusal precision %" in header and "en refusal recall %" in header
    assert "test acc %" not in header  # no empty classification columns for SFT cells
    row = next(line for line in md.splitlines() if line.startswith("| – | lora"))
    cols = [c.strip() for c in row.strip("|").split("|")]
    heads = [h.strip() for h in header.strip("|").split("|")]
    assert cols[heads.index("ko refusal precision %")] == "70.00 ± 14.14"
    assert cols[heads.index("test token F1 %")] == "45.00 ± 7.07"
    with open(paths["csv"], encoding="utf-8") as fh:
        first = next(csv.DictReader(fh))
    assert float(first["test_ko_refusal_precision"]) == 0.6 and first["task"] == "sft"


def test_classification_cells_keep_their_accuracy_table(tmp_path):
    summary = {"test": {"accuracy": 0.9, "macro_f1": 0.88, "loss": 0.3}, "train_seconds": 2.0}
    rows = [run_row(fake_run("head", 1, str(tmp_path / "a")), summary)]
    md = write_reports(rows, aggregate(rows), tmp_path / "report", "cls", [])["md"].read_text(encoding="utf-8")
    assert "| dataset | cell | seeds | train acc % | val acc % | test acc % |" in md
    assert "| 90.00 |" in md and "refusal" not in md


def test_the_console_table_of_sft_cells_shows_their_scores(tmp_path):
    from tunelab.commands.sweep import print_table

    rows = [run_row(fake_run("lora", 1, str(tmp_path / "a")), sft_summary(0.6, 0.40)),
            run_row(fake_run("lora", 2, str(tmp_path / "b")), sft_summary(0.8, 0.50))]
    lines = []
    print_table(aggregate(rows), log=lines.append)
    assert lines[0].split() == ["cell", "n", "val", "loss", "test", "loss", "exact", "match", "%", "token", "F1", "%", "refusal", "precision", "%",
                                "refusal", "recall", "%", "train", "s"]
    assert lines[1].split()[:2] == ["lora", "2"] and "45.00" in lines[1] and "75.00" in lines[1] and "acc" not in lines[0]
    cls = [run_row(fake_run("head", 1, str(tmp_path / "c")), {"test": {"accuracy": 0.9, "macro_f1": 0.88, "loss": 0.3}, "train_seconds": 2.0})]
    lines.clear()
    print_table(aggregate(cls), log=lines.append)
    assert "test acc %" in lines[0] and "90.00" in lines[1] and "0.3000" in lines[1]
