"""Model families: which kind of open_clip model a name is, without building it.

A family decides what differs between models beyond their sizes: the tokenizer (CLIP's BPE,
SigLIP's SentencePiece, a Hugging Face tokenizer for multilingual text towers), the image
tower's library (open_clip's ViT, timm), and whether int8 image vectors are close enough to
fp32 to be the default (`retriever.encoding.backends`).

    clip         OpenAI, LAION, DataComp CLIP; retriever-tiny
    siglip       SigLIP (sigmoid loss, SentencePiece tokenizer)
    siglip2      SigLIP 2 (multilingual Gemma tokenizer)
    multilingual xlm-roberta and NLLB text towers (Hugging Face transformers)
    mobileclip   MobileCLIP (timm image towers)
    mobileclip2  MobileCLIP 2
    eva          EVA-CLIP (timm EVA image towers)
"""

from __future__ import annotations

FAMILIES = ("clip", "siglip", "siglip2", "multilingual", "mobileclip", "mobileclip2", "eva")


def family_of(name: str) -> str:
    """The family of an architecture name (ViT-B-16-SigLIP2, xlm-roberta-base-ViT-B-32,
    MobileCLIP2-S0, EVA02-B-16, ViT-B-32, a config file's stem). By name, as open_clip names
    its configs; a name that says nothing is "clip"."""
    low = name.lower().rsplit("/", 1)[-1]
    if "siglip2" in low:
        return "siglip2"
    if "siglip" in low:
        return "siglip"
    if "xlm-roberta" in low or "nllb" in low or "multilingual" in low or "mt5" in low:
        return "multilingual"
    if "mobileclip2" in low:
        return "mobileclip2"
    if "mobileclip" in low:
        return "mobileclip"
    if "eva" in low:
        return "eva"
    return "clip"
