/**
 * GPU -> CPU readbacks per decoded token, before and after the runtime's design, measured side by
 * side on the embedded default model (all experts resident):
 * - per-layer routing (the naive design: the CPU waits for each layer's router, then runs its
 *   experts): L + 1 readbacks per token;
 * - GPU-side routing through the slot table (the runtime's design): one readback per token.
 *
 *   ./bin/deno run -A --unstable-webgpu bench/readbacks.ts
 */
import { DEFAULT_MODEL_DIR, openModel } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import { openGpu } from "../src/gpu/device.ts";
import { greedyToken } from "../src/greedy.ts";

/** Decode steps timed per design (after WARMUP untimed ones). */
const STEPS = 32;
const WARMUP = 3;
const PROMPT = [1063, 259, 2279, 416, 3162];

async function decode(perLayerRouting: boolean) {
  const opened = await openModel(DEFAULT_MODEL_DIR);
  const model = await GpuModel.open(opened.weights, {
    gpu,
    maxContext: 256,
    expertSource: opened.experts,
    perLayerRouting,
  });
  const s = model.newSession();
  let [logits] = await s.forward(PROMPT, { lastOnly: true });
  for (let i = 0; i < WARMUP; i++) [logits] = await s.forward([greedyToken(logits)]);
  const before = model.stats.readbacks;
  const t0 = performance.now();
  for (let i = 0; i < STEPS; i++) [logits] = await s.forward([greedyToken(logits)]);
  const seconds = (performance.now() - t0) / 1000;
  const result = {
    readbacksPerToken: (model.stats.readbacks - before) / STEPS,
    tokensPerSecond: STEPS / seconds,
  };
  s.free();
  model.destroy();
  opened.close();
  return { layers: model.config.numLayers, ...result };
}

const gpu = await openGpu();
const naive = await decode(true);
const ours = await decode(false);
console.log(`machine: ${gpu.adapterInfo.description}; default model, ${naive.layers} layers`);
console.log("design                         readbacks/token   tokens/s");
for (
  const [name, r] of [["per-layer routing (naive)", naive], [
    "GPU slot table (runtime)",
    ours,
  ]] as const
) {
  console.log(
    `${name.padEnd(30)} ${r.readbacksPerToken.toFixed(2).padStart(15)}   ${
      r.tokensPerSecond.toFixed(1).padStart(8)
    }`,
  );
}
console.log(`speed-up: ${(ours.tokensPerSecond / naive.tokensPerSecond).toFixed(2)}x`);
