/**
 * The packed model format: a directory that the runtime maps instead of a Hugging Face checkpoint.
 *
 *   manifest.json  format name and version, the original config.json, every base tensor
 *                  (offset, shape, dtype), and one record per (layer, expert) (offset, length,
 *                  checksum). Written last: a directory without it is not a packed model.
 *   base.bin       every non-expert tensor the text model uses, each starting on a 256-byte
 *                  boundary, in checkpoint dtype.
 *   experts.bin    one record per (layer, expert) in order l * E + e, each starting on a 4096-byte
 *                  (page) boundary: gate [I, D] | up [I, D] | down [D, I], contiguous, in
 *                  checkpoint dtype. One record is one GPU slot upload and one disk read.
 *   tokenizer.json, tokenizer_config.json, generation_config.json: copied when present.
 *
 * Record checksums are xxhash64 (hash-wasm): measured on this machine over 64 MiB, xxhash64 ran at
 * about 5 GB/s, xxh3 4.5 GB/s, node:crypto SHA-256 1.7 GB/s and WebCrypto SHA-256 0.6 GB/s. The
 * checksum guards against corruption, not tampering, so the fastest well-kept hash wins.
 */

import { createXXHash64, type IHasher } from "hash-wasm";
import type { AuditEntry } from "../weights.ts";
import type { DType } from "../types.ts";

export const FORMAT_NAME = "qwen3-moe-webgpu-packed";
/** Bump when a reader of the previous version would misread the files. */
export const FORMAT_VERSION = 1;

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
  parts: { gate: RecordPart; up: RecordPart; down: RecordPart };
  /** Record of (layer l, expert e) at index l * numExperts + e. */
  records: ExpertRecord[];
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
    /** By checkpoint tensor name; a tied lm_head is the embedding table itself (not stored). */
    tensors: Record<string, BaseTensorEntry>;
  };
  experts: ExpertsIndex;
  /** Checkpoint tensors the loader did not use (audio tower, rotary buffers, ...), for audits. */
  skipped: AuditEntry[];
  /** Tokenizer and generation files copied beside the weights. */
  copied: string[];
}

/** Checksum of a record given as its consecutive parts (no concatenation copy). */
export interface RecordHasher {
  digest(parts: readonly Uint8Array[]): string;
}

/** An xxhash64 hasher (hash-wasm compiles its WebAssembly once, hence async). */
export async function createRecordHasher(): Promise<RecordHasher> {
  const h: IHasher = await createXXHash64();
  return {
    digest(parts: readonly Uint8Array[]): string {
      h.init();
      for (const p of parts) h.update(p);
      return h.digest("hex");
    },
  };
}
