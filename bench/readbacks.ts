/**
 * GPU -> CPU readbacks per decoded token and tokens/s of three designs, measured side by side on
 * the embedded default model (all experts resident, greedy):
 * - per-layer routing (the naive design, the `perLayerRouting` model option: the CPU waits for
 *   each layer's router, then runs its experts): L + 1 readbacks per token, through
 *   session.forward() and a CPU argmax;
 * - one readback per token: GPU-side routing through the slot table and sampling on the GPU,
 *   Session.decode with stepsPerReadback 1 (unpipelined; the benchmarks' baseline);
 * - the adaptive decode loop: Session.decode with several steps per readback, pipelined.
 *
 *   ./bin/deno run -A --unstable-webgpu bench/readbacks.ts
 */
import { DEFAULT_MODEL_DIR, openModel } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { openGpu } from "../src/gpu/device.ts";
import { greedyToken } from "../src/greedy.ts";
import { compareModes, decodeRun } from "./decode.ts";

/** Per-layer routing: decode steps timed (after WARMUP untimed ones); about 10 tokens/s here. */
const PER_LAYER_STEPS = 32;
const WARMUP = 3;
/** Decode loops: tokens per run (enough for the adaptive batch size to settle) and runs each. */
const DECODE_TOKENS = 256;
const DECODE_REPS = 3;
const PROMPT = [1063, 259, 2279, 416, 3162];
const MAX_CONTEXT = PROMPT.length + DECODE_TOKENS;

const gpu = await openGpu();
const opened = await openModel(DEFAULT_MODEL_DIR);

/** The naive design: greedy decode through forward(), each step one readback per layer + 1. */
async function perLayerRouting() {
  const model = await GpuModel.open(opened.weights, {
    gpu,
    maxContext: MAX_CONTEXT,
    expertSource: opened.experts,
    perLayerRouting: true,
  });
  try {
    const s = model.newSession();
    let [logits] = await s.forward(PROMPT, { lastOnly: true });
    const tokens = [greedyToken(logits)];
    for (let i = 0; i < WARMUP; i++) {
      [logits] = await s.forward([tokens[tokens.length - 1]]);
      tokens.push(greedyToken(logits));
    }
    const before = model.stats.readbacks;
    const t0 = performance.now();
    for (let i = 0; i < PER_LAYER_STEPS; i++) {
      [logits] = await s.forward([tokens[tokens.length - 1]]);
      tokens.push(greedyToken(logits));
    }
    const seconds = (performance.now() - t0) / 1000;
    s.free();
    return {
      tokens,
      readbacksPerToken: (model.stats.readbacks - before) / PER_LAYER_STEPS,
      tokensPerS: PER_LAYER_STEPS / seconds,
    };
  } finally {
    model.destroy();
  }
}

/** One readback per token and the adaptive loop, alternating on one model (bench/decode.ts). */
async function decodeLoops() {
  const model = await GpuModel.open(opened.weights, {
    gpu,
    maxContext: MAX_CONTEXT,
    expertSource: opened.experts,
  });
  try {
    // the tokens per-layer routing produced, from the decode loop, to compare
    const check = await decodeRun(model, PROMPT, 1 + WARMUP + PER_LAYER_STEPS, undefined);
    const figures = await compareModes(model, PROMPT, DECODE_TOKENS, DECODE_REPS);
    return { ...figures, firstTokens: check.tokens };
  } finally {
    model.destroy();
  }
}

const t0 = performance.now();
const naive = await perLayerRouting();
const loops = await decodeLoops();
opened.close();
const c = opened.weights.config;
console.log(
  `machine: ${gpu.adapterInfo.description}; default model, ${c.numLayers} layers, ` +
    `${c.numExperts} experts top-${c.topK}, all resident`,
);
const rows: [string, number, number][] = [
  ["per-layer routing (naive)", naive.readbacksPerToken, naive.tokensPerS],
  ["one readback per token (spr 1)", loops.spr1.readbacksPerToken, loops.spr1.tokensPerS],
  ["adaptive decode loop", loops.adaptive.readbacksPerToken, loops.adaptive.tokensPerS],
];
console.log(`${"design".padEnd(31)} readbacks/token   tokens/s   vs naive`);
for (const [name, rb, tps] of rows) {
  console.log(
    `${name.padEnd(31)} ${rb.toFixed(3).padStart(15)}   ${tps.toFixed(1).padStart(8)}   ` +
      `${(tps / naive.tokensPerS).toFixed(2).padStart(7)}x`,
  );
}
const same = naive.tokens.every((t, i) => t === loops.firstTokens[i]);
console.log(
  `per-layer routing: ${PER_LAYER_STEPS} steps after ${WARMUP} untimed; decode loops: median of ` +
    `${DECODE_REPS} alternating runs of ${DECODE_TOKENS} tokens (decode steps only), ` +
    `${loops.adaptive.stepsPerReadback.toFixed(1)} steps per readback adaptive; ` +
    `adaptive vs spr 1: ${loops.speedup.toFixed(2)}x; same greedy tokens in all three: ` +
    `${same && loops.sameTokens ? "yes" : "NO"}; ${((performance.now() - t0) / 1000).toFixed(0)} s`,
);
