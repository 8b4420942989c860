/**
 * Reading, checking and writing manifest.json of a packed model directory (see format.ts).
 * Everything the reader relies on is checked here, each failure naming manifest.json and the field
 * at fault: format and version, every number (a non-negative integer), every shape and dtype,
 * bytes = shape x dtype size, alignment and bounds, the parts inside an expert record, the record
 * table, and last the manifest's own checksum. The weights and the expert store can then trust the
 * numbers; the data files are checked against them by packed_weights.ts and verify.ts.
 */

import { isFloatDType, tensorBytes } from "../dtype.ts";
import { isQuantType, QUANT_TYPES } from "../quant/formats.ts";
import type { DType } from "../types.ts";
import {
  BASE_ALIGN,
  BASE_FILE,
  CHECKSUM_ALGORITHM,
  CHECKSUM_PATTERN,
  COPIED_FILES,
  createRecordHasher,
  EXPERTS_FILE,
  FORMAT_NAME,
  FORMAT_VERSION,
  MANIFEST_FILE,
  manifestDigest,
  type PackManifest,
  RECORD_ALIGN,
  type UnsealedManifest,
} from "./format.ts";

/** Thrown for a missing, foreign, damaged or inconsistent manifest.json. */
export class ManifestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ManifestError";
  }
}

export const REPACK = "re-run `main.ts pack --in HF_DIR --out PACKED_DIR --force`";

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** True when dir holds a manifest.json of this format (any version: readManifest says which). */
export function isPackedDir(dir: string): boolean {
  try {
    const m = JSON.parse(Deno.readTextFileSync(`${dir}/${MANIFEST_FILE}`));
    return (m as { format?: unknown })?.format === FORMAT_NAME;
  } catch {
    return false;
  }
}

/**
 * True when dir should be opened as a packed model: its manifest.json is of this format, or is
 * damaged (not JSON, not an object), or sits without a config.json (so dir is no checkpoint).
 * A damaged manifest is then reported by readManifest, naming manifest.json, instead of dir being
 * taken for a Hugging Face checkpoint. A valid foreign manifest.json beside a config.json is not.
 */
export function looksPacked(dir: string): boolean {
  const path = `${dir}/${MANIFEST_FILE}`;
  if (!isFile(path)) return false;
  let m: unknown;
  try {
    m = JSON.parse(Deno.readTextFileSync(path));
  } catch {
    return true;
  }
  if (typeof m !== "object" || m === null || Array.isArray(m)) return true;
  if ((m as { format?: unknown }).format === FORMAT_NAME) return true;
  return !isFile(`${dir}/config.json`);
}

/** Reads and checks dir/manifest.json, its checksum included. */
export async function readManifest(dir: string): Promise<PackManifest> {
  const path = `${dir}/${MANIFEST_FILE}`;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new ManifestError(
      `cannot read ${path}: ${(e as Error).message}; is ${dir} a packed model? (${REPACK})`,
    );
  }
  let m: PackManifest;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new ManifestError(
      `${path} is not valid JSON (${(e as Error).message}): the file is damaged; ${REPACK}`,
    );
  }
  checkManifest(m, path);
  const actual = manifestDigest(await createRecordHasher(), m);
  if (actual !== m.manifestChecksum) {
    throw new ManifestError(
      `${path} has checksum ${actual} but its manifestChecksum field says ` +
        `${m.manifestChecksum}: the manifest is damaged or was edited; ${REPACK}`,
    );
  }
  return m;
}

/** Names a field for messages: base.tensors["model.norm.weight"].bytes. */
function field(...parts: (string | number)[]): string {
  return parts.map((p, i) =>
    typeof p === "number"
      ? `[${p}]`
      : /^[A-Za-z_]\w*$/.test(p)
      ? (i ? `.${p}` : p)
      : `[${JSON.stringify(p)}]`
  ).join("");
}

/** The checks of one manifest; each failure throws a ManifestError naming path and field. */
class Checker {
  constructor(private readonly path: string) {}

  fail(what: string): never {
    throw new ManifestError(`${this.path}: ${what}; ${REPACK}`);
  }

