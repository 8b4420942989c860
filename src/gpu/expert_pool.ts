/**
 * GPU memory for experts: a fixed number of slots spread over pool buffers (each within the
 * device's storage-binding limit), and a slot table that tells the expert kernels where expert e
 * of layer l lives (or that it is absent). The kernels read the table on the GPU, so routing never
 * has to come back to the CPU to find weights.
 *
 * Pool buffers come in groups that one expert dispatch binds together, and each layer's experts
 * stay in their own group(s) (layer affinity): see ExpertPool.
 *
 * Slot layout (ExpertLayout): gate [I, D] | up [I, D] (one dtype) | pad | down [D, I] (its own
 * dtype) | pad. The kernels address weights in elements of their dtype, so each part must start on
 * a whole block of its dtype counted from the start of the pool buffer: down starts on a multiple
 * of its block bytes and the slot stride is a multiple of every part's block bytes. When the
 * packed record (gate | up | down, contiguous) already has this layout it is one upload.
 */
import type { DType, ModelConfig, ModelWeights } from "../types.ts";
import { WEIGHT_TEXTURE_WIDTH, type WeightDType } from "./ops_api.ts";
import { lcm, WEIGHT_DTYPES, weightBlock, weightBytes, weightElems } from "./weight_dtype.ts";
import { type StagedCopy, StagingRing } from "./staging.ts";
import { writeTextureBytes } from "./resident.ts";

/** Slot table value for "this expert is not in GPU memory". */
export const ABSENT = 0xffffffff;
/** Slots start on this byte boundary inside a pool buffer (WebGPU copy offsets need 4). */
const SLOT_ALIGN_BYTES = 256;
/** Float parts start on 16 bytes (the vector weight loaders read whole 16-byte words). */
const FLOAT_PART_ALIGN = 16;
/** Element offsets are u32 in the kernels: a pool buffer holds fewer elements than this. */
const MAX_ELEMENT_OFFSET = 2 ** 32;

function alignTo(n: number, unit: number): number {
  return Math.ceil(n / unit) * unit;
}

export class ExpertPoolError extends Error {
  override name = "ExpertPoolError";
}

/** Where one layer's experts' parts sit in a slot, in bytes and in elements of each part's
 * dtype. Layers may differ (a GGUF Q4_K_M file stores some layers' down projections in Q6_K); the
 * slot stride is shared. */
export interface ExpertLayout {
  gateDtype: WeightDType;
  downDtype: WeightDType;
  /** Bytes of gate | up | down as packed (contiguous). */
  recordBytes: number;
  /** Bytes of gate (= up) and of down. */
  gateBytes: number;
  downBytes: number;
  /** Byte offset of down inside a slot (2 * gateBytes, or the next block boundary after it). */
  downOffset: number;
  /** Slot stride in bytes (every layer's). */
  slotBytes: number;
  /** Slot stride and down's offset in elements of the parts' dtypes. */
  gateSlotElems: number;
  downSlotElems: number;
  downOffsetElems: number;
  /** Whether the record uploads as one write (down right after up). */
  contiguous: boolean;
}

/** Alignment unit of a part of this dtype: whole blocks, on 4 bytes (WebGPU write offsets). */
function partUnit(dtype: WeightDType): number {
  const b = weightBlock(dtype);
  return b.elems === 1 ? FLOAT_PART_ALIGN : lcm(b.bytes, 4);
}

/** The dtypes of one layer's experts: gate and up share one, down has its own. */
export interface ExpertDtypes {
  gate: DType;
  down: DType;
}

