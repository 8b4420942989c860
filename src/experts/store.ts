/**
 * The expert store: reads (layer, expert) records of a packed experts.bin (gate | up | down,
 * contiguous, see src/pack/format.ts) for the GPU upload path and the CPU reference.
 *
 * - experts.bin is memory-mapped (src/mmap.ts) and records are zero-copy views; without FFI the
 *   store falls back to pread-style reads of just the record (never the whole file).
 * - The first read of each record verifies its xxhash64 against the manifest: a damaged record
 *   throws ExpertChecksumError naming layer, expert and file, never hands out garbage.
 * - Each read is timed and, when mapped, classified by mincore(2) before touching the pages:
 *   "warm" (all pages in the OS page cache) or "cold" (some must come from disk). The pages are
 *   then faulted in right here, so the read's time is the real cost and the GPU copy that
 *   follows does no disk I/O.
 */

import { adviseDontNeed, mapFile, type MappedFile } from "../mmap.ts";
import { createRecordHasher, type ExpertsIndex, type RecordHasher } from "../pack/format.ts";
import type { ExpertMetrics } from "./metrics.ts";

/** Thrown when a record's bytes do not match the checksum written at pack time. */
export class ExpertChecksumError extends Error {
  constructor(
    readonly layer: number,
    readonly expert: number,
    readonly file: string,
    expected: string,
    actual: string,
  ) {
    super(
      `expert record of layer ${layer} expert ${expert} in ${file} has checksum ${actual} but ` +
        `the manifest says ${expected}: the file is damaged; re-run \`main.ts pack --force\``,
    );
    this.name = "ExpertChecksumError";
  }
}

/** Thrown when experts.bin does not match its manifest or a record is asked out of range. */
export class ExpertStoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ExpertStoreError";
  }
}

/**
 * How records are read: "mmap" (zero-copy views), "read" (the file was read whole because libc
 * could not map it, e.g. embedded in a compiled binary), "pread" (one read per record; no FFI).
 */
export type StoreMode = "mmap" | "read" | "pread";

/** One record read. */
export interface ExpertRead {
  /** gate | up | down bytes (a view into the mapping, or a fresh buffer in pread mode). */
  bytes: Uint8Array;
  /** Page-cache state before the read; null when it cannot be known (not mapped). */
  source: "cold" | "warm" | null;
  ms: number;
}

/** Counters of the store's reads. */
export interface StoreStats {
  reads: number;
  cold: number;
  warm: number;
  /** Records whose checksum has been verified. */
  verified: number;
  bytesRead: number;
  /** Records readAhead() started reading. */
  readAheads: number;
}

export interface ExpertStoreOptions {
  /** Force pread reads (tests, or to keep experts.bin out of the address space). */
  mode?: "pread";
  /** Where cold / warm read latencies are recorded. */
  metrics?: ExpertMetrics;
}

const MINCORE_SYMBOLS = {
  mincore: { parameters: ["pointer", "usize", "buffer"], result: "i32" },
  sysconf: { parameters: ["i32"], result: "i64" },
} as const;
const SC_PAGESIZE = 30;
/** Smallest page size in use on Linux; touching one byte per 4 KiB faults in every page. */
const TOUCH_STRIDE = 4096;

type MincoreLib = Deno.DynamicLibrary<typeof MINCORE_SYMBOLS>["symbols"];

/**
 * Read-ahead on threads of Deno's blocking pool (nonblocking FFI calls), so it overlaps our own
 * work: madvise(MADV_POPULATE_READ) faults a record's pages into the mapping (Linux 5.14+);
 * readahead(2) only fills the page cache, the fallback where populating is refused. Cold loads of
 * 24 random records, 8 ahead, here: none 0.52-0.73 GB/s, readahead(2) 0.67-0.73, populate
 * 0.76-1.00 (a plain read of random records: about 1.0).
 */
const READAHEAD_SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32", nonblocking: true },
  readahead: { parameters: ["i32", "i64", "usize"], result: "isize", nonblocking: true },
} as const;
const O_RDONLY = 0;
const MADV_POPULATE_READ = 22;
/** Most records one readAhead() call starts (a layer's top-8 misses), and most in flight as far
 * as this thread knows (a read's end is seen when the event loop next runs, so a synchronous
 * burst of calls counts every read it started). */
