/**
 * Read-only whole-file memory maps through libc (Deno FFI), exposed as zero-copy Uint8Arrays.
 *
 * When FFI is not permitted, libc cannot be opened, or the path is not a real file on disk (for
 * example a file embedded in a `deno compile` binary), the file is read into a heap buffer
 * instead and the mapping says so (`mode: "read"`).
 *
 * Lifetime: after `close()` of an mmap-mode file its `bytes` (and every view into them) point at
 * unmapped memory; touching them crashes the process. Close a file only when nothing uses it.
 */

/** How a file's bytes were obtained. */
export type MapMode = "mmap" | "read";

/** One file's bytes, mapped or read. */
export interface MappedFile {
  path: string;
  /** The whole file (size bytes). */
  bytes: Uint8Array;
  size: number;
  mode: MapMode;
  /** Unmaps the file (mmap mode) or drops the buffer (read mode). Idempotent. */
  close(): void;
}

/** Thrown when a file cannot be mapped or read. */
export class MapError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MapError";
  }
}

// Linux x86_64/aarch64 constants (asm-generic and x86 agree on these values).
const O_RDONLY = 0;
const PROT_READ = 1;
/** Private read-only mapping: the pages are the page cache's, nothing is copied. */
const MAP_PRIVATE = 2;
/** mmap's failure value, (void*)-1. */
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;
const MADV_WILLNEED = 3;
const MADV_DONTNEED = 4;
const POSIX_FADV_WILLNEED = 3;
/** Drops clean page-cache pages of a file range (used for cold-start benchmarks). */
const POSIX_FADV_DONTNEED = 4;
const SC_PAGESIZE = 30;
/** Read-mode chunk: Deno's read() is bounded, so large files are read in pieces. */
const READ_CHUNK_BYTES = 64 << 20;

const LIBC_SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"], result: "i32" },
  sysconf: { parameters: ["i32"], result: "i64" },
} as const;

type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];

let libcCache: Libc | null | undefined;

/** libc's symbols, or null when FFI is not allowed or libc.so.6 cannot be opened. */
function libc(): Libc | null {
  if (libcCache !== undefined) return libcCache;
  libcCache = null;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state === "granted") {
      libcCache = Deno.dlopen("libc.so.6", LIBC_SYMBOLS).symbols;
    }
  } catch {
    // No FFI (other OS, sandbox): the read fallback is used; mapFile reports mode "read".
  }
  return libcCache;
}

function cString(s: string): Uint8Array<ArrayBuffer> {
  const enc = new TextEncoder().encode(s);
  const out = new Uint8Array(enc.length + 1);
  out.set(enc);
  return out;
}

function fileSize(path: string): number {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (e) {
    throw new MapError(`cannot open ${path}: ${(e as Error).message}; check the path`);
  }
  if (!info.isFile) throw new MapError(`${path} is not a regular file; pass a file path`);
  return info.size;
}

/**
 * Maps the whole file read-only. Uses mmap when possible, else reads it into memory;
 * `opts.mode: "read"` forces reading. Zero-length files give an empty `bytes`.
 */
export function mapFile(path: string, opts: { mode?: MapMode } = {}): MappedFile {
  const size = fileSize(path);
  const c = opts.mode === "read" ? null : libc();
  if (c !== null) {
    const fd = c.open(cString(path), O_RDONLY);
    if (fd >= 0) {
      try {
        return mmapFd(c, path, fd, size);
      } finally {
        c.close(fd); // the mapping keeps the file alive
      }
    }
    // Not a real file for libc (e.g. embedded in a compiled binary): fall back to reading.
  }
  return readWhole(path, size);
}

function mmapFd(c: Libc, path: string, fd: number, size: number): MappedFile {
  if (size === 0) {
    return { path, bytes: new Uint8Array(0), size, mode: "mmap", close() {} };
  }
  const ptr = c.mmap(null, BigInt(size), PROT_READ, MAP_PRIVATE, fd, 0n);
  if (ptr === null || Deno.UnsafePointer.value(ptr) === MAP_FAILED) {
    throw new MapError(`mmap of ${path} (${size} bytes) failed; check free address space`);
  }
  const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, size));
  let open = true;
  return {
    path,
    bytes,
    size,
    mode: "mmap",
    close() {
      if (!open) return;
      open = false;
      c.munmap(ptr, BigInt(size));
    },
  };
}

function readWhole(path: string, size: number): MappedFile {
  let bytes = new Uint8Array(size);
  const file = Deno.openSync(path, { read: true });
  try {
    let done = 0;
    while (done < size) {
      const n = file.readSync(bytes.subarray(done, Math.min(size, done + READ_CHUNK_BYTES)));
      if (n === null || n === 0) {
        throw new MapError(`${path} ended after ${done} of ${size} bytes; was it truncated?`);
      }
      done += n;
    }
  } finally {
    file.close();
  }
  return {
    path,
    get bytes() {
      return bytes;
    },
    size,
    mode: "read",
    close() {
      bytes = new Uint8Array(0);
    },
  };
}

/**
 * Hints the kernel to read a file range ahead (page cache and, for a mapping, its pages).
 * Returns false when it could not be done (no FFI or not a real file).
 */
export function adviseWillNeed(target: string | MappedFile, offset: number, len: number): boolean {
  return advise(target, offset, len, MADV_WILLNEED, POSIX_FADV_WILLNEED);
}

/**
 * Drops a file range from the page cache (and from the mapping's resident pages), so the next
 * read comes from disk. Returns false when it could not be done (no FFI or not a real file).
 */
export function adviseDontNeed(target: string | MappedFile, offset: number, len: number): boolean {
  return advise(target, offset, len, MADV_DONTNEED, POSIX_FADV_DONTNEED);
}

function advise(
  target: string | MappedFile,
  offset: number,
  len: number,
  madv: number,
  fadv: number,
): boolean {
  const c = libc();
  if (c === null) return false;
  const path = typeof target === "string" ? target : target.path;
  if (typeof target !== "string" && target.mode === "mmap" && target.size > 0) {
    // madvise needs a page-aligned start: widen the range down to the page boundary.
    const page = Number(c.sysconf(SC_PAGESIZE));
    const start = Math.floor(offset / page) * page;
    const end = Math.min(target.size, offset + len);
    if (end > start) {
      const base = Deno.UnsafePointer.of(target.bytes);
      const ptr = Deno.UnsafePointer.offset(base!, start);
      c.madvise(ptr, BigInt(end - start), madv);
    }
  }
  const fd = c.open(cString(path), O_RDONLY);
  if (fd < 0) return false;
  try {
    return c.posix_fadvise(fd, BigInt(offset), BigInt(len), fadv) === 0;
  } finally {
    c.close(fd);
  }
}
