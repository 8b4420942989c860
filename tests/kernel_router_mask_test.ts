import assert from "node:assert";
import { readF32 } from "../src/gpu/readback.ts";
import { buffer, gpu, gpuTest, ops, randomF32, run } from "./kernel_harness.ts";

/** Slot-table value of a non-resident expert (ABSENT of src/gpu/expert_pool.ts). */
const ABSENT = 0xffffffff;
/** The kernel's stand-in for -infinity. */
const MASKED = -3.0e38;

/** Plain TypeScript reference of kernels/router_mask.wgsl. */
function refMask(
  logits: Float32Array,
  slots: Uint32Array,
  slotBase: number,
  T: number,
  E: number,
  minResident: number,
): Float32Array {
  const out = logits.slice();
  let resident = 0;
  for (let e = 0; e < E; e++) if (slots[slotBase + e] !== ABSENT) resident++;
  if (resident < Math.max(minResident, 1)) return out;
  for (let t = 0; t < T; t++) {
    for (let e = 0; e < E; e++) if (slots[slotBase + e] === ABSENT) out[t * E + e] = MASKED;
  }
  return out;
}

gpuTest("routerMask() masks exactly the absent experts of its layer", async () => {
  const E = 16, T = 5, L = 3;
  const slots = new Uint32Array(L * E).fill(ABSENT);
  // layer 0: none resident; layer 1: experts 2, 5, 9, 11, 15; layer 2: only 0, 1, 7 (< k)
  for (const [i, e] of [2, 5, 9, 11, 15].entries()) slots[E + e] = i;
  for (const [i, e] of [0, 1, 7].entries()) slots[2 * E + e] = 10 + i;
  const slotBuf = buffer(slots);
  for (const minResident of [0, 4]) {
    for (const layer of [0, 1, 2]) {
      const logits = randomF32(T * E, 7 + layer, 3);
      const out = buffer(logits);
      const slotBase = layer * E;
      run(
        [ops.routerMask({ logits: out, slots: slotBuf, slotBase, numExperts: E, minResident })],
        T,
      );
      const got = await readF32(gpu, out, 0, T * E);
      const want = refMask(logits, slots, slotBase, T, E, minResident);
      assert.deepStrictEqual(got, want, `layer ${layer}, minResident ${minResident}`);
      // none resident, or fewer than minResident: exact routing
      const exact = layer === 0 || (layer === 2 && minResident === 4);
      if (exact) assert.deepStrictEqual(got, logits, `layer ${layer} routes exactly`);
      else assert.notDeepStrictEqual(got, logits);
    }
  }
});

gpuTest("routerMask() then topk() picks only resident experts", async () => {
  const E = 8, k = 2, T = 3;
  const slots = new Uint32Array(E).fill(ABSENT);
  slots[1] = 0;
  slots[6] = 1;
  slots[7] = 2;
  const logits = buffer(randomF32(T * E, 99, 4));
  const idx = buffer(T * k * 4), weights = buffer(T * k * 4);
  run([
    ops.routerMask({ logits, slots: buffer(slots), slotBase: 0, numExperts: E, minResident: 1 }),
    ops.topk({ logits, idx, weights, numExperts: E, k, normTopk: true }),
  ], T);
  const chosen = new Uint32Array((await readF32(gpu, idx, 0, T * k)).buffer);
  for (const e of chosen) assert.ok([1, 6, 7].includes(e), `expert ${e} is not resident`);
});
