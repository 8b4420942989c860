/**
 * The packed model format: a directory that the runtime maps instead of a Hugging Face checkpoint.
 *
 *   manifest.json  format name and version, the original config.json, every base tensor
 *                  (offset, shape, dtype, checksum), one record per (layer, expert) (offset,
 *                  length, checksum), every copied file (bytes, checksum), and the checksum of
 *                  the manifest itself (over its canonical JSON, see manifestDigest). Written
 *                  last: a directory without it is not a packed model.
 *   base.bin       every non-expert tensor the text model uses, each starting on a 256-byte
 *                  boundary, in checkpoint dtype; each tensor checksum-verified once per open.
 *   experts.bin    one record per (layer, expert) in order l * E + e, each starting on a 4096-byte
 *                  (page) boundary: gate [I, D] | up [I, D] | down [D, I], contiguous, in
 *                  checkpoint dtype. One record is one GPU slot upload and one disk read.
 *   tokenizer.json, tokenizer_config.json, generation_config.json: copied when present.
 *
 * Every byte a reader uses is covered by a checksum: the manifest by its own, each base tensor,
 * each expert record and each copied file by one in the manifest (padding is not covered: it is
 * never read). Version 1 had record checksums only; readers refuse it (re-run `main.ts pack`).
 *
 * Checksums are xxhash64 (hash-wasm): measured on this machine over 64 MiB, xxhash64 ran at
 * about 5 GB/s, xxh3 4.5 GB/s, node:crypto SHA-256 1.7 GB/s and WebCrypto SHA-256 0.6 GB/s. The
 * checksum guards against corruption, not tampering, so the fastest well-kept hash wins.
 */

import { createXXHash64, type IHasher } from "hash-wasm";
import type { AuditEntry } from "../weights.ts";
import type { QuantizationRecord } from "./quantize.ts";
import type { DType } from "../types.ts";

export const FORMAT_NAME = "qwen3-moe-webgpu-packed";
/**
 * Bump when a reader of the previous version would misread the files.
 * 1: record checksums only. 2: base tensor, copied file and manifest checksums.
 */
export const FORMAT_VERSION = 2;

export const MANIFEST_FILE = "manifest.json";
export const BASE_FILE = "base.bin";
export const EXPERTS_FILE = "experts.bin";
/** Copied beside the weights so a packed directory is a complete model directory. */
export const COPIED_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"];

/** Base tensors start here: WebGPU buffer copy offsets need 4 and uniform offsets 256. */
export const BASE_ALIGN = 256;
/** Expert records start on a page: whole-page reads, mincore and fadvise per record. */
export const RECORD_ALIGN = 4096;
export const CHECKSUM_ALGORITHM = "xxhash64";

/** Rounds n up to a multiple of align. */
export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/** One tensor in base.bin. */
export interface BaseTensorEntry {
  /** Byte offset in base.bin (a multiple of BASE_ALIGN). */
  offset: number;
  bytes: number;
  shape: number[];
  dtype: DType;
  /** What the runtime uses it for (the loader's audit role, e.g. "layer.q"). */
  role: string;
  layer?: number;
  /** CHECKSUM_ALGORITHM of the tensor's bytes, lowercase hex. */
  checksum: string;
}

/** Where one projection lies inside every expert record (the same for all records). */
export interface RecordPart {
  /** Byte offset from the start of the record. */
  offset: number;
  bytes: number;
  shape: number[];
  dtype: DType;
}

/** One (layer, expert) record of experts.bin. */
export interface ExpertRecord {
  layer: number;
  expert: number;
  /** Byte offset in experts.bin (a multiple of RECORD_ALIGN). */
  offset: number;
  /** Bytes of gate | up | down (the padding to the next record is not included). */
  length: number;
  /** CHECKSUM_ALGORITHM of the record's length bytes, lowercase hex. */
  checksum: string;
}

