/**
 * A synthetic Hugging Face checkpoint with Qwen3-30B-A3B's real expert shapes (128 experts of
 * [768, 2048] gate/up and [2048, 768] down, BF16: 9,437,184 B a record), written within a bounded
 * amount of memory so that it fits a shared machine.
 *
 * writeFixture (weights/fixture.ts) holds every tensor as f32 and BF16 at once (6 B a parameter):
 * two layers of 128 real experts would need about 7.3 GB for the experts alone. So the checkpoint
 * is made in two parts:
 *   1. writeFixture writes a skeleton with every shape real except the experts' intermediate
 *      size (SKELETON_INTER): config.json, embeddings, attention, routers, norms, lm_head, all
 *      from the fixture's seeded generator.
 *   2. The expert tensors are streamed into a second shard one tensor at a time: uniform random
 *      BF16 values with the fixture's standard deviations (1/sqrt(D) for gate and up, 1/sqrt(I)
 *      for down), drawn from a table of BF16 quantiles by a seeded xorshift generator (fast
 *      enough for 1.2 G values in a few seconds). config.json gets the real intermediate size.
 * The result is an ordinary sharded checkpoint (model.safetensors.index.json) that `pack` reads.
 */
import { type FixtureOptions, TINY, writeFixture } from "../weights/fixture.ts";
import { openSafetensors, type TensorToWrite, writeSafetensors } from "../src/safetensors.ts";
import { f32ToBf16 } from "../src/dtype.ts";

/** Expert intermediate size of the skeleton: the smallest the fixture accepts (multiple of 4). */
const SKELETON_INTER = 4;
/** Values in the quantile table: one per 16-bit random index. */
const TABLE_SIZE = 1 << 16;
/** Half-width of a uniform distribution with unit standard deviation: sqrt(3). */
const UNIFORM_HALF_WIDTH_PER_STD = Math.sqrt(3);
/** Salt that separates the expert streams from the fixture's own per-tensor streams. */
const EXPERT_STREAM_SALT = 0x9e3779b9;
const NON_EXPERT_SHARD = "model-00001-of-00002.safetensors";
const EXPERT_SHARD = "model-00002-of-00002.safetensors";
const INDEX_FILE = "model.safetensors.index.json";
/** safetensors: an 8-byte little-endian header length, then a JSON header padded to 8 bytes. */
const HEADER_LENGTH_BYTES = 8;
const HEADER_ALIGN = 8;

/** Qwen3-30B-A3B's shapes (its config.json), BF16 like the released checkpoint; layers and vocab
 * are the bench's choice (the full 48 layers and 151936 vocab do not fit this machine). */
export function qwen3MoeShapes(layers: number, vocab: number): FixtureOptions {
  return {
    ...TINY,
    seed: 30,
    dtype: "BF16",
    layers,
    hidden: 2048,
    heads: 32,
    kvHeads: 4,
    headDim: 128,
    experts: 128,
    topK: 8,
    inter: 768,
    vocab,
  };
}

/** What writeSyntheticCheckpoint did. */
export interface SyntheticResult {
  dir: string;
  /** Bytes of the expert shard's tensor data (layers x experts x 3 x I x D x 2). */
  expertBytes: number;
  /** Seconds spent writing the skeleton and the expert shard. */
  skeletonS: number;
  expertsS: number;
}

/** FNV-1a of a string: one seed per tensor name. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** BF16 bits of TABLE_SIZE evenly spaced points of U(-a, a) with standard deviation std. */
function uniformTable(std: number): Uint16Array {
  const a = std * UNIFORM_HALF_WIDTH_PER_STD;
  const t = new Uint16Array(TABLE_SIZE);
  for (let i = 0; i < TABLE_SIZE; i++) t[i] = f32ToBf16(-a + (2 * a * (i + 0.5)) / TABLE_SIZE);
  return t;
}

/** Fills out (BF16 bits) from table, two values per 32-bit xorshift draw seeded by seed. */
function fillFromTable(out: Uint16Array, table: Uint16Array, seed: number): void {
  let s = seed >>> 0 || 1; // xorshift32 must not start at 0
  const n = out.length;
  for (let i = 0; i < n; i += 2) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = table[s & 0xffff];
    out[i + 1] = table[(s >>> 16) & 0xffff];
  }
}

interface ExpertTensor {
  name: string;
  shape: [number, number];
  table: Uint16Array;
}

