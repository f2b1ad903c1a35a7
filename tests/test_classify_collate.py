"""Classification encoding: long texts are truncated the way transformers users truncate them."""

from __future__ import annotations

import pytest

from tunelab.classify.collate import encode_texts


@pytest.fixture
def bert_style_tokenizer():
    """A word-level tokenizer that wraps every text in [CLS] ... [SEP], as BERT and MPNet do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate("a b c d e f g h".split())}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", model_max_length=8)


def test_long_texts_keep_their_closing_special_token_and_are_counted(bert_style_tokenizer):
    texts = ["a b c d e f g h a b c", "a b"]
    enc = encode_texts(bert_style_tokenizer, texts, [0, 1], max_length=6)
    assert enc.truncated == 1
    assert enc.ids[0] == [2, 4, 5, 6, 7, 3]  # [CLS] a b c d [SEP]: the text is cut, not the [SEP]
    assert enc.ids[1] == [2, 4, 5, 3]
    expected = bert_style_tokenizer(texts, truncation=True, max_length=6)["input_ids"]
    assert enc.ids == expected  # what AutoModelForSequenceClassification users feed the export


def test_counting_long_texts_does_not_warn_about_the_model_maximum(bert_style_tokenizer, capfd, caplog):
    # 11 words > model_max_length 8: transformers would print "Token indices sequence length is
    # longer than the specified maximum" in every run on long documents, although tunelab truncates.
    encode_texts(bert_style_tokenizer, ["a b c d e f g h a b c"], [0], max_length=6)
    printed = capfd.readouterr().err + caplog.text
    assert "longer than the specified maximum" not in printed
