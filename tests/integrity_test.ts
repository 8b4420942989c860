/**
 * Integrity of packed models in process: every base tensor, the manifest and the copied files are
 * checksum-verified at open; manifest fields are validated naming the field; a damaged manifest
 * is recognised as a packed model's; format 1 is refused and migrates; the default model verifies.
 * (The commands' exit codes, on every region of a damaged model, are in verify_test.ts.)
 */
import assert from "node:assert/strict";
import { DEFAULT_MODEL_DIR, openModel } from "../src/model_dir.ts";
import { openPacked } from "../src/packed_weights.ts";
import {
  BASE_FILE,
  FORMAT_VERSION,
  MANIFEST_FILE,
  type PackManifest,
  type UnsealedManifest,
} from "../src/pack/format.ts";
import { FileChecksumError, PackedFileError, TensorChecksumError } from "../src/pack/integrity.ts";
import { ManifestError, readManifest, writeManifest } from "../src/pack/manifest.ts";
import { migrateV1 } from "../src/pack/migrate_v1.ts";
import { pack } from "../src/pack/pack.ts";
import { verifyPacked } from "../src/pack/verify.ts";
import { writeByteTokenizer } from "../src/tokenizer.ts";
import { TINY, writeFixture } from "../weights/fixture.ts";

/** A TINY F32 model with a tokenizer, packed once per file; tests damage copies of it. */
const root = await Deno.makeTempDir({ prefix: "integrity_test_" });
await writeFixture(`${root}/hf`, TINY);
await writeByteTokenizer(`${root}/hf`, TINY.vocab);
const packed = (await pack(`${root}/hf`, `${root}/packed`)).manifest;
globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));

let copies = 0;
function copyPacked(): string {
  const dir = `${root}/copy${copies++}`;
  Deno.mkdirSync(dir);
  for (const e of Deno.readDirSync(`${root}/packed`)) {
    Deno.copyFileSync(`${root}/packed/${e.name}`, `${dir}/${e.name}`);
  }
  return dir;
}

function flipByte(path: string, offset: number): void {
  const bytes = Deno.readFileSync(path);
  bytes[offset] ^= 0x04;
  Deno.writeFileSync(path, bytes);
}

function readJson(dir: string): PackManifest {
  return JSON.parse(Deno.readTextFileSync(`${dir}/${MANIFEST_FILE}`));
}

/** Edits manifest.json; resealed, its checksum matches again, so only field checks can catch it. */
async function editManifest(dir: string, edit: (m: PackManifest) => void, reseal: boolean) {
  const m = readJson(dir);
  edit(m);
  if (reseal) {
    const { manifestChecksum: _, ...rest } = m;
    await writeManifest(dir, rest as UnsealedManifest);
  } else {
    Deno.writeTextFileSync(`${dir}/${MANIFEST_FILE}`, JSON.stringify(m, null, 1));
  }
}

/** The error openPacked(dir) rejects with. */
async function openError(dir: string): Promise<Error> {
  const m = await openPacked(dir).catch((e) => e);
  if (!(m instanceof Error)) {
    m.close();
    assert.fail(`openPacked(${dir}) succeeded`);
  }
  return m;
}