/** Slot layouts of every layer, given each layer's expert dtypes, with one shared slot stride. */
export function expertLayouts(config: ModelConfig, dtypes: ExpertDtypes[]): ExpertLayout[] {
  const { hiddenSize: D, moeIntermediateSize: I } = config;
  const parts = dtypes.map(({ gate, down }) => {
    const g = WEIGHT_DTYPES[gate], d = WEIGHT_DTYPES[down];
    const gateBytes = weightBytes(g, I * D), downBytes = weightBytes(d, D * I);
    const downOffset = alignTo(2 * gateBytes, partUnit(d));
    const contiguous = downOffset === 2 * gateBytes;
    if ((contiguous ? 2 * gateBytes + downBytes : Math.min(2 * gateBytes, downBytes)) % 4 !== 0) {
      throw new ExpertPoolError(
        `an expert's parts (${gateBytes} B gate and up in ${gate}, ${downBytes} B down in ` +
          `${down}) are not whole 4-byte words, which WebGPU uploads need; pack the experts ` +
          `in another type`,
      );
    }
    return { g, d, gateBytes, downBytes, downOffset, contiguous };
  });
  const units = parts.flatMap((p) => [partUnit(p.g), partUnit(p.d)]);
  const slotBytes = alignTo(
    Math.max(...parts.map((p) => p.downOffset + p.downBytes)),
    lcm(SLOT_ALIGN_BYTES, ...units),
  );
  return parts.map((p) => ({
    gateDtype: p.g,
    downDtype: p.d,
    recordBytes: 2 * p.gateBytes + p.downBytes,
    gateBytes: p.gateBytes,
    downBytes: p.downBytes,
    downOffset: p.downOffset,
    slotBytes,
    gateSlotElems: weightElems(p.g, slotBytes),
    downSlotElems: weightElems(p.d, slotBytes),
    downOffsetElems: weightElems(p.d, p.downOffset),
    contiguous: p.contiguous,
  }));
}

/** Every layer's slot layout for one dtype pair (tests, benchmarks). */
export function uniformLayouts(config: ModelConfig, gate: DType, down: DType): ExpertLayout[] {
  return expertLayouts(config, Array.from({ length: config.numLayers }, () => ({ gate, down })));
}

/** The slot layouts of a model's experts, from each layer's expert 0 (the packer and the loader
 * make every expert of a layer the same). */
export function modelExpertLayouts(w: ModelWeights): ExpertLayout[] {
  return expertLayouts(
    w.config,
    w.layers.map((layer) => {
      const e = layer.expert(0);
      return { gate: e.gate.dtype, down: e.down.dtype };
    }),
  );
}

/** One pool buffer: slots [firstSlot, firstSlot + slots), each slotBytes long. */
export type PoolBuffer =
  & { firstSlot: number; slots: number }
  & ({ buffer: GPUBuffer; texture?: undefined } | { texture: GPUTexture; buffer?: undefined });

/**
 * Pool buffers that one expert dispatch binds together: slots [firstSlot, firstSlot + slots),
 * pool i holding [firstSlot + i * slotsPerPool, ...) (only the last may be shorter), so a kernel
 * finds slot s in pool (s - firstSlot) / slotsPerPool. A layer dispatches once per group it uses,
 * whatever the number of pool buffers.
 */
export interface PoolGroup {
  firstSlot: number;
  slots: number;
  pools: PoolBuffer[];
}

/** Layers whose experts share one run of slots (the union of the same groups): a load for one of
 * them takes a free slot of this run or evicts an expert of one of these layers. */
export interface SlotDomain {
  layers: number[];
  firstSlot: number;
  slots: number;
}

/** Storage buffers an expert kernel binds besides its pools (activations, slot table, missed
 * flags, output, ...): what is left of the device's per-stage limit goes to pool buffers. */
export const EXPERT_FIXED_BINDINGS = 5;

export interface ExpertPoolOptions {
  /** Caps each pool buffer's bytes below the device's storage-binding limit (bench: force 128 MiB). */
  bindingLimit?: number;
  /** Pool buffers one expert dispatch binds (default: device.limits.maxStorageBuffersPerShaderStage
   * - EXPERT_FIXED_BINDINGS, with textures no more than maxStorageTexturesPerShaderStage, at least
   * 1). */
  poolBindings?: number;
  /** Place each layer's experts in its own group(s) of pools (default true). */
  affinity?: boolean;
  /** Records uploaded through buffers kept mapped (src/gpu/staging.ts), made on the first upload:
   * default STAGING_BUFFERS, fewer when a record is large (at most STAGING_MAX_BYTES in all); 0
   * uploads with queue.writeBuffer only (the baseline). */
  stagingBuffers?: number;
  /** Pool buffers as weight textures (TextureWeight's layout: 16-byte word i of the pool at texel
   * (i % WEIGHT_TEXTURE_WIDTH, i / WEIGHT_TEXTURE_WIDTH)) where every layer's parts allow it
   * (textureEligible); records then upload with queue.writeTexture. Default false. */
  textures?: boolean;
}

