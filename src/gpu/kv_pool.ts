/**
 * KV memory as a fixed pool of per-sequence slabs (a slab: every layer's K and V for maxContext
 * positions, and the sequence's token ids). A sequence owns one slab while it runs; a freed slab
 * keeps its contents, so a later sequence whose prompt starts with the same tokens takes it and
 * computes only the rest (prompt-prefix reuse; a KV row depends only on the tokens before it and
 * its position, so the reused rows equal a cold prefill's bit for bit).
 *
 * Slabs are grouped into buffers that fit one storage binding; a group's buffers are made the
 * first time one of its slabs is used. Token ids of every slab live in one buffer, ids[slab,
 * idsStride], which the sampler binds per slab (idsStride keeps each slab's ids on a 256-byte
 * storage offset).
 */
import type { ModelConfig } from "../types.ts";
import type { Op } from "./ops_api.ts";

/** Storage binding offsets must be multiples of 256 bytes (WebGPU's default alignment). */
const IDS_ALIGN_WORDS = 64;
/** Most slabs per buffer group: a step records attention once per group it has tokens in. */
const MAX_SLABS_PER_GROUP = 8;

/** All positions are taken: a request must wait (or be refused) until a sequence ends. */
export class KvPoolFullError extends Error {
  override name = "KvPoolFullError";
}

/** One buffer group: slabs [firstSlab, firstSlab + slabs), K and V per layer, their ops. */
export interface KvGroup {
  firstSlab: number;
  slabs: number;
  k: GPUBuffer[];
  v: GPUBuffer[];
  /** Per layer: KV store of the step's tokens of these slabs and their attention. */
  ops: Op[][];
}

interface SlabState {
  busy: boolean;
  /** Tokens whose KV rows (and ids) the slab holds, from position 0. */
  cached: number[];
  /** When it was last released (for choosing which cached prefix to overwrite). */
  released: number;
}

export class KvPool {
  readonly idsStride: number;
  readonly ids: GPUBuffer;
  readonly slabsPerGroup: number;
  readonly slabBytes: number;
  private groups: (KvGroup | null)[];
  private state: SlabState[];
  private clock = 0;