/** Every expert tensor in (layer, expert, gate/up/down) order, with its value table. */
function expertTensors(o: FixtureOptions): ExpertTensor[] {
  const { hidden: D, inter: I } = o;
  const inTable = uniformTable(1 / Math.sqrt(D)); // gate and up read D inputs
  const downTable = uniformTable(1 / Math.sqrt(I)); // down reads I inputs
  const out: ExpertTensor[] = [];
  for (let l = 0; l < o.layers; l++) {
    for (let e = 0; e < o.experts; e++) {
      const p = `model.layers.${l}.mlp.experts.${e}.`;
      out.push({ name: p + "gate_proj.weight", shape: [I, D], table: inTable });
      out.push({ name: p + "up_proj.weight", shape: [I, D], table: inTable });
      out.push({ name: p + "down_proj.weight", shape: [D, I], table: downTable });
    }
  }
  return out;
}

function writeAllSync(f: Deno.FsFile, data: Uint8Array): void {
  let done = 0;
  while (done < data.length) done += f.writeSync(data.subarray(done));
}

/** Streams the expert tensors into one safetensors file, one tensor in memory at a time. */
function writeExpertShard(path: string, o: FixtureOptions): number {
  const tensors = expertTensors(o);
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const t of tensors) {
    const bytes = t.shape[0] * t.shape[1] * 2;
    header[t.name] = { dtype: "BF16", shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let text = JSON.stringify(header);
  const len = new TextEncoder().encode(text).length;
  text += " ".repeat(Math.ceil(len / HEADER_ALIGN) * HEADER_ALIGN - len);
  const json = new TextEncoder().encode(text);
  const prefix = new Uint8Array(HEADER_LENGTH_BYTES);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(json.length), true);
  const f = Deno.openSync(path, { write: true, create: true, truncate: true });
  try {
    writeAllSync(f, prefix);
    writeAllSync(f, json);
    const buf = new Uint16Array(o.inter * o.hidden); // every expert tensor has I x D elements
    for (const t of tensors) {
      fillFromTable(buf, t.table, (fnv1a(`${o.seed}:${t.name}`) ^ EXPERT_STREAM_SALT) >>> 0);
      writeAllSync(f, new Uint8Array(buf.buffer));
    }
  } finally {
    f.close();
  }
  return offset;
}

/**
 * Writes a checkpoint with the shapes of o into dir (created; must not exist), as described in
 * the module doc. Peak memory is the skeleton's (embeddings, attention, lm_head at 6 B a
 * parameter), not the experts'.
 */
export async function writeSyntheticCheckpoint(
  dir: string,
  o: FixtureOptions,
): Promise<SyntheticResult> {
  Deno.mkdirSync(dir, { recursive: true });
  const skeletonDir = `${dir}/.skeleton`;
  let t0 = performance.now();
  await writeFixture(skeletonDir, { ...o, inter: SKELETON_INTER, shards: 1 });
  const weightMap: Record<string, string> = {};
  let nonExpertBytes = 0;
  const st = openSafetensors(`${skeletonDir}/model.safetensors`);
  try {
    const keep: TensorToWrite[] = [];
    for (const e of st.entries) {
      if (e.name.includes(".mlp.experts.")) continue; // replaced by the real-size shard
      const v = st.view(e.name);
      keep.push({ name: v.name, dtype: v.dtype, shape: v.shape, data: v.bytes });
      weightMap[v.name] = NON_EXPERT_SHARD;
      nonExpertBytes += v.bytes.length;
    }
    await writeSafetensors(`${dir}/${NON_EXPERT_SHARD}`, keep, { format: "pt" });
  } finally {
    st.close();
  }
  const config = JSON.parse(Deno.readTextFileSync(`${skeletonDir}/config.json`));
  config.moe_intermediate_size = o.inter;
  config.intermediate_size = 4 * o.inter; // as the fixture writes it (unused by MoE layers)
  Deno.writeTextFileSync(`${dir}/config.json`, JSON.stringify(config, null, 2) + "\n");
  Deno.removeSync(skeletonDir, { recursive: true });
  const skeletonS = (performance.now() - t0) / 1000;

  t0 = performance.now();
  const expertBytes = writeExpertShard(`${dir}/${EXPERT_SHARD}`, o);
  for (const t of expertTensors(o)) weightMap[t.name] = EXPERT_SHARD;
  const index = { metadata: { total_size: nonExpertBytes + expertBytes }, weight_map: weightMap };
  Deno.writeTextFileSync(`${dir}/${INDEX_FILE}`, JSON.stringify(index, null, 2) + "\n");
  return { dir, expertBytes, skeletonS, expertsS: (performance.now() - t0) / 1000 };
}
