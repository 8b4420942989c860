/**
 * The safetensors format: an 8-byte little-endian header length N, N bytes of JSON
 * `{ name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__"?: {..} }`, then the data
 * (offsets are relative to the end of the header). Reading gives zero-copy TensorViews into a
 * mapped file; writing follows the Python library (tensors sorted by name, data packed in that
 * order, header padded with spaces to a multiple of 8 bytes).
 *
 * Reading validates the header as the reference implementation does (huggingface/safetensors,
 * `Metadata::validate` and `read_metadata`): sorted by offset, the tensors' byte ranges start at 0,
 * follow each other with no gap or overlap, each is exactly elements x dtype size, and the last
 * ends where the file ends. Bytes no tensor owns are refused, never silently skipped.
 */

import { DTYPE_BYTES, elementCount } from "./dtype.ts";
import { mapFile, type MappedFile } from "./mmap.ts";
import type { FloatDType, TensorView } from "./types.ts";

/** Thrown for a malformed or unsupported safetensors file. */
export class SafetensorsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SafetensorsError";
  }
}

/** Size of the little-endian u64 that holds the header length. */
const HEADER_LENGTH_BYTES = 8;
/** The Python library pads the header so the data starts 8-byte aligned. */
const HEADER_ALIGN = 8;
/** Sanity bound on the JSON header (the Python library refuses headers over 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = "__metadata__";
const SUPPORTED: readonly string[] = ["F32", "BF16", "F16"];
/** Element sizes of the format's dtypes (the reference's `Dtype::size`), supported or not. */
const FORMAT_DTYPE_BYTES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  F8_E8M0: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
  C64: 8,
};

/** A tensor as the header describes it, dtype not yet checked against what we support. */
export interface HeaderEntry {
  name: string;
  dtype: string;
  shape: number[];
  /** Byte range relative to the start of the data section. */
  begin: number;
  end: number;
}

/** One opened safetensors file. */
export interface SafetensorsFile {
  path: string;
  file: MappedFile;
  metadata: Record<string, string> | null;
  /** Every tensor of the header in file order, including unsupported dtypes. */
  entries: HeaderEntry[];
  /** Absolute offset of the data section. */
  dataStart: number;
  /** A zero-copy view of one tensor; throws SafetensorsError for an unsupported dtype. */
  view(name: string): TensorView & { dtype: FloatDType };
  close(): void;
}

/** True for the dtypes the runtime computes with. */
export function isSupportedDType(dtype: string): dtype is FloatDType {
  return SUPPORTED.includes(dtype);
}

