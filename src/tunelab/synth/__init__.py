"""Question/answer generation from in-house documents with a teacher LLM (`tunelab data synth`).

    tunelab data synth docs/ --config configs/synth/docqa-ko.yaml --output data/qa.jsonl

documents -> chunks -> questions per chunk -> a grounded answer per question -> unanswerable
questions paired with unrelated chunks -> filters -> JSONL rows of the document-QA template:
{"question", "context", "answer", "lang", "answerable", "source", "chunk", "teacher",
"prompt_version"}.

    documents.py  read txt, md, html, docx (stdlib) and pdf (pypdf) into normalised text
    chunking.py   paragraphs and headings -> chunks with a character budget and overlap
    prompts.py    the synth YAML config and the chat messages built from it
    teachers.py   a local causal LM, or an OpenAI-compatible endpoint (only with --allow-remote)
    cache.py      SQLite cache of teacher replies keyed by content: a rerun resumes for free
    filters.py    parse teacher replies, then length, language, duplicate and support filters
    pipeline.py   the stages above, with a progress bar and a report of counts per filter
"""
