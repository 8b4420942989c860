"""transformers' Qwen3MoeForCausalLM on the checkpoint bench/gpu_report.ts wrote, on CUDA.

    python3 tools/gpu/transformers_run.py DIR [--decode-tokens N] [--out FILE]

- Exactness: the model in float32 (its bf16 weights widened exactly, TF32 off, eager attention)
  computes the last-token logits of the prompt in DIR/runtime_logits.json; they are compared with
  the runtime's (max |difference| over max |logit|, and whether the argmax agrees).
- Speed, as the kernels issue asks (bf16, eager attention): prefill tokens/s of 64/512/2048-token
  prompts (the same ids as gpu_report.ts), and greedy decode tokens/s through generate() with its
  KV cache after the report's 16-token prompt.
Prints one JSON object (also written to --out FILE).
"""
import argparse
import json
import time

import torch
from transformers import Qwen3MoeForCausalLM

PREFILL_LENGTHS = [64, 512, 2048]


def prompt_ids(n, vocab):
    # as bench/gpu_report.ts: (i * 7919 + 13) % vocab
    return [(i * 7919 + 13) % vocab for i in range(n)]


def timed(fn, reps=3):
    fn()  # warm-up
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with open(f"{a.dir}/runtime_logits.json") as f:
        runtime = json.load(f)
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    try:
        import transformers

        report["transformers"] = transformers.__version__
    except Exception:  # noqa: BLE001 (the version is informative only)
        pass

    model = Qwen3MoeForCausalLM.from_pretrained(a.dir, attn_implementation="eager")
    model = model.to(device="cuda", dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    with torch.no_grad():
        ids = torch.tensor([runtime["prompt"]], device="cuda")
        ref = model(ids).logits[0, -1].double().cpu()
    ours = torch.tensor(runtime["logits"], dtype=torch.float64)
    diff = (ours - ref).abs().max().item()
    report["logits"] = {
        "max_abs_diff": diff,
        "relative": diff / ref.abs().max().item(),
        "argmax_agrees": int(ours.argmax()) == int(ref.argmax()),
        "transformers_dtype": "float32",
    }
    print(json.dumps(report["logits"]), flush=True)

    model = model.to(dtype=torch.bfloat16)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    prefill = {}
    with torch.no_grad():
        for n in PREFILL_LENGTHS:
            x = torch.tensor([prompt_ids(n, vocab)], device="cuda")
            s = timed(lambda: model(x, use_cache=False))
            prefill[str(n)] = n / s
        report["prefill_tok_per_s"] = prefill
        x = torch.tensor([runtime["prompt"]], device="cuda")
        n = a.decode_tokens

        def gen():
            out = model.generate(
                x, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True
            )
            assert out.shape[1] == x.shape[1] + n

        s = timed(gen)
        report["decode"] = {"tokens": n, "tok_per_s": n / s, "dtype": "bfloat16"}
    out = json.dumps(report, indent=2)
    print(out)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out)


if __name__ == "__main__":
    main()