Deno.test("openPacked() refuses a flipped byte in every base tensor, naming base.bin and the tensor", async () => {
  const names = Object.keys(packed.base.tensors);
  assert.equal(names.length, 1 + 9 * TINY.layers + 2); // embed, 9 per layer, norm, lm_head
  for (const name of names) {
    const dir = copyPacked();
    const t = packed.base.tensors[name];
    flipByte(`${dir}/${BASE_FILE}`, t.offset + Math.floor(t.bytes / 2));
    const err = await openError(dir);
    assert.ok(err instanceof TensorChecksumError, `${name}: got ${err}`);
    assert.equal(err.tensor, name);
    assert.equal(err.file, `${dir}/${BASE_FILE}`);
    assert.match(
      err.message,
      new RegExp(`base tensor ${name.replaceAll(".", "\\.")} in .*base\\.bin`),
    );
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("openPacked() refuses a truncated base.bin and a damaged or missing tokenizer.json, naming the file", async () => {
  const truncated = copyPacked();
  Deno.truncateSync(`${truncated}/${BASE_FILE}`, packed.base.bytes - 1);
  const t = await openError(truncated);
  assert.ok(t instanceof PackedFileError, `got ${t}`);
  assert.match(t.message, /base\.bin is \d+ bytes but the manifest says \d+: it is truncated/);

  const damaged = copyPacked();
  flipByte(`${damaged}/tokenizer.json`, 100);
  const d = await openError(damaged);
  assert.ok(d instanceof FileChecksumError, `got ${d}`);
  assert.match(d.message, /tokenizer\.json has checksum/);

  const missing = copyPacked();
  Deno.removeSync(`${missing}/tokenizer.json`);
  const m = await openError(missing);
  assert.ok(m instanceof PackedFileError, `got ${m}`);
  assert.match(m.message, /cannot read .*tokenizer\.json/);
});

Deno.test("readManifest() refuses content that does not match the manifest checksum, naming manifest.json", async () => {
  const dir = copyPacked();
  await editManifest(dir, (m) => {
    (m.config as Record<string, unknown>).rms_norm_eps = 1e-5; // valid, but not what was packed
  }, false);
  const err = await readManifest(dir).catch((e) => e);
  assert.ok(err instanceof ManifestError, `got ${err}`);
  assert.match(err.message, /manifest\.json has checksum [0-9a-f]{16} but its manifestChecksum/);
});

Deno.test("readManifest() names manifest.json and the field at fault, never an internal error", async () => {
  const q = "model.layers.0.self_attn.q_proj.weight";
  const cases: [string, (m: PackManifest) => void, RegExp][] = [
    [
      "halved q_proj bytes",
      (m) => m.base.tensors[q].bytes /= 2,
      /base\.tensors\["model\.layers\.0\.self_attn\.q_proj\.weight"\]\.bytes is 12288 but F32 \[96,64\] is 24576 bytes/,
    ],
    [
      "negative size",
      (m) => m.base.tensors["model.norm.weight"].bytes = -512,
      /base\.tensors\["model\.norm\.weight"\]\.bytes is -512, not a non-negative integer/,
    ],
    [
      "missing parts",
      (m) => delete (m.experts as Partial<PackManifest["experts"]>).parts,
      /experts\.parts is missing/,
    ],
    ["part offsets", (m) => m.experts.parts.up.offset += 4, /experts\.parts\.up\.offset is \d+/],
    ["part dtype", (m) => m.experts.parts.down.dtype = "BF16", /experts\.parts\.down\.bytes/],
    [
      "wrong record offset",
      (m) => m.experts.records[5].offset = m.experts.records[6].offset,
      /experts\.records\[6\]\.offset \d+ \(layer 0 expert 6\) overlaps the record before/,
    ],
    [
      "misaligned record",
      (m) => m.experts.records[3].offset += 8,
      /experts\.records\[3\]\.offset \d+ \(layer 0 expert 3\) is not a multiple of 4096/,
    ],
    [
      "record past the file",
      (m) => m.experts.bytes -= 4096,
      /experts\.records\[15\] \(layer 1 expert 7\) ends past experts\.bytes/,
    ],
    ["bad dtype", (m) => m.base.tensors[q].dtype = "F64" as "F32", /\.dtype is "F64"/],
    ["copied path", (m) => m.copied[0].name = "../x", /copied\[0\]\.name is "\.\.\/x"/],
    ["no checksum", (m) => m.base.tensors[q].checksum = "", /\.checksum is "", not a xxhash64/],
    ["format 1", (m) => m.version = 1, /format version 1 is not 2 .*re-run `main\.ts pack/],
  ];
  for (const [what, edit, re] of cases) {
    for (const reseal of [true, false]) {
      const dir = copyPacked();
      await editManifest(dir, edit, reseal);
      const err = await openError(dir);
      assert.ok(err instanceof ManifestError, `${what}: got ${err}`);
      assert.match(err.message, new RegExp(`${dir}/manifest\\.json: `), what);
      assert.match(err.message, re, what);
      Deno.removeSync(dir, { recursive: true });
    }
  }
  // a shape that disagrees with the config, bytes still consistent: named against the table
  const dir = copyPacked();
  await editManifest(dir, (m) => m.base.tensors[q].shape = [48, 128], true);
  const err = await openError(dir);
  assert.ok(err instanceof ManifestError, `got ${err}`);
  assert.match(
    err.message,
    /base tensor model\.layers\.0\.self_attn\.q_proj\.weight is \[48,128\], expected \[Hq\*Dh, D\] = \[96,64\]/,
  );
});

Deno.test("openModel() takes a directory with a damaged manifest.json for a packed model and names the manifest", async () => {
  const cache = await Deno.makeTempDir({ prefix: "integrity_cache_" });
  const before = Deno.env.get("MOE_PACK_CACHE");
  Deno.env.set("MOE_PACK_CACHE", cache);
  try {
    for (const damage of ["truncate", "array"] as const) {
      const dir = copyPacked();
      const path = `${dir}/${MANIFEST_FILE}`;
      if (damage === "truncate") Deno.truncateSync(path, 100);
      else Deno.writeTextFileSync(path, "[]");
      const err = await openModel(dir).catch((e) => e);
      assert.ok(err instanceof ManifestError, `${damage}: got ${err}`);
      assert.match(
        err.message,
        damage === "truncate"
          ? /manifest\.json is not valid JSON/
          : /the manifest is not an object/,
      );
    }
    assert.deepEqual([...Deno.readDirSync(cache)], [], "nothing was packed");
  } finally {
    if (before === undefined) Deno.env.delete("MOE_PACK_CACHE");
    else Deno.env.set("MOE_PACK_CACHE", before);
    Deno.removeSync(cache, { recursive: true });
  }
});

Deno.test("migrateV1() turns a format-1 manifest into exactly what pack() writes now", async () => {
  const dir = copyPacked();
  // what format 1 wrote: no base, copied-file or manifest checksums; copied as names
  const m = readJson(dir) as unknown as Record<string, unknown> & PackManifest;
  const v1 = {
    ...m,
    version: 1,
    base: {
      file: m.base.file,
      bytes: m.base.bytes,
      alignment: m.base.alignment,
      tensors: Object.fromEntries(
        Object.entries(m.base.tensors).map(([name, { checksum: _, ...t }]) => [name, t]),
      ),
    },
    copied: m.copied.map((c) => c.name),
    manifestChecksum: undefined,
  };
  Deno.writeTextFileSync(`${dir}/${MANIFEST_FILE}`, JSON.stringify(v1));
  const err = await openError(dir);
  assert.ok(err instanceof ManifestError, `got ${err}`);
  assert.match(
    err.message,
    /format version 1 is not 2 \(written by another release, without base and manifest checksums\).*re-run `main\.ts pack/,
  );

  const migrated = await migrateV1(dir);
  assert.equal(migrated.version, FORMAT_VERSION);
  assert.deepEqual(migrated, packed);
  (await openPacked(dir)).close();
});

Deno.test("the embedded default model is format 2 and every byte matches its manifest", async () => {
  const r = await verifyPacked(DEFAULT_MODEL_DIR);
  assert.deepEqual(r.problems, []);
  assert.equal(r.manifest?.version, FORMAT_VERSION);
  assert.equal(Object.keys(r.manifest!.base.tensors).length, 56);
  assert.equal(r.passed.length, 1 + 2 + 3); // manifest, base.bin, experts.bin, 3 copied files
});
