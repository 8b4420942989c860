/**
 * Counts what really reaches WebGPU: compute dispatches, compute passes, queue submits, buffer
 * copies, writeBuffer uploads and MAP_READ mappings (with their bytes), by wrapping the methods
 * of the WebGPU classes' prototypes (Deno exposes GPUComputePassEncoder, GPUCommandEncoder,
 * GPUQueue and GPUBuffer as globals with --unstable-webgpu; their methods are own properties of
 * those prototypes, so every encoder, queue and buffer, made before or after installation, goes
 * through the wrappers). A wrapper calls the original with the same `this`, so WebGPU's brand
 * checks and private state are untouched; it counts after the original returns (a call that
 * throws is not counted). With a `mark` predicate on pipeline labels, setPipeline and a pass's
 * end are wrapped too, to count the dispatches of marked pipelines and of the passes that hold
 * them (e.g. a model's layers: the passes that run its expert kernels).
 *
 *   const counters = installGpuCounters();
 *   const before = counters.snapshot();
 *   await work();
 *   const perToken = perUnit(diffCounts(counters.snapshot(), before), tokens);
 *   counters.uninstall();
 *
 * One installation at a time (a second one would count everything twice): installGpuCounters
 * throws while one is installed. Counting costs a few additions per call.
 */

/** Totals since installation (or the last reset). */
export interface GpuCounts {
  /** dispatchWorkgroups + dispatchWorkgroupsIndirect calls. */
  dispatches: number;
  /** Of those, dispatchWorkgroupsIndirect. */
  indirectDispatches: number;
  /** beginComputePass calls. */
  passes: number;
  /** queue.submit calls (an empty submit counts too). */
  submits: number;
  /** Command buffers handed to queue.submit. */
  commandBuffers: number;
  /** copyBufferToBuffer calls, and the bytes they copy. */
  copies: number;
  copyBytes: number;
  /** clearBuffer calls. */
  clears: number;
  /** queue.writeBuffer calls, and the bytes they upload. */
  writeBuffers: number;
  writeBytes: number;
  /** mapAsync calls with GPUMapMode.READ, and the bytes they map (size, else buffer.size -
   * offset): the bytes read back. */
  mapReads: number;
  readBytes: number;
  /** With a `mark` predicate (GpuCounterOptions): dispatches of marked pipelines, the passes
   * (ended) that dispatched at least one of them, and every dispatch of those passes. */
  markedDispatches: number;
  markedPasses: number;
  dispatchesInMarkedPasses: number;
}

export interface GpuCounterOptions {
  /** Marks pipelines by their label (e.g. a model's expert kernels): see GpuCounts. */
  mark?: (pipelineLabel: string) => boolean;
}

/** Every counter at zero. */
export function zeroCounts(): GpuCounts {
  return {
    dispatches: 0,
    indirectDispatches: 0,
    passes: 0,
    submits: 0,
    commandBuffers: 0,
    copies: 0,
    copyBytes: 0,
    clears: 0,
    writeBuffers: 0,
    writeBytes: 0,
    mapReads: 0,
    readBytes: 0,
    markedDispatches: 0,
    markedPasses: 0,
    dispatchesInMarkedPasses: 0,
  };
}

/** after - before, field by field. */
export function diffCounts(after: GpuCounts, before: GpuCounts): GpuCounts {
  const out = zeroCounts();
  for (const k of Object.keys(out) as (keyof GpuCounts)[]) out[k] = after[k] - before[k];
  return out;
}

/** Every field divided by n (e.g. decoded tokens: counts per token). */
export function perUnit(counts: GpuCounts, n: number): GpuCounts {
  const out = zeroCounts();
  for (const k of Object.keys(out) as (keyof GpuCounts)[]) out[k] = counts[k] / n;
  return out;
}

/** (after - before) / n: what one token (step, layer...) costs, from two snapshots. */
export function countsPer(after: GpuCounts, before: GpuCounts, n: number): GpuCounts {
  return perUnit(diffCounts(after, before), n);
}

export interface GpuCounters {
  /** A copy of the totals so far. */
  snapshot(): GpuCounts;
  /** Sets every total back to zero. */
  reset(): void;
  /** Puts the original methods back (idempotent); the totals stay readable. */
  uninstall(): void;
  /** Counts of what `fn` does (the difference of snapshots around it) and its result. */
  measure<T>(fn: () => Promise<T>): Promise<{ value: T; counts: GpuCounts }>;
}

/** The installation in force, if any. */
let installed: GpuCounters | null = null;

/** The counters installed now, or null (lets a library function count only when asked to). */
export function activeGpuCounters(): GpuCounters | null {
  return installed;
}

/** Elements of a writeBuffer `data` argument, and bytes per element (spec: an ArrayBuffer or a
 * DataView counts bytes, a typed array its elements). */
function dataElements(data: unknown): { length: number; elemBytes: number } {
  if (ArrayBuffer.isView(data)) {
    if (data instanceof DataView) return { length: data.byteLength, elemBytes: 1 };
    const t = data as unknown as { length: number; BYTES_PER_ELEMENT: number };
    return { length: t.length, elemBytes: t.BYTES_PER_ELEMENT };
  }
  return { length: (data as ArrayBufferLike).byteLength, elemBytes: 1 };
}

/** Bytes a writeBuffer(buffer, bufferOffset, data, dataOffset?, size?) call uploads. */
export function writeBufferBytes(data: unknown, dataOffset?: number, size?: number): number {
  const { length, elemBytes } = dataElements(data);
  return (size ?? length - (dataOffset ?? 0)) * elemBytes;
}

/** Bytes a copyBufferToBuffer call copies, for both overloads: (src, srcOffset, dst, dstOffset,
 * size?) and (src, dst, size?); a missing size means the rest of the source. */
