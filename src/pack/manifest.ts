/**
 * Reading, checking and writing manifest.json of a packed model directory (see format.ts).
 * Everything the reader relies on (format, version, record count, alignment, bounds) is checked
 * here, so the weights and the expert store can trust the numbers.
 */

import {
  BASE_ALIGN,
  FORMAT_NAME,
  FORMAT_VERSION,
  MANIFEST_FILE,
  type PackManifest,
  RECORD_ALIGN,
} from "./format.ts";

/** Thrown for a missing, foreign or inconsistent manifest.json. */
export class ManifestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ManifestError";
  }
}

const REPACK = "re-run `main.ts pack --in HF_DIR --out PACKED_DIR --force`";

/** True when dir holds a manifest.json of this format (any version: readManifest says which). */
export function isPackedDir(dir: string): boolean {
  let text: string;
  try {
    text = Deno.readTextFileSync(`${dir}/${MANIFEST_FILE}`);
  } catch {
    return false;
  }
  try {
    return (JSON.parse(text) as { format?: unknown }).format === FORMAT_NAME;
  } catch {
    return false;
  }
}

/** Reads and checks dir/manifest.json. */
export function readManifest(dir: string): PackManifest {
  const path = `${dir}/${MANIFEST_FILE}`;
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new ManifestError(
      `cannot read ${path}: ${(e as Error).message}; is ${dir} a packed model? (${REPACK})`,
    );
  }
  let m: PackManifest;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new ManifestError(`${path} is not valid JSON (${(e as Error).message}); ${REPACK}`);
  }
  checkManifest(m, path);
  return m;
}

/** Throws ManifestError unless m is a well-formed manifest of this format version. */
export function checkManifest(m: PackManifest, path: string): void {
  const fail = (what: string): never => {
    throw new ManifestError(`${path}: ${what}; ${REPACK}`);
  };
  if (typeof m !== "object" || m === null) fail("not a JSON object");
  if (m.format !== FORMAT_NAME) fail(`format ${JSON.stringify(m.format)} is not ${FORMAT_NAME}`);
  if (m.version !== FORMAT_VERSION) {
    fail(`format version ${m.version} is not ${FORMAT_VERSION} (written by another release)`);
  }
  if (typeof m.base !== "object" || typeof m.base?.tensors !== "object") fail("no base tensors");
  for (const [name, t] of Object.entries(m.base.tensors)) {
    if (t.offset % BASE_ALIGN !== 0 || t.offset + t.bytes > m.base.bytes) {
      fail(`base tensor ${name} at ${t.offset} (+${t.bytes}) is misaligned or past base.bin`);
    }
  }
  const x = m.experts;
  if (typeof x !== "object" || !Array.isArray(x?.records)) fail("no expert records");
  if (x.records.length !== x.numLayers * x.numExperts) {
    fail(`${x.records.length} expert records for ${x.numLayers} layers x ${x.numExperts} experts`);
  }
  const recordBytes = x.parts.gate.bytes + x.parts.up.bytes + x.parts.down.bytes;
  x.records.forEach((r, i) => {
    const l = Math.floor(i / x.numExperts), e = i % x.numExperts;
    if (r.layer !== l || r.expert !== e) {
      fail(`record ${i} is (layer ${r.layer}, expert ${r.expert}), expected (${l}, ${e})`);
    }
    if (
      r.offset % RECORD_ALIGN !== 0 || r.length !== recordBytes || r.offset + r.length > x.bytes
    ) {
      fail(`record of layer ${l} expert ${e} at ${r.offset} (+${r.length}) is inconsistent`);
    }
  });
}

/** Writes manifest.json into dir (readable JSON: it is small next to the weights). */
export async function writeManifest(dir: string, m: PackManifest): Promise<void> {
  await Deno.writeTextFile(`${dir}/${MANIFEST_FILE}`, JSON.stringify(m, null, 1) + "\n");
}
