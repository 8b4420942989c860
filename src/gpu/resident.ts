/**
 * Resident weights on the GPU: checkpoint matrices uploaded as they are (packed in u32 for the
 * kernels), norm weights converted to f32, lm_head and the embedding table in row chunks that fit
 * one storage binding (one upload when they are tied); the embedding rows are gathered on the GPU.
 */
import type { LayerWeights, TensorView } from "../types.ts";
import type { Gpu } from "./device.ts";
import type { WeightRef } from "./ops_api.ts";
import { WEIGHT_DTYPES } from "./weight_dtype.ts";
import { toFloat32 } from "../dtype.ts";

/** Upload a checkpoint matrix as-is (packed in u32) for the matmul kernels. */
export function uploadMatrix(device: GPUDevice, t: TensorView, label: string): WeightRef {
  const buffer = device.createBuffer({
    label,
    size: align4(t.bytes.byteLength),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(buffer, 0, t.bytes as Uint8Array<ArrayBuffer>);
  return { buffer, dtype: WEIGHT_DTYPES[t.dtype], offsetElems: 0 };
}

/** Upload a norm weight converted to f32 (norm kernels take f32 weights). */
export function uploadF32(
  device: GPUDevice,
  data: Float32Array<ArrayBuffer>,
  label: string,
): GPUBuffer {
  const buffer = device.createBuffer({
    label,
    size: align4(data.byteLength),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(buffer, 0, data);
  return buffer;
}

export function align4(n: number): number {
  return Math.ceil(n / 4) * 4;
}

export interface GpuLayer {
  inputNorm: GPUBuffer;
  q: WeightRef;
  k: WeightRef;
  v: WeightRef;
  o: WeightRef;
  qNorm: GPUBuffer;
  kNorm: GPUBuffer;
  postNorm: GPUBuffer;
  router: WeightRef;
}

export function uploadLayer(device: GPUDevice, lw: LayerWeights, l: number): GpuLayer {
  const p = `layers.${l}`;
  return {
    inputNorm: uploadF32(device, toFloat32(lw.inputNorm), `${p}.input_norm`),
    q: uploadMatrix(device, lw.q, `${p}.q`),
    k: uploadMatrix(device, lw.k, `${p}.k`),
    v: uploadMatrix(device, lw.v, `${p}.v`),
    o: uploadMatrix(device, lw.o, `${p}.o`),
    qNorm: uploadF32(device, toFloat32(lw.qNorm), `${p}.q_norm`),
    kNorm: uploadF32(device, toFloat32(lw.kNorm), `${p}.k_norm`),
    postNorm: uploadF32(device, toFloat32(lw.postAttentionNorm), `${p}.post_norm`),
    router: uploadMatrix(device, lw.router, `${p}.router`),
  };
}

/** Rows [first, first + rows) of a [V, D] matrix, uploaded as one buffer. */
export interface RowChunk {
  w: WeightRef;
  rows: number;
  first: number;
}

/** A [V, D] matrix (lm_head, the embedding table) in row chunks that each fit one storage binding. */
export function uploadRowChunks(
  device: GPUDevice,
  t: TensorView,
  gpu: Gpu,
  label: string,
): RowChunk[] {
  const [V, D] = t.shape;
  const rowBytes = t.bytes.byteLength / V;
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  // whole rows per chunk, an even count so bf16 chunks start on a u32
  const perChunk = Math.max(2, Math.floor(limit / rowBytes / 2) * 2);
  const chunks = [];
  for (let first = 0; first < V; first += perChunk) {
    const rows = Math.min(perChunk, V - first);
    const view: TensorView = {
      ...t,
      shape: [rows, D],
      bytes: t.bytes.subarray(first * rowBytes, (first + rows) * rowBytes),
    };
    chunks.push({ w: uploadMatrix(device, view, `${label}.${first}`), rows, first });
  }
  return chunks;
}

/**
 * lm_head and the embedding table on the GPU, in row chunks. With tie_word_embeddings they are one
 * tensor, uploaded once and shared.
 */
export function uploadVocabMatrices(
  device: GPUDevice,
  embed: TensorView,
  lmHead: TensorView,
  gpu: Gpu,
): { embed: RowChunk[]; lmHead: RowChunk[] } {
  const head = uploadRowChunks(device, lmHead, gpu, lmHead === embed ? "embed_tied" : "lm_head");
  return {
    lmHead: head,
    embed: lmHead === embed ? head : uploadRowChunks(device, embed, gpu, "embed"),
  };
}