export const READ_AHEAD_PER_CALL = 8;
export const READ_AHEAD_IN_FLIGHT = 64;

type ReadaheadLib = Deno.DynamicLibrary<typeof READAHEAD_SYMBOLS>["symbols"];
let readaheadCache: ReadaheadLib | null | undefined;
/** Whether madvise(MADV_POPULATE_READ) has failed once (an older kernel): readahead(2) then. */
let populateRefused = false;

function readaheadLib(): ReadaheadLib | null {
  if (readaheadCache !== undefined) return readaheadCache;
  readaheadCache = null;
  try {
    if (ffiGranted()) readaheadCache = Deno.dlopen("libc.so.6", READAHEAD_SYMBOLS).symbols;
  } catch {
    // No FFI or no libc: no read-ahead.
  }
  return readaheadCache;
}

let mincoreCache: MincoreLib | null | undefined;

function mincoreLib(): MincoreLib | null {
  if (mincoreCache !== undefined) return mincoreCache;
  mincoreCache = null;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state === "granted") {
      mincoreCache = Deno.dlopen("libc.so.6", MINCORE_SYMBOLS).symbols;
    }
  } catch {
    // No FFI or no libc: reads are not classified (source null).
  }
  return mincoreCache;
}

function ffiGranted(): boolean {
  try {
    return Deno.permissions.querySync({ name: "ffi" }).state === "granted";
  } catch {
    return false;
  }
}

/** Reads records of one experts.bin. */
export class ExpertStore {
  readonly stats: StoreStats = {
    reads: 0,
    cold: 0,
    warm: 0,
    verified: 0,
    bytesRead: 0,
    readAheads: 0,
  };
  private readonly verified: Uint8Array;
  private readonly pageSize: number;
  private mincoreVec = new Uint8Array(0);
  /** Where transient reads land (see read()). */
  private scratch = new Uint8Array(0);
  /** readAhead's descriptor of experts.bin (libc's, opened on first use) and reads in flight. */
  private raFd: number | null = null;
  private raInFlight = 0;

  /** Reads ahead started and not yet finished (their records count as being read until then). */
  get readAheadsInFlight(): number {
    return this.raInFlight;
  }
  /** Records (index) whose read-ahead has not been seen to end. */
  private readonly raPending = new Set<number>();
  private closed = false;
  /** Sum of touched bytes, kept so the page-touch loop is not optimised away. */
  private touchSink = 0;

  private constructor(
    readonly path: string,
    readonly index: ExpertsIndex,
    readonly mode: StoreMode,
    private readonly mapped: MappedFile | null,
    private fd: Deno.FsFile | null,
    private readonly hasher: RecordHasher,
    private readonly metrics: ExpertMetrics | undefined,
  ) {
    this.verified = new Uint8Array(index.records.length);
    const lib = mapped?.mode === "mmap" ? mincoreLib() : null;
    this.pageSize = lib ? Number(lib.sysconf(SC_PAGESIZE)) : TOUCH_STRIDE;
  }

  /** Opens path (experts.bin) described by index; checks its size against the manifest. */
  static async open(
    path: string,
    index: ExpertsIndex,
    opts: ExpertStoreOptions = {},
  ): Promise<ExpertStore> {
    let size: number;
    try {
      size = Deno.statSync(path).size;
    } catch (e) {
      throw new ExpertStoreError(`cannot open ${path}: ${(e as Error).message}; re-run pack`);
    }
    if (size !== index.bytes) {
      throw new ExpertStoreError(
        `${path} is ${size} bytes but the manifest says ${index.bytes}: it is truncated or ` +
          `from another pack; re-run \`main.ts pack --force\``,
      );
    }
    const hasher = await createRecordHasher();
    if (opts.mode !== "pread" && ffiGranted()) {
      const mapped = mapFile(path);
      return new ExpertStore(path, index, mapped.mode, mapped, null, hasher, opts.metrics);
    }
    const fd = Deno.openSync(path, { read: true });
    return new ExpertStore(path, index, "pread", null, fd, hasher, opts.metrics);
  }

