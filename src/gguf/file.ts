/**
 * One GGUF file (llama.cpp's ggml/src/gguf.cpp and docs/gguf.md), versions 2 and 3, little-endian:
 *
 *   u32 magic "GGUF", u32 version, u64 tensor count, u64 metadata count
 *   metadata: (string key, u32 value type, value)*   string = u64 length + UTF-8 bytes
 *   tensor infos: (string name, u32 n_dims, u64 ne[n_dims] innermost first, u32 ggml type,
 *                  u64 offset relative to the data section)*
 *   padding to `general.alignment` (default 32), then the data section
 *
 * The file is memory-mapped (src/mmap.ts) and tensors are zero-copy views of it. Every tensor is
 * checked before anything is returned: a readable type, a row (ne[0]) of whole blocks, an aligned
 * offset, a byte range inside the file and overlapping no other tensor. A truncated file names the
 * first tensor that does not fit.
 *
 * Why not npm `@huggingface/gguf`: it reads local files (`allowLocalFile`) but only asynchronously,
 * through a chunked range reader built for HTTP, and returns the header alone: it neither maps the
 * data nor checks that tensors fit the file, and it brings `@huggingface/tasks` along. Checkpoints
 * open synchronously here and need exactly those checks, so this small parser does both.
 */

import { mapFile, type MappedFile } from "../mmap.ts";
import type { DType } from "../types.ts";
import { GGML_TYPES, ggmlTypeName, readableTypeList } from "./ggml_type.ts";
import {
  GGUF_VALUE_BYTES,
  GGUF_VALUE_TYPE_NAMES,
  type GgufArray,
  type GgufKv,
  type GgufMetadata,
  type GgufValue,
  type GgufValueType,
} from "./metadata.ts";

/** The header does not parse: bad magic, truncated header, bad value type, bad alignment. */
export class GgufFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GgufFormatError";
  }
}

/** A GGUF version or byte order this reader does not read (v1, big-endian, future versions). */
export class GgufVersionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GgufVersionError";
  }
}

/** A tensor of a GGML type the runtime cannot compute with. */
export class GgufTensorTypeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GgufTensorTypeError";
  }
}

/** A tensor's bytes do not fit: outside the file, misaligned, overlapping, or a partial block. */
export class GgufTensorDataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GgufTensorDataError";
  }
}

/** "GGUF" as the little-endian u32 at the start of every file. */
const GGUF_MAGIC = 0x46554747;
export const SUPPORTED_VERSIONS: readonly number[] = [2, 3];
export const ALIGNMENT_KEY = "general.alignment";
/** gguf.h GGUF_DEFAULT_ALIGNMENT. */
export const DEFAULT_ALIGNMENT = 32;
/** ggml.h GGML_MAX_DIMS. */
const MAX_DIMS = 4;
/** ggml.h GGML_MAX_NAME: names are stored in a 64-byte field including the terminating NUL. */
const MAX_NAME_BYTES = 63;
/** Arrays of arrays deeper than this are refused (no real file nests at all). */
const MAX_ARRAY_DEPTH = 8;

/** One tensor as its info record describes it, checked against the file. */
export interface GgufTensorInfo {
  name: string;
  /** ggml's ne: sizes innermost (row length) first. The row-major shape is ne reversed. */
  ne: number[];
  ggmlType: number;
  dtype: DType;
  /** Byte offset relative to the data section. */
  offset: number;
  /** Bytes of the tensor (rows x whole blocks). */
  bytes: number;
}

/** The parsed header of one file. */
export interface GgufHeader {
  version: number;
  metadata: GgufMetadata;
  /** In file order. */
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Absolute offset of the data section. */
  dataStart: number;
}

