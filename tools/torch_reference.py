#!/usr/bin/python3
"""Independent float64 torch reference of Hugging Face's Qwen3MoeForCausalLM.

Follows transformers' modeling_qwen3_moe.py (Qwen3MoeRMSNorm, Qwen3MoeAttention with q_norm /
k_norm before rotate-half RoPE, Qwen3MoeSparseMoeBlock), reading config.json and safetensors by
hand (JSON header + numpy.frombuffer). Everything is float64, including RoPE's inv_freq and the
softmaxes, which HF computes in float32: this is the exact math, not a bit replica of HF.

Usage:
  /usr/bin/python3 tools/torch_reference.py --model DIR --ids 3,17,42 [--generate 32]
prints JSON {"ids": [...], "logits": [[V floats] per id], "generated": [...]}; --positions
limits which logits rows are printed (e.g. --positions 0,6 or --positions last).
"""

import argparse
import json
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

DTYPES = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16}


def read_safetensors(path):
    """name -> float64 torch tensor, for every tensor of one safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = np.frombuffer(data[base + begin : base + end], dtype=DTYPES[entry["dtype"]])
        if entry["dtype"] == "BF16":
            # bf16 is the upper 16 bits of an f32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = torch.from_numpy(raw.astype(np.float64)).reshape(entry["shape"])
    return out


def load_checkpoint(model_dir):
    """All tensors of model.safetensors or of the shards listed in model.safetensors.index.json."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    tensors = {}
    for shard in shards:
        tensors.update(read_safetensors(os.path.join(model_dir, shard)))
    return tensors


def load_config(model_dir):
    """(text config dict, tensor prefix, tie_word_embeddings) for qwen3_moe or qwen3_omni_moe."""
    with open(os.path.join(model_dir, "config.json")) as f:
        top = json.load(f)
    if top["model_type"] == "qwen3_omni_moe":
        thinker = top["thinker_config"]
        text = thinker["text_config"]
        scopes, prefix = [text, thinker, top], "thinker."
    elif top["model_type"] == "qwen3_moe":
        text, scopes, prefix = top, [top], ""
    else:
        raise SystemExit(f"model_type {top['model_type']} is not qwen3_moe / qwen3_omni_moe")
    tie = next((s["tie_word_embeddings"] for s in scopes
                if s.get("tie_word_embeddings") is not None), False)
    return text, prefix, bool(tie)


