/**
 * Resident weights on the GPU: checkpoint matrices uploaded as they are (packed in u32 for the
 * kernels), norm weights converted to f32, lm_head and the embedding table in row chunks that fit
 * one storage binding (one upload when they are tied); the embedding rows are gathered on the GPU.
 */
import type { LayerWeights, TensorView } from "../types.ts";
import type { Gpu } from "./device.ts";
import { type BufferWeight, WEIGHT_TEXTURE_WIDTH, type WeightRef } from "./ops_api.ts";
import { WEIGHT_DTYPES } from "./weight_dtype.ts";
import { toFloat32 } from "../dtype.ts";

/** Bytes of one element of the dtypes rows8 takes (others stay row-major). f32 is left out:
 * `bench/kernels.ts` measured it no faster there (-12% to +6%), bf16 +5% to +64% for 768-2048
 * rows. */
const ROWS8_ELEM_BYTES: Partial<Record<string, number>> = { F16: 2, BF16: 2 };

/** Whether a matrix is stored as rows8 when asked: f16/bf16 with rows of whole 8-element chunks,
 * q8_0, q4_0 and q5_0 with rows of whole 32-element groups (repackQ8Rows8, repackQ4Rows8), q6_k
 * and q4_k (rows of whole super-blocks, repackQ6KRows8, repackQ4KRows8). */
export function rows8Eligible(t: TensorView): boolean {
  if (t.shape.length !== 2) return false;
  if (t.dtype === "Q8_0" || t.dtype === "Q4_0" || t.dtype === "Q5_0") {
    return t.shape[1] % Q8_GROUP === 0;
  }
  if (t.dtype === "Q6_K" || t.dtype === "Q4_K") return t.shape[1] % Q6_SUPER === 0;
  return ROWS8_ELEM_BYTES[t.dtype] !== undefined && t.shape[1] % 8 === 0;
}

/** Columns of a q8_0 block (GGML's QK8_0), the group repackQ8Rows8 keeps together. */
const Q8_GROUP = 32;
/** Bytes of a q8_0 block: f16 d, then 32 int8. */
const Q8_BLOCK_BYTES = 34;

/**
 * The frame of the quantized rows8 repacks: for each row n of a row-major [N, K] matrix of GGML
 * blocks (`groups` of `blockBytes` bytes a row), `move(out, s, o, r)` places the block at byte s
 * into its group of 8 rows at out[o] (8 x blockBytes bytes: the rows' blocks, rearranged) as row
 * r = n % 8. Rows past N (the last group's padding) stay zero.
 */
function repackBlockRows8(
  N: number,
  groups: number,
  blockBytes: number,
  move: (out: Uint8Array, s: number, o: number, r: number) => void,
): Uint8Array {
  const groupBytes = 8 * blockBytes;
  const out = new Uint8Array(Math.ceil(N / 8) * groups * groupBytes);
  for (let n = 0; n < N; n++) {
    const b = n >> 3, r = n & 7;
    for (let g = 0; g < groups; g++) {
      move(out, (n * groups + g) * blockBytes, (b * groups + g) * groupBytes, r);
    }
  }
  return out;
}

/**
 * A row-major [N, K] q8_0 matrix (GGML blocks of 32) in the rows8 layout of
 * kernels/weights_q8_0_rows8.wgsl: for each block of 8 rows (the last padded with zero rows), for
 * each group of 32 columns, 272 bytes: the 8 rows' f16 scales (16 bytes), then for each chunk of 8
 * columns the rows' int8 in row order (64 bytes). The same values, 16-byte aligned, so that one
 * vector load reads two rows' chunk.
 */
export function repackQ8Rows8(src: Uint8Array, N: number, K: number): Uint8Array {
  return repackBlockRows8(N, K / Q8_GROUP, Q8_BLOCK_BYTES, (out, s, d, r) => {
    out[d + 2 * r] = src[s];
    out[d + 2 * r + 1] = src[s + 1];
    // chunk j's 8 int8 of row r, byte by byte (a subarray per chunk would allocate)
    for (let j = 0; j < 4; j++) {
      let from = s + 2 + 8 * j, to = d + 16 + 64 * j + 8 * r;
      for (let i = 0; i < 8; i++) out[to++] = src[from++];
    }
  });
}

