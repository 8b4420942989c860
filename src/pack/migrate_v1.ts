/**
 * One-off migration of a format-1 packed directory to format 2 in place: base.bin and experts.bin
 * are not touched; the manifest gains a checksum per base tensor and per copied file and its own
 * checksum. Used once on weights/default/ (whose Hugging Face source is kept out of the tree), after
 * which its tests (held-out perplexity 26.889, greedy ids) still pass on the unchanged bytes.
 *
 * Format 1 had no checksum for base.bin: the migration records what base.bin holds now, so run it
 * only on a directory whose outputs you have checked. Every expert record is verified against its
 * format-1 checksum first, and the sizes of both files against the manifest.
 *
 *   deno run -A src/pack/migrate_v1.ts DIR
 */

import { ExpertChecksumError } from "../experts/store.ts";
import {
  BASE_FILE,
  CHECKSUM_ALGORITHM,
  type CopiedFile,
  createRecordHasher,
  EXPERTS_FILE,
  FORMAT_NAME,
  MANIFEST_FILE,
  manifestDigest,
  type PackManifest,
  type UnsealedManifest,
} from "./format.ts";
import { checkFileSize } from "./integrity.ts";
import { ManifestError, readManifest } from "./manifest.ts";

/** Rewrites dir/manifest.json from format 1 to format 2 (see the module comment). */
export async function migrateV1(dir: string): Promise<PackManifest> {
  const path = `${dir}/${MANIFEST_FILE}`;
  const old = JSON.parse(await Deno.readTextFile(path));
  if (old?.format !== FORMAT_NAME || old?.version !== 1) {
    throw new ManifestError(`${path} is not a format-1 ${FORMAT_NAME} manifest`);
  }
  const hasher = await createRecordHasher();
  const basePath = `${dir}/${BASE_FILE}`, expertsPath = `${dir}/${EXPERTS_FILE}`;
  checkFileSize(basePath, old.base.bytes);
  checkFileSize(expertsPath, old.experts.bytes);
  const experts = await Deno.readFile(expertsPath);
  for (const r of old.experts.records) {
    const actual = hasher.digest([experts.subarray(r.offset, r.offset + r.length)]);
    if (actual !== r.checksum) {
      throw new ExpertChecksumError(r.layer, r.expert, expertsPath, r.checksum, actual);
    }
  }
  const base = await Deno.readFile(basePath);
  const tensors: PackManifest["base"]["tensors"] = {};
  for (const [name, t] of Object.entries(old.base.tensors as PackManifest["base"]["tensors"])) {
    const checksum = hasher.digest([base.subarray(t.offset, t.offset + t.bytes)]);
    tensors[name] = { ...t, checksum };
  }
  const copied: CopiedFile[] = [];
  for (const name of old.copied as string[]) {
    const bytes = await Deno.readFile(`${dir}/${name}`);
    copied.push({ name, bytes: bytes.length, checksum: hasher.digest([bytes]) });
  }
  const m: UnsealedManifest = {
    format: FORMAT_NAME,
    version: 2,
    config: old.config,
    source: old.source,
    base: { ...old.base, checksum: CHECKSUM_ALGORITHM, tensors },
    experts: old.experts,
    skipped: old.skipped,
    copied,
  };
  const sealed: PackManifest = { ...m, manifestChecksum: manifestDigest(hasher, m) };
  const tmp = `${path}.migrating`;
  await Deno.writeTextFile(tmp, JSON.stringify(sealed, null, 1) + "\n");
  await Deno.rename(tmp, path);
  return await readManifest(dir); // checks every field and the checksum just written
}

if (import.meta.main) {
  const [dir] = Deno.args;
  if (!dir) {
    console.error("usage: deno run -A src/pack/migrate_v1.ts PACKED_DIR");
    Deno.exit(2);
  }
  const m = await migrateV1(dir);
  console.log(`${dir}: format ${m.version}, ${Object.keys(m.base.tensors).length} base tensors`);
}