/** Whether pools of these layouts can be weight textures: float parts (the vector loaders read
 * 16-byte words, a texel each) whose rows, parts and slots all start on 16 bytes. */
export function textureEligible(config: ModelConfig, layouts: ExpertLayout[]): boolean {
  const { hiddenSize: D, moeIntermediateSize: I } = config;
  return layouts.every((x) =>
    [x.gateDtype, x.downDtype].every((d) =>
      weightBlock(d).elems === 1 && weightBytes(d, D) % 16 === 0 && weightBytes(d, I) % 16 === 0
    ) && [x.gateBytes, x.downOffset, x.slotBytes].every((b) => b % 16 === 0)
  );
}

/** Default staging buffers: one layer's top-k misses of a few steps in flight at once. */
export const STAGING_BUFFERS = 16;
/** Most host bytes the default staging buffers take (16 records of Qwen3-30B-A3B's 9.4 MB). */
const STAGING_MAX_BYTES = 256 << 20;

/** A domain's layers, slots and number of groups, before any buffer exists. */
interface DomainPlan {
  layers: number[];
  slots: number;
  groups: number;
}

/**
 * Layer affinity's layout: each layer a fair share of the slots (total / L, the first layers
 * taking the extra), consecutive layers packed into one group while their shares fit groupSlots
 * (a group's NB pools), a layer whose share does not fit alone spread over as few groups of its
 * own as hold it. Every layer thus dispatches as few groups as its share allows, and when every
 * expert fits each layer's domain holds all of its experts. Null when a domain could not hold one
 * layer's top-k (a step must fit in a domain): then layers share every slot.
 */
function layerDomains(
  total: number,
  L: number,
  groupSlots: number,
  topK: number,
): DomainPlan[] | null {
  const domains: DomainPlan[] = [];
  let open: DomainPlan | null = null;
  for (let l = 0; l < L; l++) {
    const share = Math.ceil(total * (l + 1) / L) - Math.ceil(total * l / L);
    if (open !== null && open.slots + share <= groupSlots) {
      open.layers.push(l);
      open.slots += share;
      continue;
    }
    open = { layers: [l], slots: share, groups: Math.max(1, Math.ceil(share / groupSlots)) };
    domains.push(open);
    // a layer spread over several groups shares them with no other layer
    if (open.groups > 1) open = null;
  }
  return domains.every((d) => d.slots >= topK) ? domains : null;
}

/**
 * Experts' GPU memory, in groups of at most poolBindings pool buffers (one expert dispatch binds
 * a group). With layer affinity each layer's experts live only in its own group(s), a fair share
 * of the slots (see layerDomains): layers share a group while their shares fit one, and a layer
 * whose share does not owns several, so a layer's expert kernels bind and dispatch only those,
 * normally one; the dispatches per layer do not grow with the number of pool buffers. Without
 * affinity (asked for, one group's worth of slots, or a share that cannot hold top-k) the slots
 * are split evenly over as few groups as the bindings allow, and every layer may use every slot
 * and dispatches every group.
 */
export class ExpertPool {
  readonly slotBytes: number;
  /** Every pool buffer, in slot order. */
  readonly pools: PoolBuffer[] = [];
  /** Groups of pool buffers one dispatch binds, in slot order. */
  readonly groups: PoolGroup[] = [];
  /** Slots per pool buffer (the last of a group may hold fewer). */
  readonly slotsPerPool: number;
  /** Pool buffers one expert dispatch binds at most (a group's size). */
  readonly poolBindings: number;
  /** Whether layers keep to their own groups (false: every layer uses every slot). */
  readonly affinity: boolean;
  /** Runs of slots shared by layers, in slot order; every layer is in exactly one. */
  readonly domains: SlotDomain[] = [];
  /** u32 [L*E]: slot of expert e of layer l at l*E + e, or ABSENT. */
  readonly slotTable: GPUBuffer;
  /** u32 [L*E]: set to 1 by the kernels when a routed expert was absent. */
  readonly missed: GPUBuffer;
  /** CPU mirror of slotTable. */
  readonly table: Uint32Array<ArrayBuffer>;
  /** Bytes of the largest record (a load moves its layer's record). */
  readonly expertBytes: number;
  /** Per layer: its groups [start, end) and its domain's index. */
  private groupRange: [number, number][] = [];
  private domainIndex: number[] = [];
  /** Staging buffers asked for (0: writeBuffer only) and the ring, made on the first upload. */
  private readonly stagingBuffers: number;
  private staging: StagingRing | null = null;
  /** Uploads that went through queue.writeBuffer (no staging, or the ring was busy). */
  private writeBufferUploads = 0;
  /** Uploads into pool textures (queue.writeTexture). */
  private writeTextureUploads = 0;
  /** Whether the pool buffers are weight textures (ExpertPoolOptions.textures). */
  readonly textures: boolean;

