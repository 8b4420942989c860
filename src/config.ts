/**
 * config.json to ModelConfig for Qwen3-MoE ("qwen3_moe") and the text model of Qwen3-Omni
 * ("qwen3_omni_moe": thinker_config.text_config, tensors prefixed "thinker."). Anything the
 * runtime does not implement is refused here, with the field named, rather than computed wrong.
 */

import type { ModelConfig } from "./types.ts";

/** Thrown for a config.json the runtime cannot serve. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Kernels load weights and activations as vec4: these sizes must be multiples of 4. */
const VEC4 = 4;
/** RoPE types whose text-only positions reduce to plain rotate-half RoPE. */
const PLAIN_ROPE_TYPES = ["default", "mrope"];

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Parses a parsed config.json; source (a path) is named in every error. */
export function parseConfig(json: unknown, source: string): ModelConfig {
  if (!isObject(json)) throw new ConfigError(`${source}: config is not a JSON object`);
  const modelType = json.model_type;
  if (modelType === "qwen3_moe") return parseText(json, [json], "qwen3_moe", "", source);
  if (modelType === "qwen3_omni_moe") {
    const thinker = json.thinker_config;
    if (!isObject(thinker) || !isObject(thinker.text_config)) {
      throw new ConfigError(
        `${source}: qwen3_omni_moe config has no thinker_config.text_config; ` +
          `use the full Qwen3-Omni config.json`,
      );
    }
    const text = thinker.text_config;
    return parseText(text, [text, thinker, json], "qwen3_omni_moe", "thinker.", source);
  }
  throw new ConfigError(
    `${source}: model_type ${JSON.stringify(modelType)} is not supported; ` +
      `this runtime serves qwen3_moe and qwen3_omni_moe`,
  );
}