/**
 * A row-major [N, K] q4_0 or q5_0 matrix (GGML blocks of 32: f16 d, for q5_0 a u32 of fifth bits,
 * 16 bytes of nibbles, element i < 16 in the low nibble of byte i, i + 16 in its high one) in the
 * rows8 layout of kernels/weights_q4_0_rows8.wgsl / weights_q5_0_rows8.wgsl: for each block of 8
 * rows (the last padded with zero rows) and group of 32 columns, the same bytes as its 8 blocks:
 * the rows' d, (q5_0) their fifth-bit words, then per chunk of 8 columns the rows' nibbles in
 * column order (a word a row). Values unchanged: the bytes are moved, not recomputed.
 */
export function repackQ4Rows8(src: Uint8Array, N: number, K: number, fifth: boolean): Uint8Array {
  const blockBytes = fifth ? 22 : 18, head = fifth ? 48 : 16, qs = fifth ? 6 : 2;
  return repackBlockRows8(N, K / Q8_GROUP, blockBytes, (out, s, o, r) => {
    out[o + 2 * r] = src[s];
    out[o + 2 * r + 1] = src[s + 1];
    if (fifth) { for (let i = 0; i < 4; i++) out[o + 16 + 4 * r + i] = src[s + 2 + i]; }
    for (let m = 0; m < Q8_GROUP; m++) {
      const q = src[s + qs + (m & 15)];
      const nib = m < 16 ? q & 15 : q >> 4;
      const i = m & 7;
      out[o + head + 32 * (m >> 3) + 4 * r + (i >> 1)] |= nib << (4 * (i & 1));
    }
  });
}

/** Columns and bytes of a Q6_K super-block (GGML's QK_K): ql[128], qh[64], int8 scales[16], f16 d. */
const Q6_SUPER = 256;
const Q6_BLOCK_BYTES = 210;

/**
 * A row-major [N, K] q6_k matrix (GGML super-blocks of 256) in the rows8 layout of
 * kernels/weights_q6_k_rows8.wgsl: for each block of 8 rows (the last padded with zero rows) and
 * super-block, the same 1680 bytes as its 8 blocks: the rows' d (16 bytes), their scales by pairs
 * of 16-column sub-blocks (8 x 16 bytes), then per chunk of 8 columns the rows' low nibbles (a
 * 32-bit word a row) and high bits (16 bits a row), 48 bytes. Values unchanged: q, sc and d are
 * moved, not recomputed.
 */
export function repackQ6KRows8(src: Uint8Array, N: number, K: number): Uint8Array {
  return repackBlockRows8(N, K / Q6_SUPER, Q6_BLOCK_BYTES, (out, s, o, r) => {
    out[o + 2 * r] = src[s + 208];
    out[o + 2 * r + 1] = src[s + 209];
    for (let sub = 0; sub < 16; sub++) {
      out[o + 16 + (sub >> 1) * 16 + (sub & 1) * 8 + r] = src[s + 192 + sub];
    }
    for (let m = 0; m < Q6_SUPER; m++) {
      const half = m >> 7, grp = (m >> 5) & 3, l = m & 31;
      const qlByte = src[s + 64 * half + 32 * (grp & 1) + l];
      const low = grp < 2 ? qlByte & 15 : qlByte >> 4;
      const high = (src[s + 128 + 32 * half + l] >> (2 * grp)) & 3;
      const j = m >> 3, i = m & 7, chunk = o + 144 + 48 * j;
      out[chunk + 4 * r + (i >> 1)] |= low << (4 * (i & 1));
      out[chunk + 32 + 2 * r + (i >> 2)] |= high << (2 * (i & 3));
    }
  });
}

/** Bytes of a Q4_K super-block: (d, dmin) f16, scales[12], qs[128]. */
const Q4K_BLOCK_BYTES = 144;

/**
 * A row-major [N, K] q4_k matrix (GGML super-blocks of 256) in the rows8 layout of
 * kernels/weights_q4_k_rows8.wgsl: for each block of 8 rows (the last padded with zero rows) and
 * super-block, the same 1152 bytes as its 8 blocks: the rows' (d, dmin) words, their scale bytes
 * transposed (byte k of the three scale words, the 8 rows together), then per chunk of 8 columns
 * the rows' nibbles (a word a row). Values unchanged: the bytes are moved, not recomputed.
 */