  constructor(
    private device: GPUDevice,
    readonly config: ModelConfig,
    /** Per layer. */
    readonly layouts: ExpertLayout[],
    readonly totalSlots: number,
    opts: ExpertPoolOptions = {},
  ) {
    const { numLayers: L, numExperts: E } = config;
    if (layouts.length !== L) {
      throw new ExpertPoolError(`${layouts.length} expert layouts for ${L} layers`);
    }
    if (!Number.isInteger(totalSlots) || totalSlots < 1) {
      throw new ExpertPoolError(`expert slots must be a whole number >= 1, got ${totalSlots}`);
    }
    this.expertBytes = Math.max(...layouts.map((x) => x.recordBytes));
    this.slotBytes = layouts[0].slotBytes;
    const stagingBuffers = opts.stagingBuffers ??
      Math.max(1, Math.min(STAGING_BUFFERS, Math.floor(STAGING_MAX_BYTES / this.expertBytes)));
    if (!Number.isInteger(stagingBuffers) || stagingBuffers < 0) {
      throw new ExpertPoolError(
        `staging buffers must be a whole number >= 0, got ${stagingBuffers}`,
      );
    }
    this.textures = (opts.textures ?? false) && textureEligible(config, layouts);
    this.stagingBuffers = this.textures ? 0 : stagingBuffers;
    const limit = Math.min(
      device.limits.maxStorageBufferBindingSize,
      device.limits.maxBufferSize,
      opts.bindingLimit ?? Infinity,
    );
    const maxElemsPerSlot = Math.max(
      ...layouts.flatMap((x) => [x.gateSlotElems, x.downSlotElems]),
    );
    // a pool texture holds at most maxTextureDimension2D rows of WEIGHT_TEXTURE_WIDTH words
    const textureBytes = device.limits.maxTextureDimension2D * WEIGHT_TEXTURE_WIDTH * 16;
    const perBuffer = Math.min(
      Math.floor(Math.min(limit, this.textures ? textureBytes : Infinity) / this.slotBytes),
      Math.floor((MAX_ELEMENT_OFFSET - 1) / maxElemsPerSlot),
    );
    if (perBuffer < 1) {
      throw new ExpertPoolError(
        `one expert (${this.slotBytes} B) exceeds the device's storage binding limit (${limit} B)`,
      );
    }
    this.slotsPerPool = perBuffer;
    // (pool textures: no more than the stage's storage textures either)
    const NB = opts.poolBindings ??
      Math.max(
        1,
        Math.min(
          device.limits.maxStorageBuffersPerShaderStage - EXPERT_FIXED_BINDINGS,
          this.textures ? device.limits.maxStorageTexturesPerShaderStage : Infinity,
        ),
      );
    if (!Number.isInteger(NB) || NB < 1) {
      throw new ExpertPoolError(`pool bindings must be a whole number >= 1, got ${NB}`);
    }
    this.poolBindings = NB;

    // without affinity (or with one group's worth of slots): as few groups as NB bindings allow,
    // every layer in all of them
    const fewest = Math.ceil(Math.ceil(totalSlots / perBuffer) / NB);
    const plan = (opts.affinity ?? true) && fewest > 1
      ? layerDomains(totalSlots, L, NB * perBuffer, config.topK)
      : null;
    this.affinity = plan !== null;
    const domains = plan ?? [{ layers: [...Array(L).keys()], slots: totalSlots, groups: fewest }];
    let first = 0;
    for (const d of domains) {
      const domain = { layers: d.layers, firstSlot: first, slots: d.slots };
      const range: [number, number] = [this.groups.length, this.groups.length + d.groups];
      // the domain's slots over its groups as evenly as possible, the first ones taking the extra
      for (let g = 0; g < d.groups; g++) {
        const slots = Math.floor(d.slots / d.groups) + (g < d.slots % d.groups ? 1 : 0);
        const group: PoolGroup = { firstSlot: first, slots, pools: [] };
        for (let s = first; s < first + slots; s += perBuffer) {
          const pool = this.createPool(s, Math.min(perBuffer, first + slots - s));
          group.pools.push(pool);
          this.pools.push(pool);
        }
        this.groups.push(group);
        first += slots;
      }
      for (const l of d.layers) {
        this.groupRange[l] = range;
        this.domainIndex[l] = this.domains.length;
      }
      this.domains.push(domain);
    }

    this.table = new Uint32Array(L * E).fill(ABSENT);
    this.slotTable = device.createBuffer({
      label: "experts.slot_table",
      size: this.table.byteLength,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    });
    device.queue.writeBuffer(this.slotTable, 0, this.table);
    this.missed = device.createBuffer({
      label: "experts.missed",
      size: this.table.byteLength,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
    });
  }

