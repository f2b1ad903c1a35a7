"""Instruction fine-tuning (SFT) building blocks: row -> messages -> (ids, labels) -> batch -> loss.

    from tunelab.sft import row_to_messages, build_template, tokenize_messages
    from tunelab.sft.collate import collate
    from tunelab.sft.objective import sft_loss
    msgs = row_to_messages(row, source="train.jsonl")                     # formats.py
    template = build_template("docqa-ko")                                 # templates.py
    ex = tokenize_messages(msgs, template, tok, max_length=1024)          # tokenize.py
    batch = collate([ex, ...], pad_id=tok.pad_token_id)                   # collate.py
    loss_sum, n_targets = sft_loss(model, batch)                          # objective.py
    texts = generate(model, tok, template, [row_without_answer, ...])    # generate.py
    scores = score_predictions(texts, refs, refusal=REFUSAL_KO)           # metrics.py

The torch pieces are imported from their modules (`tunelab.sft.collate.collate`,
`tunelab.sft.objective.sft_loss`, `tunelab.sft.generate.generate`): re-exporting a function named
like its module would be shadowed by the submodule once imported. This package imports no torch.
"""

from tunelab.data.refusals import REFUSAL_EN, REFUSAL_KO
from tunelab.sft.formats import FORMATS, detect_format, row_to_messages, split_prompt
from tunelab.sft.metrics import examples_table, score_predictions
from tunelab.sft.templates import (
    TEMPLATE_FILE,
    build_template,
    load_template,
    save_template,
    template_from_dict,
)
from tunelab.sft.tokenize import IGNORE, TooLongError, encode_prompt, tokenize_messages

__all__ = [
    "FORMATS", "IGNORE", "REFUSAL_EN", "REFUSAL_KO", "TEMPLATE_FILE", "TooLongError",
    "build_template", "detect_format", "encode_prompt", "examples_table",
    "load_template",
    "row_to_messages", "save_template", "score_predictions", "split_prompt",
    "template_from_dict", "tokenize_messages",
]