export function repackQ4KRows8(src: Uint8Array, N: number, K: number): Uint8Array {
  return repackBlockRows8(N, K / Q6_SUPER, Q4K_BLOCK_BYTES, (out, s, o, r) => {
    for (let i = 0; i < 4; i++) out[o + 4 * r + i] = src[s + i];
    for (let k = 0; k < 4; k++) {
      const a = o + 32 + 16 * (3 * (k >> 1) + (k & 1)), bv = o + 32 + 16 * (3 * (k >> 1) + 2);
      out[a + r] = src[s + 4 + k]; // scales[k]
      out[a + 8 + r] = src[s + 8 + k]; // scales[4 + k]
      out[bv + 8 * (k & 1) + r] = src[s + 12 + k]; // scales[8 + k]
    }
    for (let m = 0; m < Q6_SUPER; m++) {
      const q = src[s + 16 + 32 * (m >> 6) + (m & 31)];
      const nib = (m >> 5) & 1 ? q >> 4 : q & 15;
      const i = m & 7;
      out[o + 128 + 32 * (m >> 3) + 4 * r + (i >> 1)] |= nib << (4 * (i & 1));
    }
  });
}

/**
 * A row-major [N, K] matrix of `elemBytes` elements in the rows8 layout (WeightRef.layout): for
 * each block of 8 rows, for each chunk of 8 columns, the chunk of each of the 8 rows in turn; rows
 * past N (the last block's padding) are zero.
 */
export function repackRows8(src: Uint8Array, N: number, K: number, elemBytes: number): Uint8Array {
  // in u32 words (a chunk of 8 elements of 2 or 4 bytes is 4 or 8 words), copied one by one: a
  // subarray per chunk costs an allocation each (2 s for Qwen3-30B-A3B's lm_head, against 0.4)
  const words = (8 * elemBytes) / 4, chunks = K / 8, rowWords = chunks * words;
  const blocks = Math.ceil(N / 8);
  const aligned = src.byteOffset % 4 === 0 ? src : src.slice();
  const from = new Uint32Array(aligned.buffer, aligned.byteOffset, (N * K * elemBytes) / 4);
  const out = new Uint32Array(blocks * 8 * rowWords);
  for (let n = 0; n < N; n++) {
    const b = n >> 3, r = n & 7;
    let s = n * rowWords;
    for (let c = 0; c < chunks; c++) {
      let d = ((b * chunks + c) * 8 + r) * words;
      for (let w = 0; w < words; w++) out[d++] = from[s++];
    }
  }
  return new Uint8Array(out.buffer);
}

/**
 * Bytes of a rows8 matrix (whole 16-byte words) in a weight texture (TextureWeight): texel i %
 * WEIGHT_TEXTURE_WIDTH of row i / WEIGHT_TEXTURE_WIDTH holds word i. Null when the words need more
 * rows than the device's 2D textures have (the matrix then stays in a buffer: the same numbers).
 */
export function uploadWeightTexture(
  device: GPUDevice,
  bytes: Uint8Array,
  label: string,
): GPUTexture | null {
  if (bytes.byteLength % 16 !== 0) {
    throw new RangeError(`${label}: ${bytes.byteLength} B is not a whole number of 16-byte words`);
  }
  const W = WEIGHT_TEXTURE_WIDTH, words = bytes.byteLength / 16;
  const rows = Math.max(1, Math.ceil(words / W));
  if (rows > device.limits.maxTextureDimension2D) return null;
  const texture = device.createTexture({
    label,
    size: [W, rows],
    format: "rgba32uint",
    usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
  });
  writeTextureBytes(device, texture, 0, bytes, 0, bytes.byteLength);
  return texture;
}

/**
 * Writes `size` bytes of `src` from `srcOffset` at byte `dstOffset` of a weight texture (16-byte
 * words in texel order; both multiples of 16): the partial first row, the whole rows, the
 * partial last row, one writeTexture each.
 */