class Qwen3MoeReference:
    """The text model's forward with a KV cache, float64 throughout."""

    def __init__(self, model_dir):
        cfg, prefix, tie = load_config(model_dir)
        w = load_checkpoint(model_dir)
        self.H = cfg["num_attention_heads"]
        self.Hkv = cfg.get("num_key_value_heads", self.H)
        self.D = cfg["hidden_size"]
        self.Dh = cfg.get("head_dim") or self.D // self.H
        self.E = cfg["num_experts"]
        self.K = cfg["num_experts_per_tok"]
        self.I = cfg["moe_intermediate_size"]
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
        self.norm_topk_prob = cfg.get("norm_topk_prob", False)
        self.L = cfg["num_hidden_layers"]
        p = prefix + "model."
        self.embed = w[p + "embed_tokens.weight"]
        self.norm = w[p + "norm.weight"]
        self.lm_head = self.embed if tie else w[prefix + "lm_head.weight"]
        self.layers = []
        for i in range(self.L):
            lp = f"{p}layers.{i}."
            layer = {k: w[lp + n + ".weight"] for k, n in [
                ("input_norm", "input_layernorm"), ("post_norm", "post_attention_layernorm"),
                ("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                ("o", "self_attn.o_proj"), ("q_norm", "self_attn.q_norm"),
                ("k_norm", "self_attn.k_norm"), ("router", "mlp.gate")]}
            if lp + "mlp.experts.gate_up_proj" in w:
                # transformers 5.x fused experts: gate_up_proj [E, 2I, D], down_proj [E, D, I]
                gate_up = w[lp + "mlp.experts.gate_up_proj"]
                layer["gate"] = gate_up[:, : self.I, :]
                layer["up"] = gate_up[:, self.I :, :]
                layer["down"] = w[lp + "mlp.experts.down_proj"]
            else:
                ex = lp + "mlp.experts.{}.{}.weight"
                layer["gate"] = torch.stack([w[ex.format(e, "gate_proj")] for e in range(self.E)])
                layer["up"] = torch.stack([w[ex.format(e, "up_proj")] for e in range(self.E)])
                layer["down"] = torch.stack([w[ex.format(e, "down_proj")] for e in range(self.E)])
            self.layers.append(layer)
        # Qwen3MoeRotaryEmbedding (default rope): inv_freq = 1 / theta^(2i/Dh), in float64 here
        self.inv_freq = 1.0 / (
            theta ** (torch.arange(0, self.Dh, 2, dtype=torch.float64) / self.Dh))
        self.cache = [(None, None) for _ in range(self.L)]  # per layer k, v: [Hkv, S, Dh]

    @staticmethod
    def rms_norm(x, weight, eps):
        """Qwen3MoeRMSNorm: x * rsqrt(mean(x^2) + eps) * weight."""
        variance = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(variance + eps))

    @staticmethod
    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    def attention(self, layer, i, x, positions):
        """Qwen3MoeAttention for x [T, D] at positions [T], appending to layer i's cache."""
        T = x.shape[0]
        q = F.linear(x, layer["q"]).view(T, self.H, self.Dh)
        k = F.linear(x, layer["k"]).view(T, self.Hkv, self.Dh)
        v = F.linear(x, layer["v"]).view(T, self.Hkv, self.Dh)
        # q_norm / k_norm on each head, before RoPE; then [heads, T, Dh]
        q = self.rms_norm(q, layer["q_norm"], self.eps).transpose(0, 1)
        k = self.rms_norm(k, layer["k_norm"], self.eps).transpose(0, 1)
        v = v.transpose(0, 1)
        freqs = positions[:, None].to(torch.float64) * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        q = q * cos + self.rotate_half(q) * sin
        k = k * cos + self.rotate_half(k) * sin
        past_k, past_v = self.cache[i]
        if past_k is not None:
            k = torch.cat([past_k, k], dim=1)
            v = torch.cat([past_v, v], dim=1)
        self.cache[i] = (k, v)
        # repeat_kv: kv head of query head h is h // (H / Hkv)
        groups = self.H // self.Hkv
        k = k.repeat_interleave(groups, dim=0)
        v = v.repeat_interleave(groups, dim=0)
        scores = torch.matmul(q, k.transpose(1, 2)) * self.Dh ** -0.5  # [H, T, S]
        S = k.shape[1]
        key_pos = torch.arange(S)
        mask = key_pos[None, :] > positions[:, None]  # causal
        scores = scores.masked_fill(mask[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).transpose(0, 1).reshape(T, self.H * self.Dh)
        return F.linear(out, layer["o"])

    def moe(self, layer, x):
        """Qwen3MoeSparseMoeBlock for x [T, D]."""
        router_logits = F.linear(x, layer["router"])
        routing = torch.softmax(router_logits, dim=-1)
        weights, selected = torch.topk(routing, self.K, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(self.E):
            token_idx, slot = torch.where(selected == e)
            if token_idx.numel() == 0:
                continue
            h = x[token_idx]
            act = F.silu(F.linear(h, layer["gate"][e])) * F.linear(h, layer["up"][e])
            y = F.linear(act, layer["down"][e]) * weights[token_idx, slot, None]
            out.index_add_(0, token_idx, y)
        return out

    def forward(self, ids):
        """Logits [T, V] for ids appended at the end of the cached sequence."""
        start = 0 if self.cache[0][0] is None else self.cache[0][0].shape[1]
        positions = torch.arange(start, start + len(ids))
        x = self.embed[torch.tensor(ids)]
        for i, layer in enumerate(self.layers):
            x = x + self.attention(layer, i, self.rms_norm(x, layer["input_norm"], self.eps),
                                   positions)
            x = x + self.moe(layer, self.rms_norm(x, layer["post_norm"], self.eps))
        return F.linear(self.rms_norm(x, self.norm, self.eps), self.lm_head)

    def reset(self):
        self.cache = [(None, None) for _ in range(self.L)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--ids", required=True, help="comma-separated token ids")
    parser.add_argument("--generate", type=int, default=0, help="greedy tokens to append")
    parser.add_argument("--positions", default="all", help="'all', 'last' or comma list")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    ids = [int(s) for s in args.ids.split(",")]
    model = Qwen3MoeReference(args.model)
    logits = model.forward(ids)
    generated = []
    if args.generate > 0:
        nxt = int(torch.argmax(logits[-1]))
        for step in range(args.generate):
            generated.append(nxt)
            if step + 1 < args.generate:
                nxt = int(torch.argmax(model.forward([nxt])[-1]))
    if args.positions == "all":
        rows = list(range(len(ids)))
    elif args.positions == "last":
        rows = [len(ids) - 1]
    else:
        rows = [int(s) for s in args.positions.split(",")]
    print(json.dumps({
        "ids": ids,
        "positions": rows,
        "logits": [[float(v) for v in logits[r]] for r in rows],
        "generated": generated,
    }))


if __name__ == "__main__":
    main()
