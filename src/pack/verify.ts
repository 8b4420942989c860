/**
 * Checks a whole packed model directory against its manifest and lists every problem, not only
 * the first: the manifest (fields, its own checksum, shapes against its config), each data file's
 * size (truncation), every base tensor's checksum, every expert record's checksum and every copied
 * file's. Files are read in chunks (never mapped), so it also runs without FFI and on files larger
 * than memory. `main.ts verify` and `main.ts audit` report with it.
 */

import { createXXHash64, type IHasher } from "hash-wasm";
import { ExpertChecksumError } from "../experts/store.ts";
import { checkAgainstConfig } from "../packed_weights.ts";
import {
  BASE_FILE,
  createRecordHasher,
  EXPERTS_FILE,
  MANIFEST_FILE,
  type PackManifest,
} from "./format.ts";
import { checkFileSize, TensorChecksumError, verifyCopiedFile } from "./integrity.ts";
import { readManifest } from "./manifest.ts";

/** What verifyPacked found. */
export interface VerifyReport {
  dir: string;
  /** The manifest, when it could be read and checked (else the first problem says why). */
  manifest: PackManifest | null;
  /** One line per region that matched its manifest ("base.bin: 21 tensors, ... ok"). */
  passed: string[];
  /** One line per problem, each naming the file and the tensor, record or field at fault. */
  problems: string[];
  /** Bytes hashed. */
  bytesChecked: number;
}

/** Read size of the chunked hashing (bounded heap use whatever the tensor size). */
const CHUNK_BYTES = 16 << 20;

/** Hashes `length` bytes of an open file from `offset`, chunk by chunk. */
function hashRange(
  h: IHasher,
  f: Deno.FsFile,
  buf: Uint8Array,
  offset: number,
  length: number,
): string {
  h.init();
  f.seekSync(offset, Deno.SeekMode.Start);
  let done = 0;
  while (done < length) {
    const want = Math.min(buf.length, length - done);
    const n = f.readSync(buf.subarray(0, want));
    if (n === null || n === 0) throw new Error(`ended at ${offset + done}`); // sizes checked first
    h.update(buf.subarray(0, n));
    done += n;
  }
  return h.digest("hex");
}

function fileSize(path: string): number | null {
  try {
    return Deno.statSync(path).size;
  } catch {
    return null;
  }
}

/** Checks every byte of the packed model in dir against its manifest (see the module comment). */
export async function verifyPacked(dir: string): Promise<VerifyReport> {
  const report: VerifyReport = { dir, manifest: null, passed: [], problems: [], bytesChecked: 0 };
  const problem = (e: unknown) => report.problems.push((e as Error).message);
  let m: PackManifest;
  try {
    m = await readManifest(dir);
    checkAgainstConfig(m, `${dir}/${MANIFEST_FILE}`);
  } catch (e) {
    problem(e); // the data cannot be checked against a manifest that is not sound
    return report;
  }
  report.manifest = m;
  report.passed.push(`${MANIFEST_FILE}: format ${m.version}, fields and checksum ok`);
  const h = await createXXHash64();
  const buf = new Uint8Array(CHUNK_BYTES);

  // base.bin: each tensor that lies inside the file
  const basePath = `${dir}/${BASE_FILE}`;
  const baseSize = fileSize(basePath);
  try {
    checkFileSize(basePath, m.base.bytes);
  } catch (e) {
    problem(e);
  }
  if (baseSize !== null) {
    using f = Deno.openSync(basePath, { read: true });
    let bad = 0;
    const entries = Object.entries(m.base.tensors);
    for (const [name, t] of entries) {
      if (t.offset + t.bytes > baseSize) {
        bad++;
        report.problems.push(`base tensor ${name} lies past the end of ${basePath} (truncated)`);
        continue;
      }
      const actual = hashRange(h, f, buf, t.offset, t.bytes);
      report.bytesChecked += t.bytes;
      if (actual !== t.checksum) {
        bad++;
        problem(new TensorChecksumError(name, basePath, t.checksum, actual));
      }
    }
    if (bad === 0 && baseSize === m.base.bytes) {
      report.passed.push(`${BASE_FILE}: ${entries.length} tensors, ${m.base.bytes} bytes, ok`);
    }
  }

  // experts.bin: each record that lies inside the file
  const x = m.experts;
  const expertsPath = `${dir}/${EXPERTS_FILE}`;
  const expertsSize = fileSize(expertsPath);
  try {
    checkFileSize(expertsPath, x.bytes);
  } catch (e) {
    problem(e);
  }
  if (expertsSize !== null) {
    using f = Deno.openSync(expertsPath, { read: true });
    let bad = 0;
    for (const r of x.records) {
      const what = `expert record of layer ${r.layer} expert ${r.expert}`;
      if (r.offset + r.length > expertsSize) {
        bad++;
        report.problems.push(`${what} lies past the end of ${expertsPath} (truncated)`);
        continue;
      }
      const actual = hashRange(h, f, buf, r.offset, r.length);
      report.bytesChecked += r.length;
      if (actual !== r.checksum) {
        bad++;
        problem(new ExpertChecksumError(r.layer, r.expert, expertsPath, r.checksum, actual));
      }
    }
    if (bad === 0 && expertsSize === x.bytes) {
      report.passed.push(`${EXPERTS_FILE}: ${x.records.length} records, ${x.bytes} bytes, ok`);
    }
  }

  // tokenizer and generation files
  const hasher = await createRecordHasher();
  for (const c of m.copied) {
    try {
      verifyCopiedFile(hasher, dir, c);
      report.bytesChecked += c.bytes;
      report.passed.push(`${c.name}: ${c.bytes} bytes, ok`);
    } catch (e) {
      problem(e); // PackedFileError or FileChecksumError
    }
  }
  return report;
}
