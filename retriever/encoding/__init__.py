"""Encoding: images and texts into one vector space.

specs (naming a model, no torch) -> architectures (configs: which, how large, registered) ->
checkpoints (writing, reading and checking weights files; fingerprints) -> models (load_model) ->
encoders (the interface) implemented by clip_encoder (torch) and ort_encoder (ONNX Runtime,
from onnx_export's export); backends chooses one. tokenizer and pixels prepare inputs without
torch.
"""
