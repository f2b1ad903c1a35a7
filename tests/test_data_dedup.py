"""Exact and near duplicates: planted near copies are found (Korean and English), others are not."""

import random

import numpy as np
import pytest

from tunelab.data import dedup


def _sentence(rng, vocab, n):
    return " ".join(rng.choice(vocab) for _ in range(n))


def _edit(rng, text, n_edits):
    """A near copy: a few words replaced, dropped or a punctuation/case change."""
    words = text.split()
    for _ in range(n_edits):
        i = rng.randrange(len(words))
        op = rng.choice(["drop", "swap", "punct"])
        if op == "drop" and len(words) > 5:
            words.pop(i)
        elif op == "swap":
            words[i] = words[i][::-1]
        else:
            words[i] = words[i] + rng.choice("!?.,")
    return " ".join(words)


@pytest.fixture(scope="module")
def planted():
    rng = random.Random(5)
    ko = ["".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    en = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    texts, source = [], []
    for i in range(3000):
        texts.append(_sentence(rng, ko if i % 2 else en, rng.randint(12, 30)))
        source.append(i)
    for j in range(600):  # 600 planted near copies of random originals
        i = rng.randrange(3000)
        texts.append(_edit(rng, texts[i], 1))
        source.append(i)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[k] for k in order], np.array([source[k] for k in order])


def test_planted_near_duplicates_recall_and_precision(planted):
    texts, source = planted
    nd = dedup.near_duplicates(texts, threshold=0.7)
    # recall: a planted copy lands in the cluster of its original
    first_of_source = {}
    for k, s in enumerate(source):
        first_of_source.setdefault(s, k)
    copies = [k for k, s in enumerate(source) if first_of_source[s] != k]
    found = sum(nd.groups[k] == nd.groups[first_of_source[source[k]]] for k in copies)
    assert found / len(copies) >= 0.95
    # precision: rows from different originals are not merged
    merged_wrongly = sum(len(set(source[nd.groups == g])) > 1 for g in np.unique(nd.groups))
    assert merged_wrongly == 0


def test_korean_spacing_and_punctuation_variants_are_near_duplicates():
    texts = [
        "환불 요청은 구매 후 7일 이내에 고객센터로 연락해 주시면 처리해 드립니다.",
        "환불요청은 구매후 7일 이내에 고객센터로 연락해주시면 처리해 드립니다!",  # spacing differs
        "배송 조회는 마이페이지의 주문 내역에서 확인하실 수 있습니다.",
    ]
    assert dedup.near_duplicates(texts, threshold=0.8).groups.tolist() == [0, 0, 2]


def test_different_meaning_not_merged():
    texts = ["I would like to cancel my order please", "I would like to cancel my subscription please"]
    assert dedup.near_duplicates(texts, threshold=0.7).groups.tolist() == [0, 1]


def test_exact_groups_normalised():
    assert dedup.exact_groups(["Hello  World", "hello world", "hello, world"]).tolist() == [0, 0, 2]


def test_estimate_tracks_true_jaccard():
    rng = random.Random(0)
    vocab = ["".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(500)]
    a = _sentence(rng, vocab, 60)
    b = _edit(rng, a, 6)

    def shingles(t):
        s = dedup.shingle_text(t)
        return {s[i : i + 5] for i in range(len(s) - 4)}

    true = len(shingles(a) & shingles(b)) / len(shingles(a) | shingles(b))
    sig = dedup.minhash_signatures([a, b], num_perm=256)
    assert abs((sig[0] == sig[1]).mean() - true) < 0.1


def test_empty_and_short_texts():
    nd = dedup.near_duplicates(["", "!!", "ok", "ok", "hi"], threshold=0.9)
    assert nd.groups.tolist() == [0, 1, 2, 2, 4]  # rows without letters are never matched


def test_big_bucket_is_linear():
    # 5,000 identical rows: a star and a chain, not 12.5 million pairs
    nd = dedup.near_duplicates(["같은 문장입니다 정말로"] * 5000, threshold=0.8)
    assert len(nd.pairs) < 3 * 5000
    assert (nd.groups == 0).all()


def test_bad_threshold():
    with pytest.raises(ValueError):
        dedup.near_duplicates(["a"], threshold=0)