  /** The record of (layer, expert): gate | up | down bytes, checksum-verified on first read. */
  record(layer: number, expert: number): Uint8Array {
    return this.read(layer, expert).bytes;
  }

  /**
   * record() with the read's page-cache state and duration. `transient`: the bytes are used at
   * once and may be overwritten by the next read (an upload): a cold record is then read into a
   * buffer kept for the purpose instead of a fresh one, whose page faults cost about a quarter of
   * a random record's read here (0.63 GB/s into fresh buffers, 0.86 into one reused).
   */
  read(layer: number, expert: number, transient = false): ExpertRead {
    const i = this.slot(layer, expert);
    const r = this.index.records[i];
    const t0 = performance.now();
    let bytes: Uint8Array;
    let source: "cold" | "warm" | null = null;
    if (this.mapped !== null) {
      bytes = this.mapped.bytes.subarray(r.offset, r.offset + r.length);
      if (this.mapped.mode === "mmap") {
        source = this.resident(r.offset, r.length) ? "warm" : "cold";
      }
      if (source === "cold") {
        // from disk, one large read beats faulting the mapping in page by page (2.3 vs 1.6 GB/s
        // measured here); the pages it reads stay in the page cache for the next time
        this.fd ??= Deno.openSync(this.path, { read: true });
        bytes = this.pread(r.offset, r.length, transient);
      } else if (this.verified[i] === 1) {
        this.touch(bytes); // the checksum below touches it otherwise
      }
    } else {
      bytes = this.pread(r.offset, r.length, transient);
    }
    if (this.verified[i] === 0) {
      const actual = this.hasher.digest([bytes]);
      if (actual !== r.checksum) {
        throw new ExpertChecksumError(layer, expert, this.path, r.checksum, actual);
      }
      this.verified[i] = 1;
      this.stats.verified++;
    }
    const ms = performance.now() - t0;
    this.stats.reads++;
    this.stats.bytesRead += r.length;
    if (source !== null) {
      this.stats[source]++;
      this.metrics?.recordLoad(source, ms);
    }
    return { bytes, source, ms };
  }

  /**
   * Whether every page of the record is in the page cache (mincore), or null when unknown (not
   * mapped, or no FFI).
   */
  isCached(layer: number, expert: number): boolean | null {
    if (this.mapped?.mode !== "mmap" || mincoreLib() === null) return null;
    const r = this.index.records[this.slot(layer, expert)];
    return this.resident(r.offset, r.length);
  }

  /**
   * Starts reading, each on a thread of its own, the first READ_AHEAD_PER_CALL records of `keys`
   * (layer * E + expert) that are neither in the page cache nor being read ahead, with at most
   * READ_AHEAD_IN_FLIGHT in flight (see READAHEAD_SYMBOLS): a burst of loads then finds its later
   * records read while it checksums and uploads the earlier ones. Returns how many reads it
   * started; 0 when it cannot (not mapped, or no FFI).
   */
  readAhead(keys: number[]): number {
    if (this.mapped?.mode !== "mmap") return 0;
    const lib = readaheadLib();
    if (lib === null) return 0;
    const E = this.index.numExperts;
    const base = Deno.UnsafePointer.of(this.mapped.bytes);
    // which records to read is decided before any read starts: a read brings its neighbours'
    // pages too (the kernel's readahead), which must not make the choice depend on timing
    const chosen: number[] = [];
    for (const key of keys) {
      if (chosen.length >= Math.min(READ_AHEAD_PER_CALL, READ_AHEAD_IN_FLIGHT - this.raInFlight)) {
        break;
      }
      const i = this.slot(Math.floor(key / E), key % E);
      const r = this.index.records[i];
      if (this.raPending.has(i) || chosen.includes(i) || this.resident(r.offset, r.length)) {
        continue;
      }
      chosen.push(i);
    }
    let started = 0;
    for (const i of chosen) {
      const r = this.index.records[i];
      let read: Promise<number | bigint>;
      if (!populateRefused && base !== null) {
        const start = Math.floor(r.offset / this.pageSize) * this.pageSize;
        const ptr = Deno.UnsafePointer.offset(base, start);
        read = lib.madvise(ptr, BigInt(r.offset + r.length - start), MADV_POPULATE_READ);
        read.then((rc) => {
          if (rc !== 0 && !this.closed) populateRefused = true;
        });
      } else {
        if (this.raFd === null) {
          this.raFd = lib.open(new TextEncoder().encode(this.path + "\0"), O_RDONLY);
        }
        if (this.raFd < 0) return started;
        read = lib.readahead(this.raFd, BigInt(r.offset), BigInt(r.length));
      }
      this.raInFlight++;
      this.raPending.add(i);
      started++;
      this.stats.readAheads++;
      read.finally(() => {
        this.raInFlight--;
        this.raPending.delete(i);
        if (this.raInFlight === 0 && this.closed) this.closeReadAhead();
      });
    }
    return started;
  }

