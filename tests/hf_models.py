"""Tiny random Hugging Face models (ViT, CLIP with a tokenizer, DINOv2), built and saved with
`save_pretrained` into a folder, so the whole loading path runs offline. Random weights: good for
testing the plumbing (shapes, export parity, search of an image by itself), not for quality."""

from __future__ import annotations

import json
from pathlib import Path


def _byte_alphabet() -> list[str]:
    """The byte-level BPE alphabet (GPT-2 / CLIP): each byte as a printable character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _byte_vocab() -> dict[str, int]:
    """A character-level vocabulary in CLIP's byte alphabet (no merges)."""
    chars = _byte_alphabet()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def build_tiny_models(root: Path) -> dict[str, Path]:
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTokenizer,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    layers = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    vision = {**layers, "image_size": 32, "patch_size": 8}
    paths = {name: root / name for name in ("vit", "clip", "dinov2")}

    ViTModel(ViTConfig(**vision), add_pooling_layer=False).save_pretrained(paths["vit"])
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(paths["vit"])

    vocab = _byte_vocab()
    paths["clip"].mkdir(parents=True)
    (paths["clip"] / "vocab.json").write_text(json.dumps(vocab))
    (paths["clip"] / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(paths["clip"] / "vocab.json"), str(paths["clip"] / "merges.txt"))
    text = {
        **layers,
        "vocab_size": len(vocab),
        "max_position_embeddings": 32,
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).save_pretrained(
        paths["clip"]
    )
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        paths["clip"]
    )
    tokenizer.save_pretrained(paths["clip"])

    Dinov2Model(Dinov2Config(**vision)).save_pretrained(paths["dinov2"])
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        paths["dinov2"]
    )
    return paths
