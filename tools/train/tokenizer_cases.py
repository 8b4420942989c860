#!/usr/bin/python3
"""Encode texts with the Python BPE and print JSON cases, to cross-check other tokenizers.

Usage:
  tokenizer_cases.py heldout OUT.json   every held-out document (data/heldout.txt) -> OUT.json
  tokenizer_cases.py TEXT...            the given texts -> stdout
Each case is {"text": ..., "ids": [...]}; special-token strings are encoded as specials.
"""

import json
import os
import sys

from bpe import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "..", "weights", "default_model", "tokenizer.json")
DOC_SEPARATOR = "\n<|endoftext|>\n"


def main():
    tok = Tokenizer.from_hf_json(TOKENIZER)
    if sys.argv[1:2] == ["heldout"]:
        with open(os.path.join(HERE, "data", "heldout.txt"), encoding="utf-8") as fh:
            texts = fh.read().split(DOC_SEPARATOR)
        with open(sys.argv[2], "w", encoding="utf-8") as fh:
            json.dump([{"text": t, "ids": tok.encode(t)} for t in texts], fh, ensure_ascii=False)
        return
    cases = [{"text": t, "ids": tok.encode(t)} for t in sys.argv[1:]]
    print(json.dumps(cases, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