export function writeTextureBytes(
  device: GPUDevice,
  texture: GPUTexture,
  dstOffset: number,
  src: Uint8Array,
  srcOffset: number,
  size: number,
): void {
  if (dstOffset % 16 !== 0 || size % 16 !== 0) {
    throw new RangeError(`texture writes need whole 16-byte words (${dstOffset}, ${size})`);
  }
  const W = WEIGHT_TEXTURE_WIDTH, rowBytes = W * 16;
  const data = src as Uint8Array<ArrayBuffer>;
  let word = dstOffset / 16, at = srcOffset;
  const end = word + size / 16;
  while (word < end) {
    const x = word % W, y = Math.floor(word / W);
    // from a row's start: as many whole rows as remain, else the rest of this row
    const rows = x === 0 ? Math.floor((end - word) / W) : 0;
    if (rows > 0) {
      device.queue.writeTexture(
        { texture, origin: [0, y] },
        data,
        { offset: at, bytesPerRow: rowBytes, rowsPerImage: rows },
        [W, rows],
      );
      word += rows * W;
      at += rows * rowBytes;
    } else {
      const n = Math.min(W - x, end - word);
      device.queue.writeTexture(
        { texture, origin: [x, y] },
        data,
        { offset: at, bytesPerRow: rowBytes },
        [n, 1],
      );
      word += n;
      at += n * 16;
    }
  }
}

/** Upload a checkpoint matrix for the matmul kernels: as-is (packed in u32), or with `rows8` in
 * the rows8 layout where the dtype and shape allow it (rows8Eligible), and then with `texture` in
 * a weight texture where the device's textures hold it (uploadWeightTexture). */
