/**
 * Reusable upload memory for expert records: a few MAP_WRITE | COPY_SRC buffers that stay mapped
 * while free. An upload copies the record into a free one, unmaps it, copies it into the pool slot
 * on the GPU (one small submit) and asks for it to be mapped again; it is free once that mapping
 * resolves. queue.writeBuffer instead copies into fresh staging memory for every call: on this
 * machine a warm expert load (checksum included) through the ring runs at 1.04-1.22x a plain
 * writeBuffer of the same bytes, 0.72-0.81x through writeBuffer (`bench/mod.ts --transfers-only`
 * measures both). When every buffer is busy (a burst of more loads than buffers, or the last
 * mappings not back yet) `write` returns false and the caller falls back to writeBuffer: the ring
 * never waits. Deno's mapAsync may block in a device poll until submitted work is done; the ring
 * asks for the mapping right after its copy, when a load waits for the GPU anyway.
 */

/** One region of an upload: `size` bytes of the source from `srcOffset` to `dst` at `dstOffset`. */
export interface StagedCopy {
  dst: GPUBuffer;
  dstOffset: number;
  srcOffset: number;
  size: number;
}

/** Counters of a ring's uploads. */
export interface StagingStats {
  /** Uploads that went through a mapped buffer. */
  staged: number;
  /** Uploads refused because no buffer was free (the caller used writeBuffer). */
  busy: number;
}

/** WebGPU copies move whole 4-byte words, and mapped ranges start on 8 bytes. */
const COPY_ALIGN = 8;

export class StagingRing {
  readonly stats: StagingStats = { staged: 0, busy: 0 };
  private readonly free: GPUBuffer[] = [];
  private readonly all: GPUBuffer[] = [];
  private destroyed = false;

  /** `count` buffers of `bufferBytes` each (a record's bytes, rounded up to 8). */
  constructor(private readonly device: GPUDevice, readonly bufferBytes: number, count: number) {
    if (!Number.isInteger(count) || count < 0) {
      throw new RangeError(`staging buffers: a whole number >= 0, got ${count}`);
    }
    const size = Math.ceil(bufferBytes / COPY_ALIGN) * COPY_ALIGN;
    for (let i = 0; i < count; i++) {
      const b = device.createBuffer({
        label: `expert staging ${i}`,
        size,
        usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC,
        mappedAtCreation: true,
      });
      this.all.push(b);
      this.free.push(b);
    }
  }

  /** Buffers free now (mapped, not in use). */
  get available(): number {
    return this.free.length;
  }

  /** Total buffers of the ring. */
  get size(): number {
    return this.all.length;
  }

  /**
   * Copies the regions of `src` into their destinations through one free buffer (the regions
   * packed one after another), submitted at once: ordered before any later submit, as
   * writeBuffer is. Returns false, having done nothing, when no buffer is free or the regions do
   * not fit one.
   */
  write(src: Uint8Array, copies: StagedCopy[]): boolean {
    const total = copies.reduce((s, c) => s + c.size, 0);
    if (this.destroyed || total > this.bufferBytes || this.free.length === 0) {
      this.stats.busy++;
      return false;
    }
    const b = this.free.pop()!;
    const view = new Uint8Array(b.getMappedRange(0, Math.ceil(total / COPY_ALIGN) * COPY_ALIGN));
    let at = 0;
    for (const c of copies) {
      view.set(src.subarray(c.srcOffset, c.srcOffset + c.size), at);
      at += c.size;
    }
    b.unmap();
    const enc = this.device.createCommandEncoder({ label: "expert staging copy" });
    at = 0;
    for (const c of copies) {
      enc.copyBufferToBuffer(b, at, c.dst, c.dstOffset, c.size);
      at += c.size;
    }
    this.device.queue.submit([enc.finish()]);
    this.stats.staged++;
    b.mapAsync(GPUMapMode.WRITE).then(
      () => {
        if (!this.destroyed) this.free.push(b);
      },
      // destroyed or device lost: the buffer is never used again
      () => {},
    );
    return true;
  }

  destroy(): void {
    this.destroyed = true;
    this.free.length = 0;
    for (const b of this.all) b.destroy();
  }
}