export function copyBytes(args: unknown[]): number {
  const src = args[0] as GPUBuffer;
  if (typeof args[1] === "number") {
    const size = args[4] as number | undefined;
    return size ?? src.size - args[1];
  }
  const size = args[2] as number | undefined;
  return size ?? src.size;
}

type AnyFn = (this: unknown, ...args: unknown[]) => unknown;

/**
 * Wraps the WebGPU prototypes' methods and starts counting from zero. Throws when the WebGPU
 * classes are missing (run with --unstable-webgpu) or counters are already installed.
 */
export function installGpuCounters(opts: GpuCounterOptions = {}): GpuCounters {
  if (installed) throw new Error("GPU counters are already installed; uninstall them first");
  const g = globalThis as unknown as Record<string, { prototype: object } | undefined>;
  const protos = {
    pass: g.GPUComputePassEncoder?.prototype,
    encoder: g.GPUCommandEncoder?.prototype,
    queue: g.GPUQueue?.prototype,
    buffer: g.GPUBuffer?.prototype,
  };
  for (const [k, p] of Object.entries(protos)) {
    if (!p) throw new Error(`no WebGPU ${k} class: run Deno with --unstable-webgpu`);
  }
  let c = zeroCounts();
  const restore: (() => void)[] = [];
  const mark = opts.mark;
  /** Whether each pipeline seen is marked (its label read once). */
  const marked = new WeakMap<object, boolean>();
  /** Compute passes begun since installation, while they record. */
  interface PassState {
    /** Whether the pipeline set last is marked. */
    marked: boolean;
    dispatches: number;
    sawMarked: boolean;
  }
  const passes = new WeakMap<object, PassState>();
  const dispatched = (pass: unknown) => {
    c.dispatches++;
    const p = passes.get(pass as object);
    if (!p) return;
    p.dispatches++;
    if (p.marked) {
      c.markedDispatches++;
      p.sawMarked = true;
    }
  };

  /** Replaces proto[name] by a function that runs the original, then `count(this, args,
   * result)`; `prepare` may first replace the arguments (same meaning) so that counting can read
   * them. */
  const wrap = (
    proto: object,
    name: string,
    count: (self: unknown, args: unknown[], result: unknown) => void,
    prepare?: (args: unknown[]) => unknown[],
  ) => {
    const desc = Object.getOwnPropertyDescriptor(proto, name);
    if (!desc || typeof desc.value !== "function") {
      throw new Error(`${proto.constructor.name}.prototype.${name} is not an own method`);
    }
    const original = desc.value as AnyFn;
    const wrapper = function (this: unknown, ...args: unknown[]) {
      if (prepare) args = prepare(args);
      const result = original.apply(this, args);
      count(this, args, result);
      return result;
    };
    Object.defineProperty(wrapper, "name", { value: name });
    Object.defineProperty(proto, name, { ...desc, value: wrapper });
    restore.push(() => Object.defineProperty(proto, name, desc));
  };

  wrap(protos.pass!, "dispatchWorkgroups", (self) => dispatched(self));
  wrap(protos.pass!, "dispatchWorkgroupsIndirect", (self) => {
    dispatched(self);
    c.indirectDispatches++;
  });
  if (mark) {
    wrap(protos.pass!, "setPipeline", (self, args) => {
      const p = passes.get(self as object);
      if (!p) return;
      const pipeline = args[0] as GPUComputePipeline;
      let m = marked.get(pipeline);
      if (m === undefined) {
        m = mark(pipeline.label);
        marked.set(pipeline, m);
      }
      p.marked = m;
    });
    wrap(protos.pass!, "end", (self) => {
      const p = passes.get(self as object);
      if (!p) return;
      passes.delete(self as object);
      if (!p.sawMarked) return;
      c.markedPasses++;
      c.dispatchesInMarkedPasses += p.dispatches;
    });
  }
  wrap(protos.encoder!, "beginComputePass", (_, _args, pass) => {
    c.passes++;
    if (mark) passes.set(pass as object, { marked: false, dispatches: 0, sawMarked: false });
  });
  wrap(protos.encoder!, "copyBufferToBuffer", (_, args) => {
    c.copies++;
    c.copyBytes += copyBytes(args);
  });
  wrap(protos.encoder!, "clearBuffer", () => c.clears++);
  wrap(protos.queue!, "submit", (_, args) => {
    c.submits++;
    c.commandBuffers += (args[0] as unknown[]).length;
  }, (args) => {
    // a sequence may be any iterable (a generator reads once): hand WebGPU an array of it
    const [buffers, ...rest] = args;
    return Array.isArray(buffers) ? args : [[...(buffers as Iterable<unknown>)], ...rest];
  });
  wrap(protos.queue!, "writeBuffer", (_, args) => {
    c.writeBuffers++;
    c.writeBytes += writeBufferBytes(args[2], args[3] as number, args[4] as number);
  });
  wrap(protos.buffer!, "mapAsync", (self, args) => {
    if (((args[0] as number) & GPUMapMode.READ) === 0) return;
    const offset = (args[1] as number | undefined) ?? 0;
    const size = args[2] as number | undefined;
    c.mapReads++;
    c.readBytes += size ?? (self as GPUBuffer).size - offset;
  });

  const counters: GpuCounters = {
    snapshot: () => ({ ...c }),
    reset: () => {
      c = zeroCounts();
    },
    uninstall: () => {
      if (installed !== counters) return;
      for (const r of restore.reverse()) r();
      installed = null;
    },
    measure: async (fn) => {
      const before = { ...c };
      const value = await fn();
      return { value, counts: diffCounts(c, before) };
    },
  };
  installed = counters;
  return counters;
}