  object(v: unknown, name: string): Record<string, unknown> {
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      this.fail(`${name} is ${v === undefined ? "missing" : "not an object"}`);
    }
    return v as Record<string, unknown>;
  }

  /** A non-negative safe integer (sizes and offsets). */
  count(v: unknown, name: string): number {
    if (!Number.isSafeInteger(v) || (v as number) < 0) {
      this.fail(`${name} is ${JSON.stringify(v) ?? "missing"}, not a non-negative integer`);
    }
    return v as number;
  }

  positive(v: unknown, name: string): number {
    if (this.count(v, name) === 0) this.fail(`${name} is 0`);
    return v as number;
  }

  string(v: unknown, name: string): string {
    if (typeof v !== "string") this.fail(`${name} is ${JSON.stringify(v) ?? "missing"}, not text`);
    return v as string;
  }

  equal(v: unknown, want: unknown, name: string): void {
    if (v !== want) {
      this.fail(`${name} is ${JSON.stringify(v) ?? "missing"}, expected ${JSON.stringify(want)}`);
    }
  }

  checksum(v: unknown, name: string): void {
    if (typeof v !== "string" || !CHECKSUM_PATTERN.test(v)) {
      this.fail(`${name} is ${JSON.stringify(v) ?? "missing"}, not a ${CHECKSUM_ALGORITHM} hex`);
    }
  }

  /** gate | up | down parts of a record: contiguous, gate and up of one dtype; returns the
   * record's bytes. */
  parts(raw: unknown, name: string): number {
    const parts = this.object(raw, name);
    let recordBytes = 0;
    let dtype: unknown;
    for (const k of ["gate", "up", "down"] as const) {
      const f = `${name}.${k}`;
      const p = this.object(parts[k], f);
      const offset = this.count(p.offset, `${f}.offset`);
      if (offset !== recordBytes) {
        this.fail(
          `${f}.offset is ${offset}; the parts are gate | up | down, so it must be ${recordBytes}`,
        );
      }
      recordBytes += this.tensor(p, f);
      // gate and up share one kernel, so one dtype; down may differ (a quantized type whose
      // block does not divide I falls back for down only)
      if (k === "up" && p.dtype !== dtype) {
        this.fail(`${f}.dtype is ${p.dtype} but ${name}.gate.dtype is ${dtype}`);
      }
      dtype = p.dtype;
    }
    return recordBytes;
  }

  /** shape, dtype and bytes of a tensor, with bytes = elements x dtype size. */
  tensor(t: Record<string, unknown>, name: string): number {
    const shape = t.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      this.fail(`${name}.shape is ${JSON.stringify(shape) ?? "missing"}, not a list of sizes`);
    }
    const dtype = t.dtype;
    if (typeof dtype !== "string" || !(isFloatDType(dtype) || isQuantType(dtype))) {
      this.fail(
        `${name}.dtype is ${JSON.stringify(dtype) ?? "missing"}, not one of ` +
          `F32, BF16, F16, ${QUANT_TYPES.join(", ")}`,
      );
    }
    const bytes = this.count(t.bytes, `${name}.bytes`);
    let want = -1;
    try {
      want = tensorBytes(dtype as DType, shape as number[]);
    } catch (e) {
      this.fail(`${name}: ${(e as Error).message}`);
    }
    if (bytes !== want) {
      this.fail(`${name}.bytes is ${bytes} but ${dtype} [${shape}] is ${want} bytes`);
    }
    return bytes;
  }
}