  private createPool(firstSlot: number, slots: number): PoolBuffer {
    const label = `experts.pool${this.pools.length}`;
    if (this.textures) {
      const words = (slots * this.slotBytes) / 16;
      const texture = this.device.createTexture({
        label,
        size: [WEIGHT_TEXTURE_WIDTH, Math.ceil(words / WEIGHT_TEXTURE_WIDTH)],
        format: "rgba32uint",
        usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
      });
      return { texture, firstSlot, slots };
    }
    const buffer = this.device.createBuffer({
      label,
      size: slots * this.slotBytes,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    });
    return { buffer, firstSlot, slots };
  }

  /** The groups layer l's experts live in (the ones its expert kernels dispatch). */
  layerGroups(l: number): PoolGroup[] {
    const [start, end] = this.groupRange[l];
    return this.groups.slice(start, end);
  }

  /** Index in `domains` of the slots layer l's experts may take. */
  domainOf(l: number): number {
    return this.domainIndex[l];
  }

  /** Throws ExpertPoolError unless record is one expert's gate|up|down bytes of this layer. */
  checkRecord(layer: number, record: Uint8Array): void {
    const want = this.layouts[layer].recordBytes;
    if (record.byteLength !== want) {
      throw new ExpertPoolError(
        `expert record of ${record.byteLength} B for layer ${layer}, want ${want}`,
      );
    }
  }

  /**
   * Writes one expert's gate|up|down bytes (contiguous) into a slot, inside WebGPU error scopes
   * (validation, out-of-memory: the staging copy can fail). WebGPU reports such errors only
   * asynchronously: the returned promise gives the error's message, or null when the write was
   * accepted. It never rejects (a lost device is reported as a message too).
   */
  uploadRecord(slot: number, layer: number, record: Uint8Array): Promise<string | null> {
    const { pool, offset } = this.locate(slot);
    this.checkRecord(layer, record);
    const device = this.device;
    const layout = this.layouts[layer];
    device.pushErrorScope("out-of-memory");
    device.pushErrorScope("validation");
    let scopes: Promise<(GPUError | null)[]>;
    try {
      const gateUp = 2 * layout.gateBytes;
      const parts = layout.contiguous
        ? [{ dstOffset: offset, srcOffset: 0, size: record.byteLength }]
        : [
          { dstOffset: offset, srcOffset: 0, size: gateUp },
          {
            dstOffset: offset + layout.downOffset,
            srcOffset: gateUp,
            size: record.byteLength - gateUp,
          },
        ];
      if (pool.texture) {
        this.writeTextureUploads++; // (no staging ring for textures)
        for (const c of parts) {
          writeTextureBytes(device, pool.texture, c.dstOffset, record, c.srcOffset, c.size);
        }
      } else {
        const buffer = pool.buffer;
        const copies: StagedCopy[] = parts.map((c) => ({ dst: buffer, ...c }));
        if (this.stagingBuffers > 0) {
          this.staging ??= new StagingRing(device, this.expertBytes, this.stagingBuffers);
        }
        if (this.staging === null || !this.staging.write(record, copies)) {
          this.writeBufferUploads++;
          const bytes = record as Uint8Array<ArrayBuffer>;
          for (const c of copies) {
            device.queue.writeBuffer(c.dst, c.dstOffset, bytes, c.srcOffset, c.size);
          }
        }
      }
    } finally {
      const validation = device.popErrorScope();
      const oom = device.popErrorScope();
      scopes = Promise.all([validation, oom]);
    }
    return scopes.then(
      ([validation, oom]) => (validation ?? oom)?.message ?? null,
      (e) => `error scope failed: ${(e as Error).message}`,
    );
  }

