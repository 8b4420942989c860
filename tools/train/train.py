#!/usr/bin/python3
"""Train the demo Qwen3-MoE on the prepared corpus (CPU, torch 1.13). Use run_train.sh.

The learning-rate schedule is wall-clock based (the 2 CPU cores are shared, so steps/s varies):
linear warmup over WARMUP_STEPS, then cosine from LR_PEAK to LR_PEAK * LR_FLOOR_FRAC as the
elapsed fraction of --minutes goes from 0 to 1; training stops when the time is up (or at
--max-steps). A checkpoint is written every CKPT_EVERY steps and at the end.

Usage: train.py --minutes 75 [--max-steps N] [--aux-coef C]
       [--resume checkpoints/latest.pt --schedule-start FRAC]
--resume continues from a checkpoint's weights (and optimizer state when saved); the cosine then
runs from FRAC (the fraction of the schedule already done) to 1 over --minutes, after a fresh
warmup of WARMUP_STEPS when no optimizer state is available.
"""

import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from bpe import Tokenizer
from model import Qwen3MoeForCausalLM, load_balancing_loss
from model_config import ENDOFTEXT_ID, MODEL, TRAINED_CONTEXT, hf_config

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")
CKPT_DIR = os.path.join(HERE, "checkpoints")
TOKENIZER = os.path.join(HERE, "..", "..", "weights", "default_model", "tokenizer.json")
DOC_SEPARATOR = "\n<|endoftext|>\n"

SEED = 1234
THREADS = 2  # the machine has 2 cores
BATCH = 16  # 16 x 256 = 4096 tokens per step
LR_PEAK = 2e-3  # small model, short run: a high peak LR converges fastest
LR_FLOOR_FRAC = 0.1
WARMUP_STEPS = 50
WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.95)
GRAD_CLIP = 1.0
INIT_STD = 0.02
AUX_COEF = hf_config()["router_aux_loss_coef"]
EVAL_EVERY = 50
EVAL_WINDOWS = 16  # held-out windows for the periodic eval (fixed, first ones)
CKPT_EVERY = 50
# Share of training documents also emitted in chat form (user: first line, assistant: the next
# CHAT_LINES lines), so the model learns the <|im_start|>/<|im_end|> template.
CHAT_FRACTION = 0.1
CHAT_LINES = 3


def chat_form(doc):
    lines = doc.split("\n")
    if len(lines) < 2:
        return None
    return ("<|im_start|>user\n" + lines[0] + "<|im_end|>\n<|im_start|>assistant\n" +
            "\n".join(lines[1:1 + CHAT_LINES]) + "<|im_end|>\n")


def token_stream(name, tok, chat):
    """Token ids of data/<name>.txt (docs joined by <|endoftext|>), cached as .npy."""
    cache = os.path.join(DATA_DIR, f"{name}_ids.npy")
    if os.path.exists(cache):
        return np.load(cache)
    with open(os.path.join(DATA_DIR, f"{name}.txt"), encoding="utf-8") as fh:
        docs = fh.read().split(DOC_SEPARATOR)
    rng = random.Random(SEED)
    ids = []
    for doc in docs:
        ids.extend(tok.encode(doc, allow_special=False))
        ids.append(ENDOFTEXT_ID)
        if chat and rng.random() < CHAT_FRACTION and chat_form(doc):
            ids.extend(tok.encode(chat_form(doc)))
            ids.append(ENDOFTEXT_ID)
    arr = np.array(ids, dtype=np.int16)
    np.save(cache, arr)
    return arr


def lr_at(frac, warm_step, warmup):
    """Cosine over the schedule fraction, times a linear ramp over the first warmup steps."""
    ramp = min(1.0, (warm_step + 1) / warmup) if warmup else 1.0
    cos = 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return ramp * LR_PEAK * (LR_FLOOR_FRAC + (1 - LR_FLOOR_FRAC) * cos)


