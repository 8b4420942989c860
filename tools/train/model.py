"""Qwen3-MoE decoder in plain torch (1.13), computing what HF Qwen3MoeForCausalLM computes.

Dimension legend: B batch, T tokens, D hidden, H query heads, K kv heads, Hd head dim,
E experts, A active experts per token, I expert intermediate size, V vocab.

Parameter names equal the Hugging Face checkpoint names, so export is a plain state_dict walk.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def at_least_f32(dtype):
    """float32 for half types (HF upcasts norms and softmaxes), else dtype (float64 stays)."""
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    """x / rms(x) * w, computed in at least float32 like HF Qwen3MoeRMSNorm."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(at_least_f32(dtype))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions, head_dim, theta, dtype):
    """cos, sin (T, Hd) for rotate-half RoPE (HF layout: frequencies repeated twice)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, h, k, hd = (cfg["hidden_size"], cfg["num_attention_heads"],
                       cfg["num_key_value_heads"], cfg["head_dim"])
        self.h, self.k, self.hd = h, k, hd
        self.q_proj = nn.Linear(d, h * hd, bias=False)
        self.k_proj = nn.Linear(d, k * hd, bias=False)
        self.v_proj = nn.Linear(d, k * hd, bias=False)
        self.o_proj = nn.Linear(h * hd, d, bias=False)
        self.q_norm = RMSNorm(hd, cfg["rms_norm_eps"])
        self.k_norm = RMSNorm(hd, cfg["rms_norm_eps"])

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        # projections, per-head RMSNorm on q and k (before RoPE) -> (B, heads, T, Hd)
        q = self.q_norm(self.q_proj(x).view(b, t, self.h, self.hd)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, t, self.k, self.hd)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.k, self.hd).transpose(1, 2)
        # RoPE
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # GQA: each kv head serves H/K query heads
        rep = self.h // self.k
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        # causal softmax attention
        scores = (q @ k.transpose(-1, -2)) * (self.hd ** -0.5)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores.to(at_least_f32(q.dtype)), dim=-1).to(q.dtype)
        out = (probs @ v).transpose(1, 2).reshape(b, t, self.h * self.hd)
        return self.o_proj(out)


class Expert(nn.Module):
    """SwiGLU expert: down(silu(gate x) * up x)."""

    def __init__(self, d, inter):
        super().__init__()
        self.gate_proj = nn.Linear(d, inter, bias=False)
        self.up_proj = nn.Linear(d, inter, bias=False)
        self.down_proj = nn.Linear(inter, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def route(router_logits, top_k, norm_topk_prob):
    """softmax over all experts -> top-k -> renormalise. Returns weights (N, A), experts (N, A)."""
    probs = torch.softmax(router_logits, dim=-1, dtype=at_least_f32(router_logits.dtype))
    weights, experts = torch.topk(probs, top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


class SparseMoe(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.top_k = cfg["num_experts_per_tok"]
        self.norm_topk_prob = cfg["norm_topk_prob"]
        self.gate = nn.Linear(cfg["hidden_size"], cfg["num_experts"], bias=False)
        self.experts = nn.ModuleList(
            [Expert(cfg["hidden_size"], cfg["moe_intermediate_size"])
             for _ in range(cfg["num_experts"])])

    def forward(self, x):
        b, t, d = x.shape
        flat = x.reshape(-1, d)  # (N, D)
        logits = self.gate(flat)  # (N, E)
        weights, experts = route(logits, self.top_k, self.norm_topk_prob)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.where(experts == e)
            if token_idx.numel() == 0:
                continue
            y = expert(flat[token_idx]) * weights[token_idx, slot, None]
            out.index_add_(0, token_idx, y)
        return out.view(b, t, d), logits


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = SparseMoe(cfg)

    def forward(self, x, cos, sin):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        moe_out, router_logits = self.mlp(self.post_attention_layernorm(h))
        return h + moe_out, router_logits


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class Qwen3MoeForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        if cfg["tie_word_embeddings"]:
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_weights(self, std):
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=std)
        # GPT-2 style: shrink the residual-branch output projections by depth.
        scale = 1.0 / math.sqrt(2 * self.cfg["num_hidden_layers"])
        for name, p in self.named_parameters():
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                with torch.no_grad():
                    p.mul_(scale)

    def forward(self, ids, start_pos=0):
        """ids (B, T) -> logits (B, T, V), list of router logits per layer (N, E)."""
        cfg = self.cfg
        x = self.model.embed_tokens(ids)
        pos = torch.arange(start_pos, start_pos + ids.shape[1])
        cos, sin = rope_cos_sin(pos, cfg["head_dim"], cfg["rope_theta"], x.dtype)
        router_logits = []
        for layer in self.model.layers:
            x, r = layer(x, cos, sin)
            router_logits.append(r)
        return self.lm_head(self.model.norm(x)), router_logits


def load_balancing_loss(router_logits, num_experts, top_k):
    """Switch/Mixtral auxiliary loss as in HF load_balancing_loss_func (no attention mask)."""
    logits = torch.cat(router_logits, dim=0)  # (layers * N, E)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float)
    _, selected = torch.topk(probs, top_k, dim=-1)
    mask = F.one_hot(selected, num_experts).float()  # (M, A, E)
    tokens_per_expert = mask.mean(dim=0)  # (A, E)
    prob_per_expert = probs.mean(dim=0)  # (E,)
    return (tokens_per_expert * prob_per_expert[None, :]).sum() * num_experts
