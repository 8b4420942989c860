#!/usr/bin/python3
"""Export the latest checkpoint to weights/default_model/ in Hugging Face layout (BF16).

Writes config.json, generation_config.json and model.safetensors (tokenizer.json and
tokenizer_config.json were written there by train_tokenizer.py). The tied lm_head is omitted, as
HF does when tie_word_embeddings is true.

Usage: /usr/bin/python3 tools/train/export.py [checkpoint]   (default checkpoints/latest.pt)
"""

import json
import os
import sys

import torch

from model_config import ENDOFTEXT_ID, IM_END_ID, MODEL, hf_config
from safetensors_io import write_bf16

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "weights", "default_model"))
SIZE_LIMIT_BYTES = 20_000_000  # project limit for the demo model on disk

# Sampling defaults in Qwen3's generation_config.json style.
GENERATION = {
    "bos_token_id": ENDOFTEXT_ID,
    "eos_token_id": [ENDOFTEXT_ID, IM_END_ID],
    "pad_token_id": ENDOFTEXT_ID,
    "do_sample": True,
    "temperature": 0.7,
    "top_k": 20,
    "top_p": 0.8,
    "transformers_version": "4.51.0",
}


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "checkpoints", "latest.pt")
    ckpt = torch.load(path, map_location="cpu")
    if ckpt["config"] != MODEL:
        raise ValueError("checkpoint config differs from model_config.MODEL")
    state = dict(ckpt["model"])
    if MODEL["tie_word_embeddings"]:
        state.pop("lm_head.weight")
    write_bf16(os.path.join(OUT_DIR, "model.safetensors"), state)
    with open(os.path.join(OUT_DIR, "config.json"), "w") as fh:
        json.dump(hf_config(), fh, indent=2)
    with open(os.path.join(OUT_DIR, "generation_config.json"), "w") as fh:
        json.dump(GENERATION, fh, indent=2)
    size = os.path.getsize(os.path.join(OUT_DIR, "model.safetensors"))
    print(f"exported step {ckpt['step']}: {len(state)} tensors, "
          f"{sum(t.numel() for t in state.values())} parameters, {size} bytes")
    if size > SIZE_LIMIT_BYTES:
        raise SystemExit(f"model.safetensors is {size} bytes, over {SIZE_LIMIT_BYTES}")


if __name__ == "__main__":
    main()