/** One opened (mapped) file. */
export interface GgufFile extends GgufHeader {
  path: string;
  file: MappedFile;
  /** Zero-copy bytes of a tensor of this file. */
  data(t: GgufTensorInfo): Uint8Array;
  close(): void;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** A bounds-checked little-endian cursor over the header bytes. */
class Reader {
  pos = 0;
  readonly #dv: DataView;
  constructor(readonly bytes: Uint8Array, readonly path: string) {
    this.#dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  need(n: number, what: string): number {
    if (n > this.bytes.length - this.pos) {
      throw new GgufFormatError(
        `${this.path}: the file ends inside ${what} (at byte ${this.pos} of ` +
          `${this.bytes.length}); the file is truncated: download it again`,
      );
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u32(what: string): number {
    return this.#dv.getUint32(this.need(4, what), true);
  }

  /** A u64 count or size that must be a safe integer no larger than `max`. */
  size(what: string, max = Number.MAX_SAFE_INTEGER): number {
    const v = this.#dv.getBigUint64(this.need(8, what), true);
    if (v > BigInt(max)) {
      throw new GgufFormatError(
        `${this.path}: ${what} is ${v}, more than the file's ${this.bytes.length} bytes can ` +
          `hold; the file is truncated or damaged: download it again`,
      );
    }
    return Number(v);
  }

  string(what: string): string {
    const len = this.size(`the length of ${what}`, this.bytes.length - this.pos - 8);
    const at = this.need(len, what);
    try {
      return utf8.decode(this.bytes.subarray(at, at + len));
    } catch {
      throw new GgufFormatError(`${this.path}: ${what} is not valid UTF-8; the file is damaged`);
    }
  }

  scalar(type: GgufValueType, what: string): GgufValue {
    const dv = this.#dv;
    switch (type) {
      case "UINT8":
        return dv.getUint8(this.need(1, what));
      case "INT8":
        return dv.getInt8(this.need(1, what));
      case "UINT16":
        return dv.getUint16(this.need(2, what), true);
      case "INT16":
        return dv.getInt16(this.need(2, what), true);
      case "UINT32":
        return dv.getUint32(this.need(4, what), true);
      case "INT32":
        return dv.getInt32(this.need(4, what), true);
      case "FLOAT32":
        return dv.getFloat32(this.need(4, what), true);
      case "FLOAT64":
        return dv.getFloat64(this.need(8, what), true);
      case "UINT64":
        return dv.getBigUint64(this.need(8, what), true);
      case "INT64":
        return dv.getBigInt64(this.need(8, what), true);
      case "BOOL": {
        const b = dv.getUint8(this.need(1, what));
        if (b > 1) {
          throw new GgufFormatError(`${this.path}: ${what} is BOOL ${b}, not 0 or 1; damaged file`);
        }
        return b === 1;
      }
      case "STRING":
        return this.string(what);
      case "ARRAY":
        return this.array(what, 0);
    }
  }

  valueType(what: string): GgufValueType {
    const id = this.u32(`the type of ${what}`);
    const type = GGUF_VALUE_TYPE_NAMES.get(id);
    if (type === undefined) {
      throw new GgufFormatError(
        `${this.path}: ${what} has value type ${id}, which GGUF does not define (0-12); ` +
          `the file is damaged or from a newer GGUF: update this runtime`,
      );
    }
    return type;
  }

  array(what: string, depth: number): GgufArray {
    if (depth >= MAX_ARRAY_DEPTH) {
      throw new GgufFormatError(`${this.path}: ${what} nests arrays deeper than ${depth}`);
    }
    const itemType = this.valueType(`the items of ${what}`);
    // Each item takes at least one byte (strings and arrays at least 8): bound the count by the
    // bytes left so a damaged count cannot allocate without end.
    const minBytes = GGUF_VALUE_BYTES[itemType] ?? 8;
    const left = this.bytes.length - this.pos - 8;
    const n = this.size(`the length of ${what}`, Math.max(0, Math.floor(left / minBytes)));
    const items: GgufValue[] = new Array(n);
    for (let i = 0; i < n; i++) {
      items[i] = itemType === "ARRAY"
        ? this.array(`${what}[${i}]`, depth + 1)
        : this.scalar(itemType, `${what}[${i}]`);
    }
    return { itemType, items };
  }
}

/** Reads magic and version; refuses v1, big-endian and unknown versions. */
function readVersion(r: Reader): number {
  const magic = r.u32("the magic number");
  if (magic !== GGUF_MAGIC) {
    throw new GgufFormatError(
      `${r.path} does not start with "GGUF"; it is not a GGUF file (give a .gguf model file)`,
    );
  }
  const version = r.u32("the version");
  if (SUPPORTED_VERSIONS.includes(version)) return version;
  const swapped = ((version & 0xff) << 24 | (version & 0xff00) << 8 | (version >>> 8) & 0xff00 |
    version >>> 24) >>> 0;
  if (swapped >= 1 && swapped <= 3) {
    throw new GgufVersionError(
      `${r.path} is a big-endian GGUF (version ${swapped} byte-swapped); this runtime reads ` +
        `little-endian files only: convert the model again without --bigendian`,
    );
  }
  if (version === 1) {
    throw new GgufVersionError(
      `${r.path} is GGUF version 1 (32-bit counts, before August 2023); this runtime reads ` +
        `versions ${
          SUPPORTED_VERSIONS.join(" and ")
        }: convert the model again with a current llama.cpp`,
    );
  }
  throw new GgufVersionError(
    `${r.path} is GGUF version ${version}; this runtime reads versions ` +
      `${SUPPORTED_VERSIONS.join(" and ")}: update the runtime or convert the model again`,
  );
}

function readMetadata(r: Reader): GgufMetadata {
  const count = r.size("the metadata count", r.bytes.length);
  const metadata: GgufMetadata = new Map();
  for (let i = 0; i < count; i++) {
    const key = r.string(`metadata key ${i}`);
    if (metadata.has(key)) {
      throw new GgufFormatError(`${r.path}: metadata key ${key} appears twice; damaged file`);
    }
    const type = r.valueType(`metadata ${key}`);
    metadata.set(key, { type, value: r.scalar(type, `metadata ${key}`) } satisfies GgufKv);
  }
  return metadata;
}

function readAlignment(metadata: GgufMetadata, path: string): number {
  const kv = metadata.get(ALIGNMENT_KEY);
  if (kv === undefined) return DEFAULT_ALIGNMENT;
  const a = kv.value as number;
  // gguf.cpp requires a UINT32 power of two.
  if (kv.type !== "UINT32" || a === 0 || (a & (a - 1)) !== 0) {
    throw new GgufFormatError(
      `${path}: ${ALIGNMENT_KEY} is ${kv.type} ${kv.value}; it must be a UINT32 power of two`,
    );
  }
  return a;
}

/** One tensor info record; its type, shape and byte size checked (not yet its place). */
function readTensorInfo(r: Reader, i: number, alignment: number): GgufTensorInfo {
  const name = r.string(`the name of tensor ${i}`);
  const where = `${r.path}: tensor ${name}`;
  if (new TextEncoder().encode(name).length > MAX_NAME_BYTES) {
    throw new GgufFormatError(`${where}: name longer than ${MAX_NAME_BYTES} bytes (ggml's limit)`);
  }
  const nDims = r.u32(`the dimension count of tensor ${name}`);
  if (nDims > MAX_DIMS) {
    throw new GgufFormatError(`${where} has ${nDims} dimensions; ggml allows ${MAX_DIMS}`);
  }
  const ne: number[] = [];
  let elems = 1;
  for (let d = 0; d < nDims; d++) {
    ne.push(r.size(`ne[${d}] of tensor ${name}`));
    elems *= ne[d];
    if (!Number.isSafeInteger(elems)) {
      throw new GgufFormatError(`${where} has shape ne=[${ne}...], too large; damaged file`);
    }
  }
  const ggmlType = r.u32(`the type of tensor ${name}`);
  const offset = r.size(`the offset of tensor ${name}`);
  const t = GGML_TYPES.get(ggmlType);
  if (t === undefined) {
    throw new GgufTensorTypeError(
      `${where} is ${ggmlTypeName(ggmlType)}, which this runtime cannot compute with; ` +
        `re-quantize the model (llama-quantize) to one of ${readableTypeList()}`,
    );
  }
  const rowLen = nDims === 0 ? 1 : ne[0];
  if (rowLen % t.blockElems !== 0) {
    throw new GgufTensorDataError(
      `${where} (${t.dtype}, ne=[${ne}]) has rows of ${rowLen} values, not a whole number of ` +
        `${t.blockElems}-value blocks; the tensor's size is inconsistent: convert it again`,
    );
  }
  if (offset % alignment !== 0) {
    throw new GgufTensorDataError(
      `${where} starts at data offset ${offset}, not a multiple of the alignment ${alignment}; ` +
        `the file is damaged: download or convert it again`,
    );
  }
  const bytes = elems / t.blockElems * t.blockBytes;
  return { name, ne, ggmlType, dtype: t.dtype, offset, bytes };
}

/** Every tensor inside the file and overlapping no other; the first that does not fit is named. */
function checkPlacement(
  tensors: GgufTensorInfo[],
  dataStart: number,
  fileSize: number,
  path: string,
): void {
  const byOffset = [...tensors].sort((a, b) => a.offset - b.offset || a.bytes - b.bytes);
  let prev: GgufTensorInfo | null = null;
  for (const t of byOffset) {
    const end = dataStart + t.offset + t.bytes;
    if (end > fileSize) {
      throw new GgufTensorDataError(
        `${path}: tensor ${t.name} (${t.dtype}, ne=[${t.ne}]) needs bytes ` +
          `${dataStart + t.offset}..${end} but the file has ${fileSize} bytes: the file is ` +
          `truncated (an interrupted download?); download it again`,
      );
    }
    if (prev !== null && t.offset < prev.offset + prev.bytes) {
      throw new GgufTensorDataError(
        `${path}: tensors ${prev.name} and ${t.name} overlap (data offsets ${prev.offset}+` +
          `${prev.bytes} and ${t.offset}); the file is damaged: convert it again`,
      );
    }
    prev = t;
  }
}

/** Parses and checks the header of a whole file's bytes; path is used in messages. */
export function parseGguf(bytes: Uint8Array, path: string): GgufHeader {
  const r = new Reader(bytes, path);
  const version = readVersion(r);
  // Every tensor info takes at least 24 bytes: bound the count by the file.
  const tensorCount = r.size("the tensor count", Math.floor(bytes.length / 24));
  const metadata = readMetadata(r);
  const alignment = readAlignment(metadata, path);
  const tensors: GgufTensorInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const t = readTensorInfo(r, i, alignment);
    if (names.has(t.name)) {
      throw new GgufFormatError(`${path}: tensor ${t.name} is listed twice; damaged file`);
    }
    names.add(t.name);
    tensors.push(t);
  }
  const dataStart = Math.ceil(r.pos / alignment) * alignment;
  checkPlacement(tensors, dataStart, bytes.length, path);
  return { version, metadata, tensors, alignment, dataStart };
}

/** Maps a GGUF file and parses its header (one file; see split.ts for split models). */
export function openGgufFile(path: string): GgufFile {
  const file = mapFile(path);
  let header: GgufHeader;
  try {
    header = parseGguf(file.bytes, path);
  } catch (e) {
    file.close();
    throw e;
  }
  return {
    ...header,
    path,
    file,
    data(t: GgufTensorInfo): Uint8Array {
      const at = header.dataStart + t.offset;
      return file.bytes.subarray(at, at + t.bytes);
    },
    close: () => file.close(),
  };
}