/** Parses and validates the header of bytes (a whole file); path is used in messages. */
export function parseHeader(
  bytes: Uint8Array,
  path: string,
): { entries: HeaderEntry[]; metadata: Record<string, string> | null; dataStart: number } {
  if (bytes.length < HEADER_LENGTH_BYTES) {
    throw new SafetensorsError(`${path}: ${bytes.length} bytes, too short for a safetensors file`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, HEADER_LENGTH_BYTES);
  const headerLen = dv.getBigUint64(0, true);
  if (headerLen > BigInt(Math.min(MAX_HEADER_BYTES, bytes.length - HEADER_LENGTH_BYTES))) {
    throw new SafetensorsError(
      `${path}: header length ${headerLen} exceeds the file (${bytes.length} bytes) or 100 MB; ` +
        `the file is truncated or not safetensors`,
    );
  }
  const dataStart = HEADER_LENGTH_BYTES + Number(headerLen);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes.subarray(HEADER_LENGTH_BYTES, dataStart)));
  } catch (e) {
    throw new SafetensorsError(`${path}: header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new SafetensorsError(`${path}: header is not a JSON object`);
  }
  const dataLen = bytes.length - dataStart;
  let metadata: Record<string, string> | null = null;
  const entries: HeaderEntry[] = [];
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === METADATA_KEY) {
      metadata = raw as Record<string, string>;
      continue;
    }
    entries.push(checkEntry(name, raw, path, dataLen));
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  checkContiguous(entries, path, dataLen);
  return { entries, metadata, dataStart };
}

/** Sorted entries must tile the data section exactly: from 0, no gap, no overlap, to its end. */
function checkContiguous(entries: HeaderEntry[], path: string, dataLen: number): void {
  let end = 0;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i];
    if (e.begin < end) {
      throw new SafetensorsError(
        `${path}: tensors ${entries[i - 1].name} and ${e.name} overlap; the file is corrupt`,
      );
    }
    if (e.begin > end) {
      const after = i === 0 ? "the start of the data" : `tensor ${entries[i - 1].name}`;
      throw new SafetensorsError(
        `${path}: ${e.begin - end} data bytes between ${after} and tensor ${e.name} belong to ` +
          `no tensor (data_offsets must be contiguous, as the safetensors library requires); ` +
          `the file is corrupt or was not written by a safetensors library`,
      );
    }
    end = e.end;
  }
  if (end !== dataLen) {
    const last = entries.length ? `the last tensor ${entries[entries.length - 1].name}` : "";
    throw new SafetensorsError(
      `${path}: ${dataLen - end} data bytes after ${last || "the header (no tensors)"} belong ` +
        `to no tensor (the data must end with the last tensor); the file is corrupt or was ` +
        `appended to`,
    );
  }
}

function checkEntry(name: string, raw: unknown, path: string, dataLen: number): HeaderEntry {
  const where = `${path}: tensor ${name}`;
  const r = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof r !== "object" || r === null || typeof r.dtype !== "string") {
    throw new SafetensorsError(`${where} has no dtype string in the header`);
  }
  const shape = r.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsError(`${where} has shape ${JSON.stringify(shape)}, not a list of sizes`);
  }
  const offs = r.data_offsets;
  if (
    !Array.isArray(offs) || offs.length !== 2 ||
    !offs.every((o) => Number.isSafeInteger(o) && o >= 0) || offs[1] < offs[0]
  ) {
    throw new SafetensorsError(
      `${where} has data_offsets ${JSON.stringify(offs)}, not [begin,end]`,
    );
  }
  const [begin, end] = offs as [number, number];
  if (end > dataLen) {
    throw new SafetensorsError(
      `${where} ends at data byte ${end} but the file holds ${dataLen} data bytes; ` +
        `the file is truncated`,
    );
  }
  const size = isSupportedDType(r.dtype)
    ? DTYPE_BYTES[r.dtype]
    : FORMAT_DTYPE_BYTES[r.dtype as string];
  if (size !== undefined) {
    const want = elementCount(shape) * size;
    if (!Number.isSafeInteger(want)) {
      throw new SafetensorsError(`${where} has shape ${JSON.stringify(shape)}, too large`);
    }
    if (end - begin !== want) {
      throw new SafetensorsError(
        `${where} has ${end - begin} bytes but ${r.dtype} ${JSON.stringify(shape)} needs ${want}`,
      );
    }
  }
  return { name, dtype: r.dtype, shape: shape as number[], begin, end };
}

/** Opens (memory-maps) a safetensors file and validates its header. */
export function openSafetensors(path: string): SafetensorsFile {
  const file = mapFile(path);
  let parsed;
  try {
    parsed = parseHeader(file.bytes, path);
  } catch (e) {
    file.close();
    throw e;
  }
  const { entries, metadata, dataStart } = parsed;
  const byName = new Map(entries.map((e) => [e.name, e]));
  return {
    path,
    file,
    metadata,
    entries,
    dataStart,
    view(name: string): TensorView & { dtype: FloatDType } {
      const e = byName.get(name);
      if (e === undefined) throw new SafetensorsError(`${path} has no tensor ${name}`);
      return entryView(e, file, dataStart, path);
    },
    close: () => file.close(),
  };
}

/** A zero-copy TensorView of one header entry; throws for unsupported dtypes. */
export function entryView(
  e: HeaderEntry,
  file: MappedFile,
  dataStart: number,
  path: string,
): TensorView & { dtype: FloatDType } {
  if (!isSupportedDType(e.dtype)) {
    throw new SafetensorsError(
      `${path}: tensor ${e.name} has dtype ${e.dtype}; supported dtypes are ${
        SUPPORTED.join(", ")
      }`,
    );
  }
  const offset = dataStart + e.begin;
  return {
    name: e.name,
    dtype: e.dtype,
    shape: e.shape,
    bytes: file.bytes.subarray(offset, dataStart + e.end),
    file: path,
    offset,
  };
}

/** A tensor to write. data holds the little-endian bytes of dtype, shape's element count. */
export interface TensorToWrite {
  name: string;
  dtype: FloatDType;
  shape: number[];
  data: Uint8Array;
}

/** Writes a safetensors file like the Python library (sorted names, space-padded header). */
export async function writeSafetensors(
  path: string,
  tensors: TensorToWrite[],
  metadata?: Record<string, string>,
): Promise<void> {
  const sorted = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header[METADATA_KEY] = metadata;
  let offset = 0;
  for (const t of sorted) {
    if (!isSupportedDType(t.dtype)) {
      throw new SafetensorsError(
        `cannot write tensor ${t.name} with dtype ${t.dtype}; use one of ${SUPPORTED.join(", ")}`,
      );
    }
    const want = elementCount(t.shape) * DTYPE_BYTES[t.dtype];
    if (t.data.length !== want) {
      throw new SafetensorsError(
        `tensor ${t.name}: ${t.data.length} data bytes but ${t.dtype} ` +
          `${JSON.stringify(t.shape)} needs ${want}`,
      );
    }
    if (t.name in header) throw new SafetensorsError(`tensor ${t.name} is given twice`);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + want] };
    offset += want;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / HEADER_ALIGN) * HEADER_ALIGN;
  if (padded !== json.length) {
    json = new TextEncoder().encode(JSON.stringify(header) + " ".repeat(padded - json.length));
  }
  const prefix = new Uint8Array(HEADER_LENGTH_BYTES);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(json.length), true);
  using f = await Deno.open(path, { write: true, create: true, truncate: true });
  await writeAll(f, prefix);
  await writeAll(f, json);
  for (const t of sorted) await writeAll(f, t.data);
}

async function writeAll(f: Deno.FsFile, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.length) done += await f.write(data.subarray(done));
}
