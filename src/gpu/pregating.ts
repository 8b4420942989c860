/**
 * Pre-gating: after layer l, the routers of layers l+1 .. l+DISTANCES run on layer l's output (the
 * residual stream entering layer l+1, each through that later layer's post-attention RMSNorm),
 * giving a prediction of the experts those layers will route to, in the same pass as the forward.
 * The prediction skips the later layers' attention (and the experts of the layers in between), so
 * it can miss; `bench/pregating.ts` measures how often. Opt-in (GpuModelOptions.pregating): three
 * more dispatches per layer and distance. A prediction names `predictK` experts (default the
 * model's top-k; GpuModelOptions.pregatingTopK), in descending router probability, so its first k
 * are the top-k prediction: more raise recall at the cost of precision.
 */
import type { ModelConfig } from "../types.ts";
import type { Gpu } from "./device.ts";
import type { Op, WeightRef } from "./ops_api.ts";
import type { Ops } from "./ops.ts";

/** Layers ahead predicted: the next layer and the one after. */
export const PREGATING_DISTANCES = 2;

/** What pre-gating needs of a layer: its post-attention norm and router. */
export interface RouterWeights {
  postNorm: GPUBuffer;
  router: WeightRef;
}

export class Pregating {
  /** Per layer l: the ops predicting layers l+1 .. l+DISTANCES (those that exist). */
  readonly ops: Op[][];
  /** Experts each prediction names (>= the model's top-k). */
  readonly predictK: number;
  /** predicted[l][d - 1]: u32 [T, predictK], layer l+d's experts predicted after layer l. */
  private predicted: GPUBuffer[][];
  private scratch: GPUBuffer[];
  /** Where read() maps the predictions (made at its first use). */
  private staging: GPUBuffer | null = null;

  constructor(
    private gpu: Gpu,
    ops: Ops,
    private config: ModelConfig,
    layers: RouterWeights[],
    /** The residual stream [T, D] (the forward's x). */
    x: GPUBuffer,
    private maxTokens: number,
    predictK = config.topK,
  ) {
    const { hiddenSize: D, numExperts: E, topK: K, numLayers: L } = config;
    if (!Number.isInteger(predictK) || predictK < K || predictK > E) {
      throw new RangeError(
        `pre-gating predicts between top-k (${K}) and all ${E} experts, got ${predictK}`,
      );
    }
    this.predictK = predictK;
    const device = gpu.device;
    const f32 = (n: number, label: string) =>
      device.createBuffer({
        label,
        size: Math.ceil((n * 4) / 16) * 16,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      });
    const xn = f32(maxTokens * D, "pregating.xn");
    const logits = f32(maxTokens * E, "pregating.logits");
    const weights = f32(maxTokens * predictK, "pregating.weights");
    this.scratch = [xn, logits, weights];
    this.predicted = [];
    this.ops = [];
    for (let l = 0; l < L; l++) {
      const bufs: GPUBuffer[] = [];
      const layerOps: Op[] = [];
      for (let d = 1; d <= PREGATING_DISTANCES && l + d < L; d++) {
        const target = layers[l + d];
        const idx = f32(maxTokens * predictK, `pregating.idx.${l}.${d}`);
        bufs.push(idx);
        layerOps.push(
          ops.rmsnorm({
            x,
            weight: target.postNorm,
            out: xn,
            dim: D,
            groups: 1,
            eps: config.rmsNormEps,
          }),
          ops.matmul({
            x: xn,
            w: target.router,
            out: logits,
            K: D,
            N: E,
            outStride: E,
            outOffset: 0,
            accumulate: false,
          }),
          ops.topk({
            logits,
            idx,
            weights,
            numExperts: E,
            k: predictK,
            normTopk: config.normTopkProb,
          }),
        );
      }
      this.predicted.push(bufs);
      this.ops.push(layerOps);
    }
  }

  /** The predictions of the last forward of T tokens: [l][d - 1] = u32 [T * predictK]
   * (token-major), layer l+d's experts predicted after layer l (every buffer copied into one
   * staging buffer, one readback: for measurements). */
  async read(T: number): Promise<Uint32Array[][]> {
    if (T > this.maxTokens) throw new RangeError(`${T} tokens > ${this.maxTokens}`);
    const n = T * this.predictK;
    const count = this.predicted.reduce((a, bufs) => a + bufs.length, 0);
    const device = this.gpu.device;
    const bytes = Math.max(4, count * n * 4);
    if (!this.staging || this.staging.size < bytes) {
      this.staging?.destroy();
      this.staging = device.createBuffer({
        label: "pregating.staging",
        size: Math.max(bytes, count * this.maxTokens * this.predictK * 4),
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
    }
    const staging = this.staging;
    const enc = device.createCommandEncoder({ label: "pregating.read" });
    let at = 0;
    for (const b of this.predicted.flat()) {
      enc.copyBufferToBuffer(b, 0, staging, at * 4, n * 4);
      at += n;
    }
    device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ, 0, bytes);
    this.gpu.check();
    let words: Uint32Array;
    try {
      words = new Uint32Array(staging.getMappedRange(0, bytes)).slice();
    } finally {
      staging.unmap();
    }
    at = 0;
    return this.predicted.map((bufs) =>
      bufs.map(() => {
        at += n;
        return words.subarray(at - n, at);
      })
    );
  }

  destroy(): void {
    for (const b of [...this.scratch, ...this.predicted.flat()]) b.destroy();
    this.staging?.destroy();
  }
}

/** Overlap of two expert lists of one token (each distinct): |a ∩ b|. */
export function overlap(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const set = new Set(Array.from(b));
  let n = 0;
  for (let i = 0; i < a.length; i++) if (set.has(a[i])) n++;
  return n;
}
