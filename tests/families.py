"""Tiny models of each open_clip family, written offline by the test that uses them.

    tiny_family(name, folder) -> ModelSpec(model=<config JSON path>, pretrained="none")

`name` is one of TINY_FAMILIES' keys. What is written under `folder` (nothing is downloaded):

    tiny-<family>.json          an open_clip model config; its stem holds the family's token, so
                                `retriever.encoding.families.family_of` names the family
    tiny-<family>-tokenizer/    a Hugging Face tokenizer folder (tokenizer.json +
                                tokenizer_config.json) trained here with `tokenizers` on
                                CORPUS, the config's text_cfg.hf_tokenizer_name
    tiny-<family>-text/         (HF text towers) a transformers config.json: hf_model_name

The families differ where the real ones do, shrunk: SigLIP has a SentencePiece-like unigram
tokenizer ending each text with </s>, a bidirectional text transformer pooled at the last
position (context 16) and a logit bias; SigLIP 2 a byte-fallback BPE with <bos> and <eos>
(Gemma's shape) and tanh GELU; multilingual an XLM-RoBERTa text tower (transformers), padding
id 1, mean pooling; nllb (family "multilingual" too) an M2M-100 encoder read at its first
position, a language code before each text. All have a 32 px open_clip ViT image tower and
32-d vectors. The image-tower families (MobileCLIP, EVA) are appended by their own builders.

CORPUS holds the scenes' captions of `retriever.training.synthetic` in English and in French
(`french_captions`), so the multilingual tokenizer knows both languages' words.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retriever.encoding.specs import ModelSpec
from retriever.training import synthetic

# English -> French words of synthetic's scenes (colours, shapes and places)
FRENCH = {
    "red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet",
    "black": "noir", "circle": "cercle", "square": "carré", "triangle": "triangle",
    "left": "gauche", "right": "droite", "top": "haut", "bottom": "bas",
}


def french_captions(scene: synthetic.Scene) -> tuple[str, str]:
    """`scene` described in French, two wordings as `Scene.captions` has."""
    colour, shape, place = (FRENCH[w] for w in (scene.colour, scene.shape, scene.place))
    return (f"une photo d'un {shape} {colour} en {place}", f"{shape} {colour}, côté {place}")


CORPUS = [caption for scene in synthetic.ALL_SCENES
          for caption in (*scene.captions(), *french_captions(scene))] + [
    "a photo of a red thing", "une photo rouge", "the quick brown fox jumps over the lazy dog"]
VOCAB = 400  # tokens each tiny tokenizer learns (the corpus' words fit, with their pieces)
DIM = 32


def _vision() -> dict[str, Any]:
    return {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}


def _save_tokenizer(tokenizer: Any, folder: Path, **special: str) -> Path:
    """`tokenizer` (a trained `tokenizers.Tokenizer`) as a transformers tokenizer folder."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)
    fast.save_pretrained(str(folder))
    return folder


def unigram_tokenizer(folder: Path, specials: list[str], template: str) -> Path:
    """A SentencePiece-like unigram tokenizer (Metaspace words, `specials` first in id order);
    `template`: what frames a text, e.g. "$A </s>" (T5, SigLIP) or "<s> $A </s>" (XLM-R)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()  # type: ignore[assignment]
    tok.pre_tokenizer = pre_tokenizers.Metaspace()  # type: ignore[assignment]
    tok.decoder = decoders.Metaspace()  # type: ignore[assignment]
    tok.train_from_iterator(CORPUS, UnigramTrainer(vocab_size=VOCAB, special_tokens=specials,
                                                   unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(  # type: ignore[assignment]
        single=template, special_tokens=[(s, tok.token_to_id(s)) for s in specials
                                         if s in template])
    names = {"<pad>": "pad_token", "</s>": "eos_token", "<unk>": "unk_token", "<s>": "bos_token"}
    return _save_tokenizer(tok, folder, **{names[s]: s for s in specials if s in names})


def bpe_tokenizer(folder: Path) -> Path:
    """Gemma's shape, small: byte-fallback BPE over Metaspace words, "<bos> $A <eos>"."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()  # type: ignore[assignment]
    tok.train_from_iterator(CORPUS, BpeTrainer(vocab_size=VOCAB, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(  # type: ignore[assignment]
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)])
    return _save_tokenizer(tok, folder, pad_token="<pad>", eos_token="<eos>",
                           bos_token="<bos>", unk_token="<unk>")


