"""An LLM judge whose agreement with people is measured: `tunelab judge ANSWERS`.

    rubrics.py    the rubric model, the shipped doc-QA and instruction rubrics, user rubric YAML
    prompts.py    the exact messages a judge receives (Korean or English), pointwise and pairwise
    parse.py      strict parsing of `SCORE: n / REASON: ...` and `WINNER: A|B|TIE / REASON: ...`
    judges.py     the judge: a local model or an OpenAI-compatible endpoint (remote needs --allow-remote)
    answers.py    the answers to grade (a run's test predictions or any JSONL) and human scores
    agreement.py  judge against people: Pearson, Spearman, Kendall, quadratic kappa, bootstrap CIs
    run.py        the workflows: grade (pointwise) and compare (pairwise, both orders)
    report.py     report.md, report.html with the judge-vs-human confusion plot
"""