  constructor(
    private device: GPUDevice,
    private config: ModelConfig,
    readonly positions: number,
    readonly slabs: number,
    bindingLimit: number,
    private prepare: (l: number, k: GPUBuffer, v: GPUBuffer, first: number, n: number) => Op[],
  ) {
    const width = config.numKvHeads * config.headDim;
    const layerBytes = positions * width * 4;
    this.slabBytes = 2 * config.numLayers * layerBytes;
    this.slabsPerGroup = Math.max(
      1,
      Math.min(MAX_SLABS_PER_GROUP, Math.floor(bindingLimit / layerBytes)),
    );
    if (layerBytes > bindingLimit) {
      throw new RangeError(
        `one layer's KV for ${positions} positions (${layerBytes} B) exceeds the storage-binding ` +
          `limit (${bindingLimit} B); use a shorter --max-context`,
      );
    }
    this.idsStride = Math.ceil((positions + 1) / IDS_ALIGN_WORDS) * IDS_ALIGN_WORDS;
    this.ids = device.createBuffer({
      label: "kv.ids",
      size: slabs * this.idsStride * 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    this.groups = Array(Math.ceil(slabs / this.slabsPerGroup)).fill(null);
    this.state = Array.from({ length: slabs }, () => ({ busy: false, cached: [], released: 0 }));
  }

  /** Slabs not owned by a sequence. */
  get free(): number {
    return this.state.filter((s) => !s.busy).length;
  }

  /** Groups whose buffers exist (for tests and stats). */
  get groupsMade(): number {
    return this.groups.filter((g) => g !== null).length;
  }

  /**
   * A free slab for a sequence whose tokens will start with `prompt`: the one whose cached tokens
   * share the longest prefix with it (at most prompt.length - 1, so a token is left to feed), else
   * the one released longest ago. Returns the slab and how many positions it reuses; throws
   * KvPoolFullError when every slab is owned.
   */
  acquire(prompt: readonly number[] = []): { slab: number; reuse: number } {
    let best = -1, bestReuse = -1;
    for (let s = 0; s < this.slabs; s++) {
      const st = this.state[s];
      if (st.busy) continue;
      const reuse = commonPrefix(st.cached, prompt, prompt.length - 1);
      if (
        reuse > bestReuse ||
        (reuse === bestReuse && st.released < this.state[best].released)
      ) {
        best = s;
        bestReuse = reuse;
      }
    }
    if (best < 0) throw new KvPoolFullError(`all ${this.slabs} KV slabs are in use`);
    this.state[best].busy = true;
    this.group(best);
    return { slab: best, reuse: Math.max(0, bestReuse) };
  }

  /** Gives a slab back, remembering the tokens its KV rows hold (for prefix reuse). */
  release(slab: number, cached: readonly number[]): void {
    const st = this.state[slab];
    st.busy = false;
    st.cached = cached.slice(0, this.positions);
    st.released = ++this.clock;
  }

  /** The group that holds `slab`, its buffers and ops made on first use. */
  group(slab: number): KvGroup {
    const i = Math.floor(slab / this.slabsPerGroup);
    let g = this.groups[i];
    if (g === null) {
      const c = this.config;
      const firstSlab = i * this.slabsPerGroup;
      const slabs = Math.min(this.slabsPerGroup, this.slabs - firstSlab);
      const bytes = slabs * this.positions * c.numKvHeads * c.headDim * 4;
      const mk = (kind: string, l: number) =>
        this.device.createBuffer({
          label: `kv.${kind}.${l}.slabs${firstSlab}`,
          size: bytes,
          usage: GPUBufferUsage.STORAGE,
        });
      const k = Array.from({ length: c.numLayers }, (_, l) => mk("k", l));
      const v = Array.from({ length: c.numLayers }, (_, l) => mk("v", l));
      const ops = k.map((kl, l) => this.prepare(l, kl, v[l], firstSlab, slabs));
      g = { firstSlab, slabs, k, v, ops };
      this.groups[i] = g;
    }
    return g;
  }

  /** The groups holding these slabs, each once, in slab order. */
  groupsOf(slabs: Iterable<number>): KvGroup[] {
    const seen = new Set<number>();
    for (const s of slabs) seen.add(Math.floor(s / this.slabsPerGroup));
    return [...seen].sort((a, b) => a - b).map((i) => this.group(i * this.slabsPerGroup));
  }

  destroy(): void {
    this.ids.destroy();
    for (const g of this.groups) if (g) { for (const b of [...g.k, ...g.v]) b.destroy(); }
  }
}

/** Bytes of one slab: every layer's K and V for `positions` positions (f32). */
export function kvSlabBytes(config: ModelConfig, positions: number): number {
  return 2 * config.numLayers * positions * config.numKvHeads * config.headDim * 4;
}

/**
 * The most slabs, up to `wanted`, whose KV buffers the device can allocate (halving from
 * `wanted` on out-of-memory): the default number of sequences decoded together. WebGPU tells no
 * memory size, so this allocates (in buffers of at most `bindingLimit` bytes) and frees.
 */
export async function fittingSlabs(
  device: GPUDevice,
  config: ModelConfig,
  positions: number,
  wanted: number,
  bindingLimit: number,
): Promise<number> {
  const layerBytes = positions * config.numKvHeads * config.headDim * 4;
  const perBuffer = Math.max(1, Math.floor(bindingLimit / layerBytes));
  for (let n = wanted; n >= 1; n = Math.floor(n / 2)) {
    device.pushErrorScope("out-of-memory");
    const made: GPUBuffer[] = [];
    for (let s = 0; s < n; s += perBuffer) {
      const bytes = Math.min(perBuffer, n - s) * layerBytes;
      for (let i = 0; i < 2 * config.numLayers; i++) {
        made.push(device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE }));
      }
    }
    const error = await device.popErrorScope();
    for (const b of made) b.destroy();
    if (error === null) return n;
    console.error(
      `KV caches of ${n} sequences do not fit the device (${error.message}); trying fewer`,
    );
  }
  return 1;
}

/** Length of the common prefix of a and b, at most `max`. */
function commonPrefix(a: readonly number[], b: readonly number[], max: number): number {
  const n = Math.min(a.length, b.length, Math.max(0, max));
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