/** What the expert store needs to know about experts.bin. */
export interface ExpertsIndex {
  file: string;
  /** Size of experts.bin in bytes. */
  bytes: number;
  alignment: number;
  checksum: string;
  numLayers: number;
  numExperts: number;
  /** The parts of every record (of layer 0's when layerParts is present). */
  parts: RecordParts;
  /** Each layer's parts, present only when layers differ (a GGUF Q4_K_M file stores some
   * layers' down projections in Q6_K). */
  layerParts?: RecordParts[];
  /** Record of (layer l, expert e) at index l * numExperts + e. */
  records: ExpertRecord[];
}

/** A tokenizer or generation file copied beside the weights. */
export interface CopiedFile {
  /** File name in the packed directory (one of COPIED_FILES). */
  name: string;
  bytes: number;
  /** CHECKSUM_ALGORITHM of the whole file, lowercase hex. */
  checksum: string;
}

/** gate | up | down of one expert record. */
export interface RecordParts {
  gate: RecordPart;
  up: RecordPart;
  down: RecordPart;
}

/** The parts of layer l's records. */
export function partsOf(x: ExpertsIndex, l: number): RecordParts {
  return x.layerParts?.[l] ?? x.parts;
}

/** Bytes of one record of parts (gate | up | down, contiguous). */
export function recordBytesOf(p: RecordParts): number {
  return p.down.offset + p.down.bytes;
}

/** The whole manifest.json. */
export interface PackManifest {
  format: string;
  version: number;
  /** The checkpoint's config.json object, unchanged. */
  config: unknown;
  /** The directory packed, for the record (not read back). */
  source: string;
  base: {
    file: string;
    bytes: number;
    alignment: number;
    checksum: string;
    /** By checkpoint tensor name; a tied lm_head is the embedding table itself (not stored). */
    tensors: Record<string, BaseTensorEntry>;
  };
  experts: ExpertsIndex;
  /** Checkpoint tensors the loader did not use (audio tower, rotary buffers, ...), for audits. */
  skipped: AuditEntry[];
  /** Tokenizer and generation files copied beside the weights. */
  copied: CopiedFile[];
  /** Present when `pack --quant/--quant-base` converted tensors: the types asked and every
   * tensor that fell back to another type. */
  quantization?: QuantizationRecord;
  /** CHECKSUM_ALGORITHM of canonicalJson(every other field), lowercase hex (manifestDigest). */
  manifestChecksum: string;
}

/** A manifest before its own checksum is computed (what the packer builds). */
export type UnsealedManifest = Omit<PackManifest, "manifestChecksum">;

/** A CHECKSUM_ALGORITHM digest is 64 bits: 16 lowercase hex digits. */
export const CHECKSUM_PATTERN = /^[0-9a-f]{16}$/;

/** Checksum of bytes given as consecutive parts (no concatenation copy), or of a string. */
export interface RecordHasher {
  digest(parts: readonly (Uint8Array | string)[]): string;
}

/** An xxhash64 hasher (hash-wasm compiles its WebAssembly once, hence async). */
export async function createRecordHasher(): Promise<RecordHasher> {
  const h: IHasher = await createXXHash64();
  return {
    digest(parts: readonly (Uint8Array | string)[]): string {
      h.init();
      for (const p of parts) h.update(p);
      return h.digest("hex");
    },
  };
}

/**
 * JSON with object keys sorted and no whitespace: the same text for the same content whatever
 * the key order or indentation of the file, so the manifest checksum covers content, not layout.
 */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const o = value as Record<string, unknown>;
    const keys = Object.keys(o).filter((k) => o[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

/** The manifest's own checksum: over the canonical JSON of every field but manifestChecksum. */
export function manifestDigest(hasher: RecordHasher, m: UnsealedManifest | PackManifest): string {
  const { manifestChecksum: _, ...rest } = m as PackManifest;
  return hasher.digest([canonicalJson(rest)]);
}