/** Throws ManifestError unless m is a well-formed manifest of this format version. */
export function checkManifest(m: PackManifest, path: string): void {
  const c = new Checker(path);
  const top = c.object(m, "the manifest");
  if (top.format !== FORMAT_NAME) {
    c.fail(`format ${JSON.stringify(top.format)} is not ${FORMAT_NAME}`);
  }
  if (top.version !== FORMAT_VERSION) {
    c.fail(
      `format version ${top.version} is not ${FORMAT_VERSION} (written by another release` +
        `${top.version === 1 ? ", without base and manifest checksums" : ""})`,
    );
  }
  c.object(top.config, "config");
  c.string(top.source, "source");
  c.checksum(top.manifestChecksum, "manifestChecksum");

  // base.bin
  const base = c.object(top.base, "base");
  c.equal(base.file, BASE_FILE, "base.file");
  c.equal(base.alignment, BASE_ALIGN, "base.alignment");
  c.equal(base.checksum, CHECKSUM_ALGORITHM, "base.checksum");
  const baseBytes = c.count(base.bytes, "base.bytes");
  const tensors = c.object(base.tensors, "base.tensors");
  const spans: { name: string; begin: number; end: number }[] = [];
  for (const [name, raw] of Object.entries(tensors)) {
    const f = field("base", "tensors", name);
    const t = c.object(raw, f);
    const offset = c.count(t.offset, `${f}.offset`);
    const bytes = c.tensor(t, f);
    if (offset % BASE_ALIGN !== 0) {
      c.fail(`${f}.offset ${offset} is not a multiple of ${BASE_ALIGN}`);
    }
    if (offset + bytes > baseBytes) {
      c.fail(`${f} at ${offset} (+${bytes}) ends past base.bytes ${baseBytes}`);
    }
    c.string(t.role, `${f}.role`);
    if (t.layer !== undefined) c.count(t.layer, `${f}.layer`);
    c.checksum(t.checksum, `${f}.checksum`);
    spans.push({ name, begin: offset, end: offset + bytes });
  }
  if (spans.length === 0) c.fail("base.tensors is empty");
  spans.sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i].begin < spans[i - 1].end) {
      c.fail(`base tensors ${spans[i - 1].name} and ${spans[i].name} overlap in ${BASE_FILE}`);
    }
  }

  // experts.bin
  const x = c.object(top.experts, "experts");
  c.equal(x.file, EXPERTS_FILE, "experts.file");
  c.equal(x.alignment, RECORD_ALIGN, "experts.alignment");
  c.equal(x.checksum, CHECKSUM_ALGORITHM, "experts.checksum");
  const xBytes = c.count(x.bytes, "experts.bytes");
  const L = c.positive(x.numLayers, "experts.numLayers");
  const E = c.positive(x.numExperts, "experts.numExperts");
  const recordBytes = [c.parts(x.parts, "experts.parts")];
  if (x.layerParts !== undefined) {
    if (!Array.isArray(x.layerParts) || x.layerParts.length !== L) {
      c.fail(`experts.layerParts is not a list of ${L} layers' parts`);
    }
    recordBytes.length = 0;
    (x.layerParts as unknown[]).forEach((p, l) => {
      recordBytes.push(c.parts(p, field("experts", "layerParts", l)));
    });
  }
  const records = x.records;
  if (!Array.isArray(records)) c.fail("experts.records is missing");
  const recs = records as unknown[];
  if (recs.length !== L * E) {
    c.fail(`experts.records has ${recs.length} records for ${L} layers x ${E} experts`);
  }
  let end = 0;
  recs.forEach((raw, i) => {
    const f = field("experts", "records", i);
    const r = c.object(raw, f);
    const l = Math.floor(i / E), e = i % E;
    if (r.layer !== l || r.expert !== e) {
      c.fail(`${f} is (layer ${r.layer}, expert ${r.expert}), expected (${l}, ${e})`);
    }
    const offset = c.count(r.offset, `${f}.offset`);
    if (offset % RECORD_ALIGN !== 0) {
      c.fail(`${f}.offset ${offset} (layer ${l} expert ${e}) is not a multiple of ${RECORD_ALIGN}`);
    }
    if (offset < end) {
      c.fail(`${f}.offset ${offset} (layer ${l} expert ${e}) overlaps the record before`);
    }
    const want = recordBytes[recordBytes.length === 1 ? 0 : l];
    c.equal(c.count(r.length, `${f}.length`), want, `${f}.length`);
    end = offset + want;
    if (end > xBytes) c.fail(`${f} (layer ${l} expert ${e}) ends past experts.bytes ${xBytes}`);
    c.checksum(r.checksum, `${f}.checksum`);
  });

  // audit and copied files
  if (!Array.isArray(top.skipped)) c.fail("skipped is missing");
  (top.skipped as unknown[]).forEach((raw, i) => {
    const f = field("skipped", i);
    const s = c.object(raw, f);
    for (const k of ["name", "role", "dtype", "file"]) c.string(s[k], `${f}.${k}`);
    if (!Array.isArray(s.shape)) c.fail(`${f}.shape is not a list`);
    c.count(s.bytes, `${f}.bytes`);
  });
  if (!Array.isArray(top.copied)) c.fail("copied is missing");
  (top.copied as unknown[]).forEach((raw, i) => {
    const f = field("copied", i);
    const s = c.object(raw, f);
    if (typeof s.name !== "string" || !COPIED_FILES.includes(s.name)) {
      c.fail(`${f}.name is ${JSON.stringify(s.name)}, not one of ${COPIED_FILES.join(", ")}`);
    }
    c.count(s.bytes, `${f}.bytes`);
    c.checksum(s.checksum, `${f}.checksum`);
  });
}

/** Seals m with its checksum and writes manifest.json into dir (readable JSON: it is small). */
export async function writeManifest(dir: string, m: UnsealedManifest): Promise<PackManifest> {
  const sealed: PackManifest = {
    ...m,
    manifestChecksum: manifestDigest(await createRecordHasher(), m),
  };
  await Deno.writeTextFile(`${dir}/${MANIFEST_FILE}`, JSON.stringify(sealed, null, 1) + "\n");
  return sealed;
}
