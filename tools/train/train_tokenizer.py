#!/usr/bin/python3
"""Train the byte-level BPE tokenizer and write tokenizer.json + tokenizer_config.json.

Usage: /usr/bin/python3 tools/train/train_tokenizer.py   (after prepare_corpus.py)
Writes weights/default_model/tokenizer.json and tokenizer_config.json.
"""

import json
import os
import time

from bpe import SPECIAL_TOKENS, Tokenizer, train_bpe

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")
OUT_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "weights", "default_model"))
# 4096 = 256 byte tokens + 3837 merges + 3 special tokens: small enough for a ~10 M parameter
# model's embedding table (4096 x 256), large enough to give ~4 bytes per token on this corpus.
VOCAB_SIZE = 4096
DOC_SEPARATOR = "\n<|endoftext|>\n"

# Qwen3's chat template reduced to plain messages (no tools, no thinking blocks).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def main():
    with open(os.path.join(DATA_DIR, "train.txt"), encoding="utf-8") as fh:
        docs = fh.read().split(DOC_SEPARATOR)
    t0 = time.time()
    vocab, merges = train_bpe("\n".join(docs), VOCAB_SIZE)
    tok = Tokenizer(vocab, merges)
    assert len(tok.vocab) == VOCAB_SIZE, len(tok.vocab)
    print(f"trained {len(merges)} merges, vocab {len(tok.vocab)} in {time.time() - t0:.1f}s")
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "tokenizer.json"), "w", encoding="utf-8") as fh:
        json.dump(tok.to_hf_json(), fh, ensure_ascii=False, indent=1)
    added = {
        str(tok.vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True} for t in SPECIAL_TOKENS
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    with open(os.path.join(OUT_DIR, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(config, fh, ensure_ascii=False, indent=2)
    with open(os.path.join(DATA_DIR, "heldout.txt"), encoding="utf-8") as fh:
        sample = fh.read()[:20000]
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample
    print(f"held-out sample: {len(sample.encode())} bytes -> {len(ids)} tokens "
          f"({len(sample.encode()) / len(ids):.2f} bytes/token)")


if __name__ == "__main__":
    main()
