"""From paths to a finished judge folder: what `tunelab judge` does, as a function tests import.

    out_dir, summary = judge_files("runs/docqa", rubric="docqa", judge="asset:qwen2.5-coder-0.5b-instruct",
                                   human="graded.csv", human_column="human_score")
    out_dir, summary = judge_files("base.jsonl", against="tuned.jsonl", rubric="docqa")

The output folder defaults to RUN/judge-RUBRIC for a run folder, ANSWERS.judge-RUBRIC/ beside an
answers file, and A-vs-B.judge-RUBRIC/ beside the first file when comparing; it holds
scores.jsonl (or pairs.jsonl), summary.json, rubric.json, report.md, report.html, confusion.png
(with human scores) and judge-cache.sqlite. Everything is checked before the judge is loaded.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import read_yaml
from tunelab.data.io_atomic import write_json_atomic
from tunelab.data.outputs import check_output
from tunelab.data.readers import read_rows
from tunelab.data.refusals import REFUSAL_EN, REFUSAL_KO
from tunelab.errors import TunelabError
from tunelab.judge.answers import RUN_PREDICTIONS, Answer, answers_path, check_pairs, read_answers, read_human
from tunelab.judge.judges import build_judge
from tunelab.judge.report import write_report
from tunelab.judge.rubrics import load_rubric
from tunelab.judge.run import compare, grade


def default_rubric(items: list[Answer], source: Path) -> str:
    """docqa when the answers are about documents (a run trained with a docqa template, a context,
    or a refusal among the answers), else instruct."""
    config = source.parent / "config.yaml"
    if source.name == RUN_PREDICTIONS and config.is_file():
        template = ((read_yaml(config).get("sft") or {}).get("template") or "")
        return "docqa" if str(template).startswith("docqa") else "instruct"
    refusals = {REFUSAL_EN, REFUSAL_KO}
    docs = any(it.context or (it.reference or "").strip() in refusals or it.answer.strip() in refusals for it in items)
    return "docqa" if docs else "instruct"


def default_output(answers: str | Path, rubric: str, against: str | Path | None = None) -> Path:
    src = Path(answers)
    name = Path(rubric).stem
    if against is not None:
        other = Path(against)
        a, b = (src.name if src.is_dir() else src.stem), (other.name if other.is_dir() else other.stem)
        return src.parent / f"{a}-vs-{b}.judge-{name}"
    return src / f"judge-{name}" if src.is_dir() else src.with_name(f"{src.stem}.judge-{name}")


def judge_files(answers: str | Path, *, against: str | Path | None = None, rubric: str | None = None,
                judge: str | None = None, endpoint: str | None = None, allow_remote: bool = False,
                human: str | Path | None = None, human_column: str = "human_score", output: str | Path | None = None,
                lang: str = "auto", limit: int | None = None, repeats: int = 1, temperature: float = 0.0, seed: int = 0,
                batch_size: int = 8, concurrency: int = 4, max_new_tokens: int = 96, progress: bool = True,
                log=print) -> tuple[Path, dict]:
    """Grade `answers` (or compare it with `against`); returns the output folder and the summary."""
    if repeats > 1 and temperature == 0:
        raise TunelabError("--repeats measures self-consistency of a sampled judge: give --temperature > 0 too (e.g. 0.7)")
    if against is not None and (human is not None or repeats > 1):
        raise TunelabError("--human and --repeats go with pointwise grading, not with --against")
    everything, source = read_answers(answers)
    items, other = everything, (read_answers(against)[0] if against is not None else None)
    if limit:
        items, other = items[:limit], other[:limit] if other else None
    if other is not None:
        check_pairs(items, other)
    rubric_spec = rubric or default_rubric(items, source)
    rub = load_rubric(rubric_spec)
    if rubric is None:
        log(f"rubric: {rub.name} (chosen from the answers; set --rubric to change)")
    if other is not None and not rub.pairwise:
        raise TunelabError(f"rubric {rub.name} is marked pairwise: false")
    scores = None
    if human is not None:
        if not Path(human).exists():
            raise TunelabError(f"--human {human}: no such file (give a file with a '{human_column}' column, or a FILE.review.sqlite)")
        scores = read_human(human, everything, source, human_column, rub.scale)[: len(items)]
    out_dir = Path(output) if output else default_output(answers, rubric_spec, against)
    inputs = [answers_path(answers), *([answers_path(against)] if against else []), *([human] if human else [])]
    check_output(out_dir, inputs=inputs, flag="--output", folder=True)
    the_judge = build_judge(judge, endpoint=endpoint, allow_remote=allow_remote, temperature=temperature, seed=seed,
                            max_new_tokens=max_new_tokens, batch_size=batch_size, concurrency=concurrency)
    write_json_atomic(out_dir / "rubric.json", rub.model_dump())
    if other is None:
        summary = grade(items, rub, the_judge, out_dir, lang=lang, human=scores, human_source=str(human) if human else None,
                        repeats=repeats, progress=progress, log=log)
        rows = read_rows(out_dir / "scores.jsonl")
    else:
        names = (_side(answers), _side(against))
        summary = compare(items, other, rub, the_judge, out_dir, names=names, lang=lang, progress=progress, log=log)
        rows = read_rows(out_dir / "pairs.jsonl")
    write_report(summary, rows, out_dir)
    return out_dir, summary


def _side(path: str | Path) -> str:
    p = Path(path)
    return p.name if p.is_dir() else p.stem