  /** Points (layer, expert) at slot (or ABSENT) in the GPU's slot table. */
  assign(layer: number, expert: number, slot: number): void {
    const i = layer * this.config.numExperts + expert;
    this.table[i] = slot;
    this.device.queue.writeBuffer(this.slotTable, i * 4, this.table, i, 1);
  }

  private locate(slot: number): { pool: PoolBuffer; offset: number } {
    for (const p of this.pools) {
      if (slot >= p.firstSlot && slot < p.firstSlot + p.slots) {
        return { pool: p, offset: (slot - p.firstSlot) * this.slotBytes };
      }
    }
    throw new ExpertPoolError(`slot ${slot} out of range (${this.totalSlots} slots)`);
  }

  /** The staging ring's buffers (all, free now) and uploads: staged, refused by a busy ring,
   * all that went through writeBuffer (refused ones and every one without staging), and those
   * into pool textures (writeTexture). */
  get stagingStats(): {
    buffers: number;
    available: number;
    staged: number;
    busy: number;
    writeBuffer: number;
    writeTexture: number;
  } {
    const r = this.staging;
    return {
      buffers: r?.size ?? 0,
      available: r?.available ?? 0,
      staged: r?.stats.staged ?? 0,
      busy: r?.stats.busy ?? 0,
      writeBuffer: this.writeBufferUploads,
      writeTexture: this.writeTextureUploads,
    };
  }

  destroy(): void {
    this.staging?.destroy();
    for (const p of this.pools) (p.buffer ?? p.texture).destroy();
    this.slotTable.destroy();
    this.missed.destroy();
  }
}

/** Share of the probed expert capacity left free when not every expert fits: the device's memory
 * is also what later allocations (KV slabs made on first use, staging of uploads) come from. */
export const EXPERT_HEADROOM = 0.1;

/**
 * The largest n in [lo, hi] for which `fits(n)` holds, given that fits is monotone (true up to
 * some n, false above), by bisection: O(log(hi - lo)) probes. Returns lo - 1 when none fits.
 */
export async function largestFitting(
  lo: number,
  hi: number,
  fits: (n: number) => Promise<boolean>,
): Promise<number> {
  let good = lo - 1, bad = hi + 1;
  while (bad - good > 1) {
    const mid = good + Math.floor((bad - good) / 2);
    if (await fits(mid)) good = mid;
    else bad = mid;
  }
  return good;
}

/**
 * The default expert budget: every expert when the device can allocate them all, else the largest
 * count whose pool buffers it can allocate (bisection, not halving, so at most a slot's worth of
 * memory is missed) less EXPERT_HEADROOM of it, never below top-k. The resident weights are
 * allocated before this runs, so their share is already taken.
 */
export async function fittingExpertSlots(
  device: GPUDevice,
  config: ModelConfig,
  layouts: ExpertLayout[],
  /** The options the model's pool will be made with (its buffers are what must fit). */
  opts: ExpertPoolOptions = {},
): Promise<number> {
  const fits = async (slots: number) => {
    device.pushErrorScope("out-of-memory");
    let probe: ExpertPool;
    try {
      probe = new ExpertPool(device, config, layouts, slots, opts);
    } catch (e) {
      await device.popErrorScope(); // a pool the options rule out: leave the scopes balanced
      throw e;
    }
    const error = await device.popErrorScope();
    probe.destroy();
    return error === null;
  };
  const total = config.numLayers * config.numExperts;
  if (await fits(total)) return total;
  const most = await largestFitting(config.topK, total - 1, fits);
  const slots = Math.max(config.topK, Math.floor(most * (1 - EXPERT_HEADROOM)));
  console.error(
    `${total} expert slots do not fit the device: at most ${most} do; using ${slots} ` +
      `(${EXPERT_HEADROOM * 100}% left for other allocations)`,
  );
  return slots;
}