def _siglip_text(tokenizer: Path, context: int, **extra: Any) -> dict[str, Any]:
    return {"context_length": context, "vocab_size": VOCAB, "hf_tokenizer_name": str(tokenizer),
            "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 64, "heads": 2,
            "layers": 2, "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6}, **extra}


def _siglip(folder: Path) -> dict[str, Any]:
    tokenizer = unigram_tokenizer(folder / "tiny-siglip-tokenizer",
                                  ["<pad>", "</s>", "<unk>"], "$A </s>")
    return {"embed_dim": DIM, "init_logit_bias": -10, "custom_text": True,
            "vision_cfg": _vision(), "text_cfg": _siglip_text(tokenizer, 16)}


def _siglip2(folder: Path) -> dict[str, Any]:
    tokenizer = bpe_tokenizer(folder / "tiny-siglip2-tokenizer")
    return {"embed_dim": DIM, "init_logit_bias": -10, "custom_text": True,
            "vision_cfg": _vision(),
            "text_cfg": _siglip_text(tokenizer, 16, act_kwargs={"approximate": "tanh"})}


def _xlm_roberta(folder: Path) -> dict[str, Any]:
    from transformers import XLMRobertaConfig

    tokenizer = unigram_tokenizer(folder / "tiny-xlm-roberta-tokenizer",
                                  ["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>")
    text = folder / "tiny-xlm-roberta-text"
    # positions start after the padding id (RoBERTa's), hence context + 2
    XLMRobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=34,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2).save_pretrained(str(text))
    return {"embed_dim": DIM, "vision_cfg": _vision(),
            "text_cfg": {"context_length": 32, "hf_model_name": str(text),
                         "hf_tokenizer_name": str(tokenizer), "hf_pooler_type": "mean_pooler",
                         "hf_proj_type": "linear", "hf_model_pretrained": False}}


def _nllb(folder: Path) -> dict[str, Any]:
    """NLLB-CLIP's shape: an M2M-100 encoder (transformers) read at its first position, the
    source language's code before each text ("eng_Latn $A </s>")."""
    from transformers import M2M100Config

    tokenizer = unigram_tokenizer(folder / "tiny-nllb-tokenizer",
                                  ["<s>", "<pad>", "</s>", "<unk>", "eng_Latn"],
                                  "eng_Latn $A </s>")
    text = folder / "tiny-nllb-text"
    M2M100Config(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=1,
                 encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                 decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=1,
                 bos_token_id=0, eos_token_id=2).save_pretrained(str(text))
    return {"embed_dim": DIM, "vision_cfg": _vision(),
            "text_cfg": {"context_length": 32, "hf_model_name": str(text),
                         "hf_tokenizer_name": str(tokenizer), "hf_pooler_type": "cls_pooler",
                         "hf_proj_type": "linear", "hf_model_pretrained": False}}


# family -> (config file stem, builder of the config that writes its tokenizer/text folders)
TINY_FAMILIES: dict[str, tuple[str, Callable[[Path], dict[str, Any]]]] = {
    "siglip": ("tiny-siglip", _siglip),
    "siglip2": ("tiny-siglip2", _siglip2),
    "multilingual": ("tiny-xlm-roberta", _xlm_roberta),
    "nllb": ("tiny-nllb", _nllb),  # family_of: "multilingual", as NLLB-CLIP
}


def tiny_family(name: str, folder: Path) -> ModelSpec:
    """Write family `name`'s tiny model under `folder` (once; the files are kept) and return
    the spec to pass as --model/--pretrained."""
    stem, build = TINY_FAMILIES[name]
    config = folder / f"{stem}.json"
    if not config.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(build(folder), indent=1))
    return ModelSpec(str(config), "none")


# --- image-tower families (helper "families-image"): MobileCLIP, MobileCLIP 2, EVA, and a CLIP
# at a size other than 224. Each config is written in open_clip_config.json's shape, so its
# preprocess_cfg (mean/std, interpolation, resize mode) is the model's
# (`architectures.file_preprocess`), as a pretrained tag's would be. The image towers are
# timm's smallest of each kind, random (timm_model_pretrained false): FastViT-T8 for MobileCLIP
# (S1/S2 are FastViT MCi1/MCi2), MCi0 itself for MobileCLIP 2 (MobileCLIP2-S0's tower, 11 M
# parameters), EVA-02 Tiny (RoPE, 224 px) for EVA. Text towers: CLIP's BPE, 2 layers of 64;
# MobileCLIP's is bidirectional (no causal mask), as MobileCLIP-S1/S2's and MobileCLIP2-S0's.

_CLIP_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
MOBILECLIP_PREPROCESS = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                         "interpolation": "bilinear", "resize_mode": "shortest"}  # open_clip's
OPENAI_PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073],
                     "std": [0.26862954, 0.26130258, 0.27577711]}


def _timm_tower(name: str, size: int, pool: str) -> dict[str, Any]:
    return {"timm_model_name": name, "timm_model_pretrained": False, "timm_pool": pool,
            "timm_proj": None, "timm_drop": 0.0, "timm_drop_path": 0.0, "image_size": size}


def _mobileclip(folder: Path) -> dict[str, Any]:
    return {"model_cfg": {"embed_dim": DIM, "custom_text": True,
                          "vision_cfg": _timm_tower("fastvit_t8", 256, "avg"),
                          "text_cfg": {**_CLIP_TEXT, "no_causal_mask": True}},
            "preprocess_cfg": MOBILECLIP_PREPROCESS}


def _mobileclip2(folder: Path) -> dict[str, Any]:
    return {"model_cfg": {"embed_dim": DIM, "custom_text": True,
                          "vision_cfg": _timm_tower("fastvit_mci0", 256, "avg"),
                          "text_cfg": {**_CLIP_TEXT, "no_causal_mask": True}},
            "preprocess_cfg": {**OPENAI_PREPROCESS, "interpolation": "bilinear",
                               "resize_mode": "shortest"}}


def _eva(folder: Path) -> dict[str, Any]:
    return {"model_cfg": {"embed_dim": DIM, "custom_text": True,
                          "vision_cfg": _timm_tower("eva02_tiny_patch14_224", 224, "token"),
                          "text_cfg": dict(_CLIP_TEXT)},
            "preprocess_cfg": {**OPENAI_PREPROCESS, "interpolation": "bicubic",
                               "resize_mode": "shortest"}}


def _clip_48px(folder: Path) -> dict[str, Any]:
    """open_clip's own ViT at 48 px, squashed (not cropped), bilinear, SigLIP's 0.5 mean/std."""
    return {"model_cfg": {"embed_dim": DIM, "text_cfg": dict(_CLIP_TEXT),
                          "vision_cfg": {**_vision(), "image_size": 48}},
            "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                               "interpolation": "bilinear", "resize_mode": "squash"}}


TINY_FAMILIES.update({
    "clip": ("tiny-clip-48px", _clip_48px),
    "mobileclip": ("tiny-mobileclip", _mobileclip),
    "mobileclip2": ("tiny-mobileclip2", _mobileclip2),
    "eva": ("tiny-eva02", _eva),
})
