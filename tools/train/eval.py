#!/usr/bin/python3
"""Reference outputs of the exported model, for checking the Deno/WebGPU runtime against torch.

Loads weights/default_model/model.safetensors (BF16) by hand, widens every weight exactly to
float64 and runs the torch model entirely in float64. Writes:
  tools/train/heldout_eval_ids.json: EVAL_WINDOWS windows of WINDOW held-out token ids
    (consecutive, non-overlapping, taken from the start of the tokenized heldout.txt).
  tools/train/reference_outputs.json: perplexity over those windows (each window is run from
    position 0 and scores its tokens 1..WINDOW-1 given the prefix; loss = mean over all scored
    tokens; ppl = exp(loss)), plus greedy continuations of fixed prompts (full recompute each
    step, no KV cache; argmax with ties to the lowest id) with the prompt's last-position top-10
    logits.

Usage: run_train.sh's environment is not needed: /usr/bin/python3 tools/train/eval.py
"""

import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from bpe import Tokenizer
from model import Qwen3MoeForCausalLM
from model_config import MODEL
from safetensors_io import read_bf16

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "weights", "default_model"))
WINDOW = 256  # = the training context
EVAL_WINDOWS = 64  # 64 x 256 = 16384 held-out tokens: a few seconds on a GPU, ~1 min here
GREEDY_TOKENS = 32
CHAT_PROMPT = "<|im_start|>user\nAnd God said unto Moses,<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [
    "In the beginning God created",
    "And the LORD spake unto Moses, saying,",
    "hacker n. 1. A person who",
    "The kingdom of heaven is like",
    CHAT_PROMPT,
]


def load_model():
    weights = read_bf16(os.path.join(MODEL_DIR, "model.safetensors"), torch.float64)
    if MODEL["tie_word_embeddings"]:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    model = Qwen3MoeForCausalLM(MODEL).to(torch.float64)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"missing {missing} unexpected {unexpected}")
    return model.eval()


def heldout_windows():
    ids = np.load(os.path.join(HERE, "data", "heldout_ids.npy")).astype(np.int64)
    if len(ids) < WINDOW * EVAL_WINDOWS:
        raise ValueError("held-out split too short")
    return [ids[i * WINDOW:(i + 1) * WINDOW].tolist() for i in range(EVAL_WINDOWS)]


@torch.no_grad()
def perplexity(model, windows):
    """Mean NLL over the scored tokens, their count, and per-layer top-k expert hit counts."""
    total, count = 0.0, 0
    load = torch.zeros(MODEL["num_hidden_layers"], MODEL["num_experts"], dtype=torch.long)
    for i in range(0, len(windows), 8):
        batch = torch.tensor(windows[i:i + 8])
        logits, router = model(batch)
        for layer, r in enumerate(router):
            experts = torch.topk(r, MODEL["num_experts_per_tok"], dim=-1).indices.flatten()
            load[layer] += torch.bincount(experts, minlength=MODEL["num_experts"])
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                              batch[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += batch[:, 1:].numel()
    return total / count, count, load.tolist()


@torch.no_grad()
def greedy(model, prompt_ids):
    ids = list(prompt_ids)
    first_logits = None
    for _ in range(GREEDY_TOKENS):
        logits, _ = model(torch.tensor([ids]))
        last = logits[0, -1]
        if first_logits is None:
            first_logits = last
        ids.append(int(torch.argmax(last).item()))
    top = torch.topk(first_logits, 10)
    return ids[len(prompt_ids):], [
        {"id": int(i), "logit": float(v)} for v, i in zip(top.values, top.indices)]


def main():
    torch.set_num_threads(2)
    t0 = time.time()
    tok = Tokenizer.from_hf_json(os.path.join(MODEL_DIR, "tokenizer.json"))
    model = load_model()
    windows = heldout_windows()
    with open(os.path.join(HERE, "heldout_eval_ids.json"), "w") as fh:
        json.dump({"window": WINDOW, "windows": windows}, fh, separators=(",", ":"))
    loss, scored, load = perplexity(model, windows)
    print(f"held-out loss {loss:.5f} ppl {math.exp(loss):.3f} over {scored} tokens", flush=True)
    for layer, counts in enumerate(load):
        print(f"layer {layer} expert load {counts}", flush=True)
    continuations = []
    for prompt in PROMPTS:
        prompt_ids = tok.encode(prompt)
        out, top = greedy(model, prompt_ids)
        continuations.append({"prompt": prompt, "prompt_ids": prompt_ids, "greedy_ids": out,
                              "greedy_text": tok.decode(out), "first_step_top10": top})
        print(repr(prompt), "->", repr(tok.decode(out)), flush=True)
    ref = {
        "model_dir": "weights/default_model",
        "weights": "model.safetensors BF16, widened exactly to float64",
        "compute_precision": "float64 throughout (norms, RoPE, softmax, router included)",
        "heldout": {
            "ids_file": "tools/train/heldout_eval_ids.json",
            "windowing": f"{EVAL_WINDOWS} consecutive non-overlapping windows of {WINDOW} tokens "
                         "from the start of the held-out split; each window starts at position "
                         "0; tokens 1..255 of each window are scored given their prefix",
            "scored_tokens": scored,
            "mean_nll": loss,
            "perplexity": math.exp(loss),
            "expert_load": {"what": "per layer, how many held-out tokens picked each expert "
                                    "among their top-k", "counts": load},
        },
        "greedy": {
            "new_tokens": GREEDY_TOKENS,
            "method": "argmax of float64 logits, full recompute each step, no stop at EOS",
            "cases": continuations,
        },
    }
    with open(os.path.join(HERE, "reference_outputs.json"), "w") as fh:
        json.dump(ref, fh, indent=1)
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