  /**
   * Drops experts.bin from the page cache and from this mapping (benchmarks of cold loads).
   * Returns false when it could not be done (no FFI).
   */
  dropPageCache(): boolean {
    return adviseDontNeed(this.mapped ?? this.path, 0, this.index.bytes);
  }

  /** Unmaps or closes experts.bin; views returned earlier must not be used afterwards. Reads
   * ahead still in flight finish on their own (their descriptor is closed after the last). */
  close(): void {
    this.closed = true;
    this.mapped?.close();
    this.fd?.close();
    if (this.raInFlight === 0) this.closeReadAhead();
  }

  private closeReadAhead(): void {
    if (this.raFd !== null && this.raFd >= 0) readaheadLib()?.close(this.raFd);
    this.raFd = null;
  }

  private slot(layer: number, expert: number): number {
    const { numLayers: L, numExperts: E } = this.index;
    if (!(Number.isInteger(layer) && layer >= 0 && layer < L)) {
      throw new ExpertStoreError(`layer ${layer} is out of range 0..${L - 1}`);
    }
    if (!(Number.isInteger(expert) && expert >= 0 && expert < E)) {
      throw new ExpertStoreError(`expert ${expert} is out of range 0..${E - 1}`);
    }
    return layer * E + expert;
  }

  /** mincore over the record's pages: true when all are resident; false when unknown. */
  private resident(offset: number, length: number): boolean {
    const lib = mincoreLib();
    if (lib === null || this.mapped === null || length === 0) return false;
    const start = Math.floor(offset / this.pageSize) * this.pageSize;
    const len = offset + length - start;
    const pages = Math.ceil(len / this.pageSize);
    if (this.mincoreVec.length < pages) this.mincoreVec = new Uint8Array(pages);
    const ptr = Deno.UnsafePointer.offset(Deno.UnsafePointer.of(this.mapped.bytes)!, start);
    if (lib.mincore(ptr, BigInt(len), this.mincoreVec) !== 0) return false;
    for (let p = 0; p < pages; p++) if ((this.mincoreVec[p] & 1) === 0) return false;
    return true;
  }

  private touch(bytes: Uint8Array): void {
    let s = 0;
    for (let i = 0; i < bytes.length; i += TOUCH_STRIDE) s += bytes[i];
    if (bytes.length > 0) s += bytes[bytes.length - 1];
    this.touchSink = (this.touchSink + s) | 0;
  }

  /** One record's bytes by read(2); into the scratch buffer when `transient`. */
  private pread(offset: number, length: number, transient: boolean): Uint8Array {
    if (transient && this.scratch.length < length) this.scratch = new Uint8Array(length);
    const out = transient ? this.scratch.subarray(0, length) : new Uint8Array(length);
    const fd = this.fd!;
    fd.seekSync(offset, Deno.SeekMode.Start);
    let done = 0;
    while (done < length) {
      const n = fd.readSync(out.subarray(done));
      if (n === null || n === 0) {
        throw new ExpertStoreError(
          `${this.path} ended at ${offset + done} reading ${length} bytes at ${offset}; ` +
            `the file is truncated: re-run \`main.ts pack --force\``,
        );
      }
      done += n;
    }
    return out;
  }
}
