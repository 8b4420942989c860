import assert from "node:assert";
import { readF32, readU32 } from "../src/gpu/readback.ts";
import { Ops } from "../src/gpu/ops.ts";
import type { WeightDType } from "../src/gpu/ops_api.ts";
import * as ref from "../src/reference/ops.ts";
import {
  assertClose,
  buffer,
  checkExpertPairs,
  gpu,
  gpuTest,
  ops,
  pack,
  randomF32,
  rng,
  run,
  SHARED_SIZES,
} from "./kernel_harness.ts";

/** f32 math against float64, relative to the largest output. */
const TOL = 2e-6;
/** Slot-table value of a non-resident expert (ABSENT of src/gpu/expert_pool.ts). */
const ABSENT = 0xffffffff;
/** Value the tests put in outputs that an op must leave alone. */
const UNTOUCHED = 12345;

gpuTest("topk() picks the reference experts and weights (E 128/K 8, E 256/K 16)", async () => {
  for (const [E, k] of [[128, 8], [256, 16], [6, 2]]) {
    for (const normTopk of [true, false]) {
      for (const T of [1, 3, 7]) {
        const logits = randomF32(T * E, E + T, 4);
        const idx = buffer(T * k * 4), weights = buffer(T * k * 4);
        run([ops.topk({ logits: buffer(logits), idx, weights, numExperts: E, k, normTopk })], T);
        const want = ref.topk(logits, T, E, k, normTopk);
        assert.deepStrictEqual(await readU32(gpu, idx, 0, T * k), want.idx, `E=${E} T=${T}`);
        assertClose(await readF32(gpu, weights, 0, T * k), want.weights, TOL, `E=${E} T=${T}`);
      }
    }
  }
});

gpuTest("topk() breaks ties by the lower index", async () => {
  const E = 8, k = 4;
  const logits = new Float32Array([0.5, 2, 1, 2, 0.5, 2, -1, 1]);
  const idx = buffer(k * 4), weights = buffer(k * 4);
  run([ops.topk({ logits: buffer(logits), idx, weights, numExperts: E, k, normTopk: true })], 1);
  assert.deepStrictEqual(Array.from(await readU32(gpu, idx, 0, k)), [1, 3, 5, 2]);
  assertClose(await readF32(gpu, weights, 0, k), ref.topk(logits, 1, E, k, true).weights, TOL, "w");
});

/** Two layers of E experts; layer 1's table points into two pool buffers or is ABSENT. */
const E = 6, K = 3;
/** [D, I, slot padding]: 16-byte rows (vector weight loader) with D, I multiples of 8; then
 * D, I = 4 mod 8 (tail columns) and slots at odd offsets (scalar loader). */
const GEOMETRIES: [number, number, number][] = [[40, 24, 8], [44, 20, 6]];
/** A geometry whose tiled kernels take two workgroups per tile, the second partial (interleaved
 * order): gate/up 18 row sets of 4, down 17 of 8, 16 a workgroup. */
const WIDE: [number, number, number] = [136, 72, 8];
/** The tiled expert kernels' baseline workgroup order, checked against the interleaved one. */
const tileMajor = new Ops(gpu, { interleavedTiles: false });
/** Their private arrays at the declared maxima (exactArrays' baseline), checked the same way. */
const declaredArrays = new Ops(gpu, { exactArrays: false });
/** Steps of too few pairs for the tiled kernels: both stages with 4 rows a lane
 * (experts_gate_up/down.wgsl, llvmpipe's default) and a workgroup per pair and 8 rows
 * (experts_gate_up/down_matvec.wgsl, other adapters'), each against the reference. */
/** The tiled stages with lanes owning rows (experts_*_tiled.wgsl, llvmpipe's default) and with a
 * workgroup per tile and 8 rows (experts_*_tiled_wg.wgsl, other adapters'), each against the
 * reference (the runs above compare orders and array sizes with the default, bit for bit). */
const TILED_KERNELS = [
  new Ops(gpu, { workgroupTiles: false }),
  new Ops(gpu, { workgroupTiles: true, sharedSizes: SHARED_SIZES }),
];
const DECODE_KERNELS = [
  new Ops(gpu, { coalescedMatvec: false }),
  new Ops(gpu, { coalescedMatvec: true, sharedSizes: SHARED_SIZES }),
];
const LAYER1_SLOTS = [4, 0, ABSENT, 2, 3, ABSENT]; // expert e of layer 1 -> slot
const POOLS = [{ first: 0, slots: 3 }, { first: 3, slots: 2 }];

