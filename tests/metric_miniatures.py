"""Metric networks built locally for the tests (no download): FID Inception weights with
random values in the published checkpoint's layout, and a tiny random CLIP model folder."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["a", "an", "red", "green", "blue", "circle", "square", "triangle", "on", "the",
         "left", "right", "shape", "photo", "of", "cat"]


def fid_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random FID Inception state dict shaped like pytorch-fid's published checkpoint
    (with its 1008-class ``fc`` layer and BatchNorm step counters)."""
    from pipeline.evaluation.inception import FIDInceptionV3

    torch.manual_seed(seed)
    model = FIDInceptionV3()
    # Calibrate BatchNorm's running statistics on random images (cumulative averages), so
    # that features vary with the input as a trained network's do; with untouched statistics
    # a random Inception maps every image to almost the same vector.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))
    model.eval()
    state = dict(model.state_dict())
    state["fc.weight"] = torch.randn(1008, 2048) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    return state


def build_fid_weights(path: Path, seed: int = 0) -> Path:
    """Write random FID Inception weights as the plugin reads them (safetensors)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in fid_state_dict(seed).items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random ``CLIPModel`` (hidden 32, 2 layers, 32x32 images) with a word-level tokenizer,
    saved with ``save_pretrained`` like a real CLIP folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                        unk_token="<unk>", bos_token="<bos>",
                                        eos_token="<eos>")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=16, bos_token_id=2, eos_token_id=3,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
