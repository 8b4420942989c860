/**
 * GPU memory for experts: a fixed number of slots spread over pool buffers (each within the
 * device's storage-binding limit), and a slot table that tells the expert kernels where expert e
 * of layer l lives (or that it is absent). The kernels read the table on the GPU, so routing never
 * has to come back to the CPU to find weights.
 *
 * Slot layout (elements of the experts' dtype): gate [I, D] | up [I, D] | down [D, I] | padding.
 */
import type { ExpertWeights, ModelConfig } from "../types.ts";
import type { WeightDType } from "./ops_api.ts";

/** Slot table value for "this expert is not in GPU memory". */
export const ABSENT = 0xffffffff;
/** Slots start on this byte boundary inside a pool buffer (WebGPU copy offsets need 4). */
const SLOT_ALIGN_BYTES = 256;

export const BYTES_PER_ELEM: Record<WeightDType, number> = { f32: 4, bf16: 2, f16: 2 };

/** Bytes of one slot for this model's experts stored as dtype (checkpoint dtype names). */
export function slotBytes(config: ModelConfig, dtype: "F32" | "BF16" | "F16"): number {
  const elem = dtype === "F32" ? 4 : 2;
  const bytes = 3 * config.moeIntermediateSize * config.hiddenSize * elem;
  return Math.ceil(bytes / SLOT_ALIGN_BYTES) * SLOT_ALIGN_BYTES;
}

export class ExpertPoolError extends Error {
  override name = "ExpertPoolError";
}

export interface PoolBuffer {
  buffer: GPUBuffer;
  firstSlot: number;
  slots: number;
}

export class ExpertPool {
  readonly slotElems: number;
  readonly slotBytes: number;
  readonly pools: PoolBuffer[] = [];
  /** u32 [L*E]: slot of expert e of layer l at l*E + e, or ABSENT. */
  readonly slotTable: GPUBuffer;
  /** u32 [L*E]: set to 1 by the kernels when a routed expert was absent. */
  readonly missed: GPUBuffer;
  /** CPU mirror of slotTable. */
  readonly table: Uint32Array<ArrayBuffer>;
  readonly expertBytes: number;

  constructor(
    private device: GPUDevice,
    readonly config: ModelConfig,
    readonly dtype: WeightDType,
    readonly totalSlots: number,
  ) {
    const { hiddenSize: D, moeIntermediateSize: I, numLayers: L, numExperts: E } = config;
    const elem = BYTES_PER_ELEM[dtype];
    this.expertBytes = 3 * I * D * elem;
    this.slotBytes = Math.ceil(this.expertBytes / SLOT_ALIGN_BYTES) * SLOT_ALIGN_BYTES;
    this.slotElems = this.slotBytes / elem;
    const limit = Math.min(
      device.limits.maxStorageBufferBindingSize,
      device.limits.maxBufferSize,
    );
    const perBuffer = Math.floor(limit / this.slotBytes);
    if (perBuffer < 1) {
      throw new ExpertPoolError(
        `one expert (${this.slotBytes} B) exceeds the device's storage binding limit (${limit} B)`,
      );
    }
    for (let first = 0; first < totalSlots; first += perBuffer) {
      const slots = Math.min(perBuffer, totalSlots - first);
      const buffer = device.createBuffer({
        label: `experts.pool${this.pools.length}`,
        size: slots * this.slotBytes,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
      this.pools.push({ buffer, firstSlot: first, slots });
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

  /** Throws ExpertPoolError unless record is one expert's gate|up|down bytes for this pool. */
  checkRecord(record: Uint8Array): void {
    if (record.byteLength !== this.expertBytes) {
      throw new ExpertPoolError(
        `expert record of ${record.byteLength} B, want ${this.expertBytes}`,
      );
    }
  }

  /**
   * Writes one expert's gate|up|down bytes (contiguous) into a slot, inside WebGPU error scopes
   * (validation, out-of-memory: the staging copy can fail). WebGPU reports such errors only
   * asynchronously: the returned promise gives the error's message, or null when the write was
   * accepted. It never rejects (a lost device is reported as a message too).
   */
  uploadRecord(slot: number, record: Uint8Array): Promise<string | null> {
    const { buffer, offset } = this.locate(slot);
    this.checkRecord(record);
    const device = this.device;
    device.pushErrorScope("out-of-memory");
    device.pushErrorScope("validation");
    let scopes: Promise<(GPUError | null)[]>;
    try {
      device.queue.writeBuffer(buffer, offset, record as Uint8Array<ArrayBuffer>);
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

  /** Writes one expert's three projections (separate views) into a slot. */
  uploadExpert(slot: number, w: ExpertWeights): void {
    const { buffer, offset } = this.locate(slot);
    let at = offset;
    for (const t of [w.gate, w.up, w.down]) {
      this.device.queue.writeBuffer(buffer, at, t.bytes as Uint8Array<ArrayBuffer>);
      at += t.bytes.byteLength;
    }
  }

  /** Points (layer, expert) at slot (or ABSENT) in the GPU's slot table. */
  assign(layer: number, expert: number, slot: number): void {
    const i = layer * this.config.numExperts + expert;
    this.table[i] = slot;
    this.device.queue.writeBuffer(this.slotTable, i * 4, this.table, i, 1);
  }

  private locate(slot: number): { buffer: GPUBuffer; offset: number } {
    for (const p of this.pools) {
      if (slot >= p.firstSlot && slot < p.firstSlot + p.slots) {
        return { buffer: p.buffer, offset: (slot - p.firstSlot) * this.slotBytes };
      }
    }
    throw new ExpertPoolError(`slot ${slot} out of range (${this.totalSlots} slots)`);
  }

  destroy(): void {
    for (const p of this.pools) p.buffer.destroy();
    this.slotTable.destroy();
    this.missed.destroy();
  }
}

/**
 * The default expert budget: every expert when the device can allocate them all, else the largest
 * count (halving) whose pool buffers it can allocate, leaving the rest of memory to the resident
 * weights' share (allocated first in the constructor).
 */
export async function fittingExpertSlots(
  device: GPUDevice,
  config: ModelConfig,
  dtype: WeightDType,
): Promise<number> {
  const total = config.numLayers * config.numExperts;
  for (let slots = total; slots >= config.topK; slots = Math.floor(slots / 2)) {
    device.pushErrorScope("out-of-memory");
    const probe = new ExpertPool(device, config, dtype, slots);
    const error = await device.popErrorScope();
    probe.destroy();
    if (error === null) return slots;
    console.error(`${slots} expert slots do not fit the device (${error.message}); trying fewer`);
  }
  return config.topK;
}
