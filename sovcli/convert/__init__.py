"""Hugging Face safetensors -> GGUF conversion and llama.cpp quantization.

`converter.convert_checkpoint` writes a GGUF from a checkpoint folder, `quantize.quantize_gguf`
runs llama.cpp's own quantizer, and `pipeline.convert_checkpoint_to_gguf` chains both for
`sovcli pull` and returns the provenance record stored in the manifest. Progress goes to an
optional `progress` (`sovcli.progress.Progress`); nothing here prints.
"""

from __future__ import annotations

# Bump when the converter's output for the same input changes (tensor layout, metadata).
CONVERTER_SCHEMA_VERSION = 2  # 2: penalty_repeat, min_p, add_bos/add_eos from templates, swa base