for (const dtype of ["f32", "bf16", "f16"] as WeightDType[]) {
  for (const [D, I, pad] of dtype === "bf16" ? [...GEOMETRIES, WIDE] : GEOMETRIES) {
    const SLOT_ELEMS = 3 * I * D + pad;
    gpuTest(
      `expertsGateUp()/expertsDown() match the reference over two pools bound together or apart (${dtype}, D=${D}, I=${I}), absent experts flagged`,
      async () => {
        // Slot contents: random gate|up|down per slot, packed per pool buffer.
        const poolValues = POOLS.map((p) => randomF32(p.slots * SLOT_ELEMS, 50 + p.first));
        const packed = poolValues.map((v) => pack(v, dtype));
        const poolBufs = packed.map((p) => buffer(p.words));
        const expert = (slot: number) => {
          const pi = POOLS.findIndex((p) => slot >= p.first && slot < p.first + p.slots);
          const at = (slot - POOLS[pi].first) * SLOT_ELEMS;
          const v = packed[pi].values;
          return {
            gate: v.subarray(at, at + I * D),
            up: v.subarray(at + I * D, at + 2 * I * D),
            down: v.subarray(at + 2 * I * D, at + 3 * I * D),
          };
        };
        const table = new Uint32Array([1, 1, 1, 1, 1, 1, ...LAYER1_SLOTS]); // layer 0: decoy slot 1
        const slots = buffer(table);
        // T = 50, 350: 150, 1050 (token, expert) pairs: tiled kernels (grouped by expert), 4 and 8
        // pairs per tile (the larger case once, for time); T = 51 told the expert count: 153
        // pairs, over 8 per expert, so 8 pairs per tile.
        // Tiled steps run in both workgroup orders and with the arrays at their declared maxima
        // (bit-identical outputs).
        const large = dtype === "bf16" && pad === 8 && D !== WIDE[0] ? [350] : [];
        const runs = [1, 3, 7, 50, 51, ...large].flatMap((T) =>
          T >= 50
            ? [ops, tileMajor, declaredArrays, ...TILED_KERNELS].map((o) => ({ T, o }))
            : DECODE_KERNELS.map((o) => ({ T, o }))
        );
        let interleavedOut: [Float32Array, Float32Array] | null = null;
        // Each token's K distinct experts, drawn once per T: the runs compared bit for bit must
        // route alike (a sort by a random comparator is not guaranteed to repeat itself).
        const drawn = new Map<number, Uint32Array>();
        const routing = (T: number) => {
          let idx = drawn.get(T);
          if (idx === undefined) {
            const next = rng(T);
            idx = new Uint32Array(T * K);
            for (let t = 0; t < T; t++) {
              const order = Array.from({ length: E }, (_, e) => e).sort(() => next());
              idx.set(order.slice(0, K), t * K);
            }
            drawn.set(T, idx);
          }
          return idx;
        };
        for (const { T, o } of runs) {
          const idxArr = routing(T);
          const x = randomF32(T * D, 7 + T);
          const idx = buffer(idxArr), missed = buffer(table.byteLength);
          const h = buffer(new Float32Array(T * K * I).fill(UNTOUCHED));
          const y = buffer(new Float32Array(T * K * D).fill(UNTOUCHED));
          const xBuf = buffer(x);
          const common = {
            idx,
            slots,
            slotBase: E,
            poolDtype: dtype,
            slotElems: SLOT_ELEMS,
            k: K,
            numExperts: T === 51 ? E : undefined,
          };
          // One group binding both pools (padded to 3 bindings); for T = 7 one group per pool.
          const groups = [{
            pools: poolBufs,
            firstSlot: 0,
            slots: POOLS[0].slots + POOLS[1].slots,
            slotsPerPool: POOLS[0].slots,
            bindings: 3,
          }];
          const perPool = POOLS.map((p, i) => ({
            pools: [poolBufs[i]],
            firstSlot: p.first,
            slots: p.slots,
            slotsPerPool: p.slots,
          }));
          const layout = T === 7 ? perPool : groups;
          const list = layout.map((group) =>
            o.expertsGateUp({
              ...common,
              partOffset: 0,
              x: xBuf,
              missed,
              group,
              h,
              hidden: D,
              inter: I,
            })
          ).concat(layout.map((group) =>
            o.expertsDown({
              ...common,
              partOffset: 2 * I * D, // after gate and up
              h,
              group,
              y,
              hidden: D,
              inter: I,
            })
          ));
          run(list, T, 0, o.step);
          const gotH = await readF32(gpu, h, 0, T * K * I);
          const gotY = await readF32(gpu, y, 0, T * K * D);
          if (o === tileMajor || o === declaredArrays) {
            assert.ok(interleavedOut, "the default run comes first");
            const what = o === tileMajor ? "orders" : "array sizes";
            assert.deepStrictEqual(gotH, interleavedOut[0], `h T=${T}: ${what} differ`);
            assert.deepStrictEqual(gotY, interleavedOut[1], `y T=${T}: ${what} differ`);
          } else if (o === ops) {
            interleavedOut = [gotH, gotY];
          }
          await checkExpertPairs({
            idx: idxArr,
            x,
            gotH,
            gotY,
            missed,
            slotOf: LAYER1_SLOTS,
            absent: ABSENT,
            expert,
            D,
            I,
            K,
            E,
            tol: TOL,
            untouched: UNTOUCHED,
            what: `T=${T}`,
          });
        }
      },
    );
  }
}

gpuTest("moeCombine() adds the weighted expert outputs to out", async () => {
  const k = 8, hidden = 72;
  for (const T of [1, 3, 7]) {
    const y = randomF32(T * k * hidden, T);
    const w = randomF32(T * k, 10 + T);
    const initial = randomF32(T * hidden, 20 + T);
    const out = buffer(initial);
    run([ops.moeCombine({ y: buffer(y), weights: buffer(w), out, k, hidden })], T);
    const want = ref.moeCombine(initial, y, w, T, k, hidden);
    assertClose(await readF32(gpu, out, 0, T * hidden), want, TOL, `T=${T}`);
  }
});

gpuTest("argmax() finds the largest of the last row, lowest index on ties", async () => {
  const n = 1000; // not a multiple of the workgroup size (256)
  for (const T of [1, 3]) {
    const x = randomF32(T * n, 99 + T);
    const last = (T - 1) * n;
    x[last + 700] = 5;
    x[last + 300] = 5; // tie: 300 wins
    x[0] = T > 1 ? 9 : x[0]; // larger value in an earlier row is ignored
    const out = buffer(4);
    run([ops.argmax({ x: buffer(x), n, out })], T);
    const got = (await readU32(gpu, out, 0, 1))[0];
    assert.strictEqual(got, ref.argmax(x, T, n));
    assert.strictEqual(got, 300);
  }
});
