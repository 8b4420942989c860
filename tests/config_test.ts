import assert from "node:assert/strict";
import { ConfigError, parseConfig, readConfig } from "../src/config.ts";

const REFERENCE = new URL("./fixtures/reference_configs/", import.meta.url).pathname;
const qwen3 = () => JSON.parse(Deno.readTextFileSync(`${REFERENCE}qwen3-30b-a3b.config.json`));
const omniText = () =>
  JSON.parse(Deno.readTextFileSync(`${REFERENCE}qwen3-omni-30b-a3b-thinker-text.config.json`));

/** The Omni text config nested the way the real checkpoint's config.json holds it. */
function omni(text = omniText(), ids: Record<string, unknown> = {}) {
  return {
    architectures: ["Qwen3OmniMoeForConditionalGeneration"],
    model_type: "qwen3_omni_moe",
    thinker_config: { model_type: "qwen3_omni_moe_thinker", text_config: text, ...ids },
  };
}

Deno.test("parseConfig() reads the real Qwen3-30B-A3B config", () => {
  assert.deepEqual(parseConfig(qwen3(), "q.json"), {
    modelType: "qwen3_moe",
    tensorPrefix: "",
    vocabSize: 151936,
    hiddenSize: 2048,
    numLayers: 48,
    numHeads: 32,
    numKvHeads: 4,
    headDim: 128,
    numExperts: 128,
    topK: 8,
    moeIntermediateSize: 768,
    normTopkProb: true,
    rmsNormEps: 1e-6,
    ropeTheta: 1e6,
    maxPositionEmbeddings: 40960,
    tieWordEmbeddings: false,
    bosTokenId: 151643,
    eosTokenIds: [151645],
  });
});

Deno.test("parseConfig() reads the real Qwen3-Omni thinker text config under thinker_config", () => {
  const c = parseConfig(
    omni(omniText(), { bos_token_id: 151643, eos_token_id: [151645, 151643] }),
    "o",
  );
  assert.equal(c.modelType, "qwen3_omni_moe");
  assert.equal(c.tensorPrefix, "thinker.");
  assert.equal(c.vocabSize, 152064);
  assert.equal(c.headDim, 128);
  assert.equal(c.maxPositionEmbeddings, 65536);
  assert.equal(c.ropeTheta, 1e6);
  assert.equal(c.numExperts, 128);
  assert.equal(c.topK, 8);
  assert.equal(c.bosTokenId, 151643);
  assert.deepEqual(c.eosTokenIds, [151645, 151643]);
});

Deno.test("parseConfig() looks for Omni eos ids in text_config, then thinker_config, then top level", () => {
  const top = { ...omni(), eos_token_id: 3 };
  assert.deepEqual(parseConfig(top, "o").eosTokenIds, [3]);
  const thinker = omni(omniText(), { eos_token_id: [5, 6] });
  assert.deepEqual(parseConfig({ ...thinker, eos_token_id: 3 }, "o").eosTokenIds, [5, 6]);
  const text = { ...omniText(), eos_token_id: 7 };
  assert.deepEqual(
    parseConfig({ ...omni(text, { eos_token_id: 5 }), eos_token_id: 3 }, "o").eosTokenIds,
    [7],
  );
  assert.deepEqual(parseConfig(omni(), "o").eosTokenIds, []);
  assert.equal(parseConfig(omni(), "o").bosTokenId, null);
});

Deno.test("parseConfig() defaults head_dim to hidden/heads only when it is absent", () => {
  const c = qwen3();
  delete c.head_dim;
  assert.equal(parseConfig(c, "q").headDim, 2048 / 32);
  assert.equal(parseConfig({ ...qwen3(), head_dim: 96 }, "q").headDim, 96);
  assert.throws(() => parseConfig({ ...qwen3(), head_dim: 0 }, "q"), /head_dim is 0/);
});

Deno.test("parseConfig() accepts eos_token_id as a list and transformers 5.x rope_parameters", () => {
  assert.deepEqual(parseConfig({ ...qwen3(), eos_token_id: [1, 2] }, "q").eosTokenIds, [1, 2]);
  const c = qwen3();
  delete c.rope_theta;
  c.rope_parameters = { rope_type: "default", rope_theta: 5e5 };
  assert.equal(parseConfig(c, "q").ropeTheta, 5e5);
});

Deno.test("parseConfig() refuses what the runtime does not implement, naming the field", () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ model_type: "llama" }, /model_type "llama" is not supported/],
    [{ mlp_only_layers: [0, 3] }, /mlp_only_layers \[0,3\] \(dense MLP layers\) is not supported/],
    [{ decoder_sparse_step: 2 }, /decoder_sparse_step 2/],
    [
      { rope_scaling: { rope_type: "yarn", factor: 4 } },
      /rope_scaling type "yarn" is not supported/,
    ],
    [{ rope_scaling: { type: "linear", factor: 2 } }, /rope_scaling type "linear"/],
    [{ attention_bias: true }, /attention_bias true is not supported/],
    [{ hidden_act: "gelu" }, /hidden_act "gelu" is not supported/],
    [{ hidden_size: 2050 }, /hidden_size 2050 \(not a multiple of 4\)/],
    [{ head_dim: 126 }, /head_dim 126 \(not a multiple of 4\)/],
    [{ moe_intermediate_size: 770 }, /moe_intermediate_size 770 \(not a multiple of 4\)/],
    [{ shared_expert_intermediate_size: 512 }, /shared_expert_intermediate_size 512/],
    [{ num_key_value_heads: 5 }, /not a multiple of num_key_value_heads 5/],
    [{ num_experts_per_tok: 200 }, /num_experts_per_tok 200 > num_experts 128/],
    [{ vocab_size: undefined }, /vocab_size is undefined; need a positive integer/],
    [{ rms_norm_eps: -1 }, /rms_norm_eps is -1/],
  ];
  for (const [patch, re] of cases) {
    assert.throws(
      () => parseConfig({ ...qwen3(), ...patch }, "cfg.json"),
      (e: Error) =>
        e instanceof ConfigError && re.test(e.message) && e.message.startsWith("cfg.json"),
      String(re),
    );
  }
});

Deno.test("parseConfig() refuses mrope sections that are not plain RoPE and Omni without text_config", () => {
  const text = omniText();
  text.rope_scaling = { ...text.rope_scaling, mrope_section: [16, 16, 16] };
  assert.throws(
    () => parseConfig(omni(text), "o"),
    /mrope_section \[16,16,16\] sums to 48, not head_dim\/2 \(64\)/,
  );
  assert.throws(
    () => parseConfig({ model_type: "qwen3_omni_moe", thinker_config: {} }, "o"),
    /no thinker_config.text_config/,
  );
  assert.throws(() => parseConfig([], "o"), /not a JSON object/);
});

Deno.test("readConfig() names the missing config.json", () => {
  assert.throws(
    () => readConfig("/nonexistent/dir"),
    /cannot read \/nonexistent\/dir\/config.json/,
  );
});
