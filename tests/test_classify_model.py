"""The classifier's choices on tiny random models of each supported family."""

import pytest
import torch
from tests.helpers import make_model_dir, one_thread

from tunelab.classify.model import TextClassifier, apply_trainable
from tunelab.config import LoraConfig
from tunelab.model.backbone import load_backbone

DECODERS = ["llama", "qwen2", "gpt2", "gemma3"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.mark.parametrize("arch", DECODERS + ["bert"])
def test_forward_and_padding_invariance(model_root, arch):
    """A padded batch gives the same logits as each text alone, for left and right padding."""
    torch.manual_seed(0)
    model = TextClassifier(load_backbone(make_model_dir(model_root, arch)), 3, pooling="last").eval()
    a, b = [5, 6, 7, 8, 9], [10, 11]
    alone = [model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in (a, b)]
    right = model(torch.tensor([a, b + [0, 0, 0]]), torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]))
    left = model(torch.tensor([a, [0, 0, 0] + b]), torch.tensor([[1] * 5, [0, 0, 0, 1, 1]]))
    assert right.shape == (2, 3)
    assert torch.allclose(right[1], alone[1][0], atol=1e-5)
    if arch != "bert":  # absolute positions shift under left padding for encoders
        assert torch.allclose(left[1], alone[1][0], atol=1e-4)


@pytest.mark.parametrize("arch", DECODERS)
def test_causal_mask_switch(model_root, arch):
    """With the causal mask, the first token ignores later ones; without it, it sees them."""
    torch.manual_seed(0)
    causal = TextClassifier(load_backbone(make_model_dir(model_root, arch)), 2, pooling="first", causal_mask=True).eval()
    bidir = TextClassifier(load_backbone(make_model_dir(model_root, arch)), 2, pooling="first", causal_mask=False).eval()
    bidir.head.load_state_dict(causal.head.state_dict())
    x1, x2 = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 9, 10, 11]])
    m = torch.ones(1, 4, dtype=torch.long)
    assert torch.allclose(causal(x1, m), causal(x2, m), atol=1e-6)
    assert not torch.allclose(bidir(x1, m), bidir(x2, m), atol=1e-4)


def _trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_trainable_policies(model_root):
    folder = make_model_dir(model_root, "llama")
    head = TextClassifier(load_backbone(folder), 2)
    info = apply_trainable(head, "head")
    assert _trainable_names(head) == {"head.weight"} and info["trainable_params"] == 32 * 2

    last = TextClassifier(load_backbone(folder), 2)
    apply_trainable(last, "last_blocks", last_blocks=1)
    names = _trainable_names(last)
    assert any(n.startswith("backbone.layers.1.") for n in names)
    assert not any(n.startswith("backbone.layers.0.") or "embed" in n for n in names)
    assert "backbone.norm.weight" in names and "head.weight" in names

    lora = TextClassifier(load_backbone(folder), 2)
    apply_trainable(lora, "lora", lora=LoraConfig(r=4))
    names = _trainable_names(lora)
    assert "head.weight" in names
    assert all("lora_" in n for n in names - {"head.weight"}) and len(names) > 1


def test_too_many_blocks_is_a_clear_error(model_root):
    from tunelab.errors import TunelabError

    model = TextClassifier(load_backbone(make_model_dir(model_root, "llama")), 2)
    with pytest.raises(TunelabError, match="model.last_blocks = 5 but the model has only 2 blocks"):
        apply_trainable(model, "last_blocks", last_blocks=5)
