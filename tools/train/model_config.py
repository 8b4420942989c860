"""Hyper-parameters of the demo model and its Hugging Face config.json.

Sized for the 20 MB bf16 limit (9.33 M parameters = 18.7 MB) and for training on 2 shared CPU
cores in about an hour. Every dimension is a multiple of 4.
"""

# Token ids fixed by train_tokenizer.py: specials follow the 4093 BPE tokens, in Qwen's order.
ENDOFTEXT_ID = 4093
IM_START_ID = 4094
IM_END_ID = 4095

MODEL = {
    "vocab_size": 4096,
    "hidden_size": 256,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "num_experts": 16,
    "num_experts_per_tok": 4,
    "moe_intermediate_size": 96,
    "norm_topk_prob": True,
    "rms_norm_eps": 1e-6,
    # Short training context (256): the classic 10k base resolves positions better than 1e6.
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}

TRAINED_CONTEXT = 256


def hf_config():
    """config.json with every field of Qwen3-30B-A3B's config, holding this model's values."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "vocab_size": MODEL["vocab_size"],
        "hidden_size": MODEL["hidden_size"],
        "num_hidden_layers": MODEL["num_hidden_layers"],
        "num_attention_heads": MODEL["num_attention_heads"],
        "num_key_value_heads": MODEL["num_key_value_heads"],
        "head_dim": MODEL["head_dim"],
        "num_experts": MODEL["num_experts"],
        "num_experts_per_tok": MODEL["num_experts_per_tok"],
        "moe_intermediate_size": MODEL["moe_intermediate_size"],
        # No dense MLP layers exist (decoder_sparse_step 1, mlp_only_layers empty); HF still
        # requires the field, so it holds a dense size equal to the active expert width.
        "intermediate_size": MODEL["moe_intermediate_size"] * MODEL["num_experts_per_tok"],
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": MODEL["norm_topk_prob"],
        "hidden_act": "silu",
        "rms_norm_eps": MODEL["rms_norm_eps"],
        "rope_theta": MODEL["rope_theta"],
        "rope_scaling": None,
        # Trained on 256-token windows; longer contexts run but quality drops past that.
        "max_position_embeddings": 2048,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.05,  # 0.01 left experts dead in this small model (README)
        "sliding_window": None,
        "use_sliding_window": False,
        "max_window_layers": MODEL["num_hidden_layers"],
        "use_cache": True,
        "tie_word_embeddings": MODEL["tie_word_embeddings"],
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": [ENDOFTEXT_ID, IM_END_ID],
    }