/** Reads and parses DIR/config.json. */
export function readConfig(dir: string): ModelConfig {
  const path = `${dir}/config.json`;
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new ConfigError(`cannot read ${path}: ${(e as Error).message}; is ${dir} a model dir?`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
  return parseConfig(json, path);
}

function parseText(
  c: Json,
  idScopes: Json[],
  modelType: string,
  tensorPrefix: string,
  source: string,
): ModelConfig {
  const int = (key: string, fallback?: number): number => {
    const v = c[key] ?? fallback;
    if (!Number.isSafeInteger(v) || (v as number) <= 0) {
      throw new ConfigError(`${source}: ${key} is ${JSON.stringify(v)}; need a positive integer`);
    }
    return v as number;
  };
  const num = (key: string, v: unknown): number => {
    if (typeof v !== "number" || !(v > 0)) {
      throw new ConfigError(`${source}: ${key} is ${JSON.stringify(v)}; need a positive number`);
    }
    return v;
  };
  const refuse = (what: string) => {
    throw new ConfigError(`${source}: ${what} is not supported by this runtime`);
  };

  const hiddenSize = int("hidden_size");
  const numHeads = int("num_attention_heads");
  const numKvHeads = int("num_key_value_heads", numHeads);
  // head_dim falls back to hidden/heads only when the field is absent.
  const headDim = c.head_dim === undefined || c.head_dim === null
    ? hiddenSize / numHeads
    : int("head_dim");
  const numExperts = int("num_experts");
  const topK = int("num_experts_per_tok");
  const moeIntermediateSize = int("moe_intermediate_size");

  if ((c.hidden_act ?? "silu") !== "silu") refuse(`hidden_act ${JSON.stringify(c.hidden_act)}`);
  if (c.attention_bias === true) refuse("attention_bias true");
  const mlpOnly = c.mlp_only_layers ?? [];
  if (!Array.isArray(mlpOnly) || mlpOnly.length > 0) {
    refuse(`mlp_only_layers ${JSON.stringify(mlpOnly)} (dense MLP layers)`);
  }
  if ((c.decoder_sparse_step ?? 1) !== 1) {
    refuse(`decoder_sparse_step ${JSON.stringify(c.decoder_sparse_step)} (dense MLP layers)`);
  }
  const shared = c.shared_expert_intermediate_size ?? 0;
  if (shared !== 0) refuse(`shared_expert_intermediate_size ${JSON.stringify(shared)}`);
  for (const [key, v] of [["hidden_size", hiddenSize], ["head_dim", headDim]] as const) {
    if (!Number.isInteger(v) || v % VEC4 !== 0) refuse(`${key} ${v} (not a multiple of ${VEC4})`);
  }
  if (moeIntermediateSize % VEC4 !== 0) {
    refuse(`moe_intermediate_size ${moeIntermediateSize} (not a multiple of ${VEC4})`);
  }
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(
      `${source}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ` +
        `${numKvHeads}; the config is inconsistent`,
    );
  }
  if (topK > numExperts) {
    throw new ConfigError(`${source}: num_experts_per_tok ${topK} > num_experts ${numExperts}`);
  }

  // transformers 5.x moves rope_theta and rope_scaling into rope_parameters.
  const ropeParams = isObject(c.rope_parameters) ? c.rope_parameters : null;
  const ropeTheta = num("rope_theta", c.rope_theta ?? ropeParams?.rope_theta);
  for (const scaling of [c.rope_scaling, ropeParams]) checkRope(scaling, headDim, source);

  return {
    modelType,
    tensorPrefix,
    vocabSize: int("vocab_size"),
    hiddenSize,
    numLayers: int("num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    numExperts,
    topK,
    moeIntermediateSize,
    normTopkProb: c.norm_topk_prob === true,
    rmsNormEps: num("rms_norm_eps", c.rms_norm_eps),
    ropeTheta,
    maxPositionEmbeddings: int("max_position_embeddings"),
    tieWordEmbeddings: c.tie_word_embeddings === true,
    bosTokenId: tokenIds(idScopes, "bos_token_id", source)[0] ?? null,
    eosTokenIds: tokenIds(idScopes, "eos_token_id", source),
  };
}

/** Accepts null, default or mrope rope scaling (text-only mrope is plain RoPE). */
function checkRope(scaling: unknown, headDim: number, source: string): void {
  if (scaling === undefined || scaling === null) return;
  if (!isObject(scaling)) {
    throw new ConfigError(`${source}: rope_scaling ${JSON.stringify(scaling)} is not an object`);
  }
  const type = scaling.rope_type ?? scaling.type ?? "default";
  if (typeof type !== "string" || !PLAIN_ROPE_TYPES.includes(type)) {
    throw new ConfigError(
      `${source}: rope_scaling type ${JSON.stringify(type)} is not supported by this runtime ` +
        `(only ${PLAIN_ROPE_TYPES.join(", ")})`,
    );
  }
  const section = scaling.mrope_section;
  if (section === undefined) return;
  // Text-only positions (T = H = W) make mrope plain RoPE only if the sections cover Dh/2.
  const sum = Array.isArray(section) ? section.reduce((a: number, b: number) => a + b, 0) : NaN;
  if (sum !== headDim / 2) {
    throw new ConfigError(
      `${source}: mrope_section ${JSON.stringify(section)} sums to ${sum}, not head_dim/2 ` +
        `(${headDim / 2}); this runtime only supports mrope that reduces to plain RoPE`,
    );
  }
}

/** A token-id field (number or list) from the first scope that has it; [] when none does. */
function tokenIds(scopes: Json[], key: string, source: string): number[] {
  for (const s of scopes) {
    const v = s[key];
    if (v === undefined || v === null) continue;
    const list = Array.isArray(v) ? v : [v];
    if (!list.every((x) => Number.isSafeInteger(x) && x >= 0)) {
      throw new ConfigError(`${source}: ${key} is ${JSON.stringify(v)}; need an id or id list`);
    }
    return list as number[];
  }
  return [];
}