def loss_on(model, ids):
    logits, router = model(ids[:, :-1])
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    aux = load_balancing_loss(router, MODEL["num_experts"], MODEL["num_experts_per_tok"])
    return ce, aux, router


def save(model, opt, step, extra):
    os.makedirs(CKPT_DIR, exist_ok=True)
    tmp = os.path.join(CKPT_DIR, "latest.pt.tmp")
    torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "config": MODEL, **extra}, tmp)
    os.replace(tmp, os.path.join(CKPT_DIR, "latest.pt"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--max-steps", type=int, default=1 << 30)
    ap.add_argument("--aux-coef", type=float, default=AUX_COEF)
    ap.add_argument("--resume", default=None)
    ap.add_argument("--schedule-start", type=float, default=0.0)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    tok = Tokenizer.from_hf_json(TOKENIZER)
    train_ids = torch.from_numpy(token_stream("train", tok, chat=True).astype(np.int64))
    held_ids = torch.from_numpy(token_stream("heldout", tok, chat=False).astype(np.int64))
    print(f"train tokens {len(train_ids)} heldout tokens {len(held_ids)}", flush=True)
    win = TRAINED_CONTEXT + 1
    held_batch = torch.stack([held_ids[i * win:(i + 1) * win] for i in range(EVAL_WINDOWS)])

    model = Qwen3MoeForCausalLM(MODEL)
    model.init_weights(INIT_STD)
    ckpt = torch.load(args.resume, map_location="cpu") if args.resume else None
    if ckpt:
        model.load_state_dict(ckpt["model"])
    print(f"parameters {sum(p.numel() for p in model.parameters())}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR_PEAK, betas=BETAS)
    warmup = WARMUP_STEPS
    step, ema, held = 0, None, float("nan")
    if ckpt:
        step, ema = ckpt["step"], ckpt.get("train_loss_ema")
        if "optimizer" in ckpt:
            opt.load_state_dict(ckpt["optimizer"])
            warmup = 0
        print(f"resumed from {args.resume} at step {step}", flush=True)
    gen = torch.Generator().manual_seed(SEED + step)
    t_start, budget = time.time(), args.minutes * 60
    first_step, s0 = step, args.schedule_start
    while step < args.max_steps:
        elapsed = (time.time() - t_start) / budget
        if elapsed >= 1.0:
            break
        frac = s0 + (1.0 - s0) * elapsed
        lr = lr_at(frac, step - first_step, warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train_ids) - win, (BATCH,), generator=gen)
        batch = torch.stack([train_ids[s:s + win] for s in starts])
        ce, aux, router = loss_on(model, batch)
        opt.zero_grad(set_to_none=True)
        (ce + args.aux_coef * aux).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        step += 1
        ema = ce.item() if ema is None else 0.95 * ema + 0.05 * ce.item()
        if step % 10 == 0:
            load = torch.bincount(torch.topk(router[-1], MODEL["num_experts_per_tok"])[1].flatten(),
                                  minlength=MODEL["num_experts"])
            print(f"step {step} t {time.time() - t_start:.0f}s lr {lr:.2e} loss {ce.item():.4f} "
                  f"ema {ema:.4f} aux {aux.item():.4f} gnorm {gnorm:.2f} "
                  f"last-layer-load min {load.min().item()} max {load.max().item()}", flush=True)
        if step % EVAL_EVERY == 0:
            with torch.no_grad():
                held = loss_on(model, held_batch)[0].item()
            print(f"eval step {step} heldout_loss {held:.4f} ppl {math.exp(held):.2f}", flush=True)
        if step % CKPT_EVERY == 0:
            save(model, opt, step, {"train_loss_ema": ema, "heldout_loss": held})
    with torch.no_grad():
        held = loss_on(model, held_batch)[0].item()
    save(model, opt, step, {"train_loss_ema": ema, "heldout_loss": held})
    print(json.dumps({"done": True, "steps": step, "seconds": round(time.time() - t_start),
                      "train_loss_ema": ema, "heldout_loss_16win": held}), flush=True)


if __name__ == "__main__":
    main()
