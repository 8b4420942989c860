/** Helpers shared by the expert pool and cache tests. */
import { parseConfig } from "../src/config.ts";
import type { GpuModel } from "../src/gpu/model.ts";
import type { ModelConfig } from "../src/types.ts";

/** A model config with L layers of E experts, top-k K (hidden 64, intermediate 32, vocab 64). */
export function expertConfig(L: number, E: number, K: number): ModelConfig {
  return parseConfig({
    model_type: "qwen3_moe",
    vocab_size: 64,
    hidden_size: 64,
    num_hidden_layers: L,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    head_dim: 32,
    num_experts: E,
    num_experts_per_tok: K,
    moe_intermediate_size: 32,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    norm_topk_prob: true,
    max_position_embeddings: 64,
  }, "test config");
}

/** Prefill logits of `prompt` (all rows), then decode logits of `decode`, one token at a time. */
export async function promptThenDecode(
  model: GpuModel,
  prompt: number[],
  decode: number[],
): Promise<Float32Array[]> {
  const s = model.newSession();
  const rows = await s.forward(prompt);
  for (const id of decode) rows.push(...await s.forward([id]));
  s.free();
  return rows;
}