export function uploadMatrix(
  device: GPUDevice,
  t: TensorView,
  label: string,
  rows8 = false,
  texture = false,
): WeightRef {
  const blocked = rows8 && rows8Eligible(t);
  const bytes = !blocked
    ? t.bytes
    : t.dtype === "Q8_0"
    ? repackQ8Rows8(t.bytes, t.shape[0], t.shape[1])
    : t.dtype === "Q4_0" || t.dtype === "Q5_0"
    ? repackQ4Rows8(t.bytes, t.shape[0], t.shape[1], t.dtype === "Q5_0")
    : t.dtype === "Q6_K"
    ? repackQ6KRows8(t.bytes, t.shape[0], t.shape[1])
    : t.dtype === "Q4_K"
    ? repackQ4KRows8(t.bytes, t.shape[0], t.shape[1])
    : repackRows8(t.bytes, t.shape[0], t.shape[1], ROWS8_ELEM_BYTES[t.dtype]!);
  const tex = blocked && texture ? uploadWeightTexture(device, bytes, label) : null;
  if (tex) return { texture: tex, dtype: WEIGHT_DTYPES[t.dtype], offsetElems: 0, layout: "rows8" };
  const buffer = device.createBuffer({
    label,
    size: align4(bytes.byteLength),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(buffer, 0, bytes as Uint8Array<ArrayBuffer>);
  return {
    buffer,
    dtype: WEIGHT_DTYPES[t.dtype],
    offsetElems: 0,
    layout: blocked ? "rows8" : "rows",
  };
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
  /** q, k and v: stacked rows of one matrix (one matmul), or three matrices (when their dtypes
   * differ, as in some quantized files, or when not asked to stack). */
  attnIn: { qkv: WeightRef } | { q: WeightRef; k: WeightRef; v: WeightRef };
  o: WeightRef;
  qNorm: GPUBuffer;
  kNorm: GPUBuffer;
  postNorm: GPUBuffer;
  router: WeightRef;
}

/** Matrices of one dtype and row length as one [sum of rows, K] matrix (rows in order), or null
 * when they differ in either. */
export function stackRows(ts: TensorView[], name: string): TensorView | null {
  const [first] = ts;
  const K = first.shape[1];
  if (!ts.every((t) => t.shape.length === 2 && t.dtype === first.dtype && t.shape[1] === K)) {
    return null;
  }
  const bytes = new Uint8Array(ts.reduce((n, t) => n + t.bytes.byteLength, 0));
  let at = 0;
  for (const t of ts) {
    bytes.set(t.bytes, at);
    at += t.bytes.byteLength;
  }
  const rows = ts.reduce((n, t) => n + t.shape[0], 0);
  return { name, dtype: first.dtype, shape: [rows, K], bytes, file: "", offset: 0 };
}

/** A layer's resident weights; `rows8`: its matrices in the rows8 layout where they allow it;
 * `stackQkv`: q, k and v as one matrix where their dtypes agree (GpuLayer.attnIn). */
export function uploadLayer(
  device: GPUDevice,
  lw: LayerWeights,
  l: number,
  rows8 = false,
  stackQkv = false,
  textures = false,
): GpuLayer {
  const p = `layers.${l}`;
  const qkv = stackQkv ? stackRows([lw.q, lw.k, lw.v], `${p}.qkv`) : null;
  const matrix = (t: TensorView, label: string) => uploadMatrix(device, t, label, rows8, textures);
  return {
    inputNorm: uploadF32(device, toFloat32(lw.inputNorm), `${p}.input_norm`),
    attnIn: qkv ? { qkv: matrix(qkv, qkv.name) } : {
      q: matrix(lw.q, `${p}.q`),
      k: matrix(lw.k, `${p}.k`),
      v: matrix(lw.v, `${p}.v`),
    },
    o: matrix(lw.o, `${p}.o`),
    qNorm: uploadF32(device, toFloat32(lw.qNorm), `${p}.q_norm`),
    kNorm: uploadF32(device, toFloat32(lw.kNorm), `${p}.k_norm`),
    postNorm: uploadF32(device, toFloat32(lw.postAttentionNorm), `${p}.post_norm`),
    router: matrix(lw.router, `${p}.router`),
  };
}

/** Rows [first, first + rows) of a [V, D] matrix, uploaded as one buffer (or texture). */
export interface RowChunk<W extends WeightRef = WeightRef> {
  w: W;
  rows: number;
  first: number;
}

/** A [V, D] matrix (lm_head, the embedding table) in row chunks that each fit one storage binding. */
export function uploadRowChunks(
  device: GPUDevice,
  t: TensorView,
  gpu: Gpu,
  label: string,
  rows8 = false,
  texture = false,
): RowChunk[] {
  const [V, D] = t.shape;
  const rowBytes = t.bytes.byteLength / V;
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  // whole rows per chunk, an even count so bf16 chunks start on a u32 (whole blocks of 8 rows
  // for rows8, so that only the last chunk pads)
  const unit = rows8 ? 8 : 2;
  const perChunk = Math.max(unit, Math.floor(limit / rowBytes / unit) * unit);
  const chunks = [];
  for (let first = 0; first < V; first += perChunk) {
    const rows = Math.min(perChunk, V - first);
    const view: TensorView = {
      ...t,
      shape: [rows, D],
      bytes: t.bytes.subarray(first * rowBytes, (first + rows) * rowBytes),
    };
    const w = uploadMatrix(device, view, `${label}.${first}`, rows8, texture);
    chunks.push({ w, rows, first });
  }
  return chunks;
}

/**
 * lm_head and the embedding table on the GPU, in row chunks. With tie_word_embeddings they are one
 * tensor, uploaded once and shared (row-major then, in buffers: the embedding gathers rows);
 * `rows8`: an untied lm_head in the rows8 layout where it allows it, with `texture` in weight
 * textures.
 */
export function uploadVocabMatrices(
  device: GPUDevice,
  embed: TensorView,
  lmHead: TensorView,
  gpu: Gpu,
  rows8 = false,
  texture = false,
): { embed: RowChunk<BufferWeight>[]; lmHead: RowChunk[] } {
  const tied = lmHead === embed;
  const head = uploadRowChunks(
    device,
    lmHead,
    gpu,
    tied ? "embed_tied" : "lm_head",
    rows8 && !tied,
    texture && !tied,
  );
  const table = tied ? head : uploadRowChunks(device, embed, gpu, "embed");
  return {
    lmHead: head,
    embed: table.map((c) => {
      if (c.w.texture !== undefined) throw new Error("embedding rows are gathered from buffers");
      return { ...c, w: c.w };
    }),
  };
}
