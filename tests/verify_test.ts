/**
 * The commands on damaged packed models, run as a user runs them (subprocesses of main.ts):
 * fault injection over every region of a packed TINY model (the manifest, each base tensor, each
 * expert record, the tokenizer, truncation of each file), each damaged copy given to logits,
 * generate, verify and audit. Every run must exit non-zero with a named error naming the file and
 * the tensor, record or field, and never print NaN. Also: verify and audit pass intact models, and
 * audit fails on each case issue 12 found it passing.
 */
import assert from "node:assert/strict";
import { DEFAULT_MODEL_DIR } from "../src/model_dir.ts";
import {
  BASE_FILE,
  EXPERTS_FILE,
  MANIFEST_FILE,
  type PackManifest,
  type UnsealedManifest,
} from "../src/pack/format.ts";
import { writeManifest } from "../src/pack/manifest.ts";
import { pack } from "../src/pack/pack.ts";
import { writeByteTokenizer } from "../src/tokenizer.ts";
import { TINY, writeFixture } from "../weights/fixture.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(args: string[]): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-webgpu", "--unstable-no-legacy-abort", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

const root = await Deno.makeTempDir({ prefix: "verify_test_" });
await writeFixture(`${root}/hf`, TINY);
await writeByteTokenizer(`${root}/hf`, TINY.vocab);
const manifest = (await pack(`${root}/hf`, `${root}/packed`)).manifest;
globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));

let copies = 0;
function copyDir(from: string): string {
  const dir = `${root}/copy${copies++}`;
  Deno.mkdirSync(dir);
  for (const e of Deno.readDirSync(from)) {
    Deno.copyFileSync(`${from}/${e.name}`, `${dir}/${e.name}`);
  }
  return dir;
}

function flipByte(path: string, offset: number, mask = 0x04): void {
  const bytes = Deno.readFileSync(path);
  bytes[offset] ^= mask;
  Deno.writeFileSync(path, bytes);
}

function truncateToHalf(path: string): void {
  Deno.truncateSync(path, Math.floor(Deno.statSync(path).size / 2));
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** One damaged region: how to damage a copy, the error class, and what the message must name. */
interface Region {
  name: string;
  damage(dir: string): void;
  error: string;
  names: RegExp;
}

function regions(): Region[] {
  const out: Region[] = [];
  const text = Deno.readTextFileSync(`${root}/packed/${MANIFEST_FILE}`);
  const at = text.indexOf('"hidden_size": ') + '"hidden_size": '.length; // a digit of a value
  out.push({
    name: "manifest.json: one byte of a value",
    damage: (dir) => flipByte(`${dir}/${MANIFEST_FILE}`, at, 0x01), // "64" -> "74": still JSON
    error: "ManifestError",
    names: /manifest\.json has checksum/,
  });
  out.push({
    name: "manifest.json: one byte of the syntax",
    damage: (dir) => flipByte(`${dir}/${MANIFEST_FILE}`, 0, 0x01), // "{" -> "z"
    error: "ManifestError",
    names: /manifest\.json is not valid JSON/,
  });
  for (const [name, t] of Object.entries(manifest.base.tensors)) {
    out.push({
      name: `base.bin: ${name}`,
      damage: (dir) => flipByte(`${dir}/${BASE_FILE}`, t.offset + Math.floor(t.bytes / 2)),
      error: "TensorChecksumError",
      names: new RegExp(`base tensor ${esc(name)} in \\S+base\\.bin`),
    });
  }
  for (const r of manifest.experts.records) {
    out.push({
      name: `experts.bin: layer ${r.layer} expert ${r.expert}`,
      damage: (dir) => flipByte(`${dir}/${EXPERTS_FILE}`, r.offset + Math.floor(r.length / 3)),
      error: "ExpertChecksumError",
      names: new RegExp(`layer ${r.layer} expert ${r.expert} in \\S+experts\\.bin`),
    });
  }
  out.push({
    name: "tokenizer.json: one byte",
    damage: (dir) => flipByte(`${dir}/tokenizer.json`, 50),
    error: "FileChecksumError",
    names: /tokenizer\.json has checksum/,
  });
  const truncations: [string, string, RegExp][] = [
    [MANIFEST_FILE, "ManifestError", /manifest\.json is not valid JSON/],
    [
      BASE_FILE,
      "PackedFileError",
      /base\.bin is \d+ bytes but the manifest says \d+: it is truncated/,
    ],
    [
      EXPERTS_FILE,
      "ExpertStoreError",
      /experts\.bin is \d+ bytes but the manifest says \d+: it is truncated/,
    ],
    ["tokenizer.json", "PackedFileError", /tokenizer\.json is \d+ bytes but the manifest says/],
  ];
  for (const [file, error, names] of truncations) {
    out.push({
      name: `${file}: truncated`,
      damage: (dir) => truncateToHalf(`${dir}/${file}`),
      error,
      names,
    });
  }
  return out;
}

const COMMANDS: Record<string, (dir: string) => string[]> = {
  logits: (dir) => ["logits", "--model", dir, "--ids", "1,2,3"],
  generate: (dir) => ["generate", "--model", dir, "--ids", "1,2", "--max-tokens", "2", "--json"],
  verify: (dir) => ["verify", "--model", dir],
  audit: (dir) => ["audit", "--model", dir],
};

/** Why a run on a damaged region does not pass, or null when it does. */
function judge(command: string, region: Region, r: Run): string | null {
  const all = r.stdout + r.stderr;
  if (r.code === 0) return "exit 0";
  if (/NaN/.test(all)) return "printed NaN";
  if (!region.names.test(all)) return `does not name the region (${region.names})`;
  if (command === "logits" || command === "generate") {
    const named = new RegExp(`${command} failed: ${region.error}: `);
    if (!named.test(r.stderr)) return `no "${command} failed: ${region.error}" in: ${r.stderr}`;
  }
  if (command === "verify" && !/FAIL /.test(r.stdout) && !/verify failed/.test(r.stderr)) {
    return "verify listed no FAIL line";
  }
  return null;
}

Deno.test("fault injection: every damaged region makes logits, generate, verify and audit exit non-zero naming it, never NaN", async () => {
  const failures: string[] = [];
  const rows: string[] = [];
  const list = regions();
  assert.equal(list.length, 2 + Object.keys(manifest.base.tensors).length + 16 + 1 + 4);
  for (const region of list) {
    const dir = copyDir(`${root}/packed`);
    region.damage(dir);
    const names = Object.keys(COMMANDS);
    // two at a time: the machine has two cores
    const runs: Run[] = [];
    for (let i = 0; i < names.length; i += 2) {
      runs.push(...await Promise.all(names.slice(i, i + 2).map((c) => cli(COMMANDS[c](dir)))));
    }
    const cells = names.map((c, i) => {
      const why = judge(c, region, runs[i]);
      if (why !== null) failures.push(`${region.name} / ${c}: ${why}`);
      return why === null ? `exit ${runs[i].code}` : "FAIL";
    });
    rows.push(`${region.name.padEnd(56)} ${cells.map((c) => c.padEnd(8)).join(" ")}`);
    Deno.removeSync(dir, { recursive: true });
  }
  console.log(
    `${"region".padEnd(56)} ${Object.keys(COMMANDS).map((c) => c.padEnd(8)).join(" ")}\n` +
      rows.join("\n"),
  );
  assert.deepEqual(failures, []);
});

Deno.test("main.ts verify and audit pass an intact packed model and the default model", async () => {
  for (const dir of [`${root}/packed`, DEFAULT_MODEL_DIR]) {
    const v = await cli(["verify", "--model", dir]);
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /ok {4}base\.bin: \d+ tensors/);
    assert.match(v.stdout, /ok {4}experts\.bin: \d+ records/);
    assert.match(v.stdout, /every byte matches the manifest/);
    const a = await cli(["audit", "--model", dir]);
    assert.equal(a.code, 0, a.stderr);
    assert.match(
      a.stdout,
      /verified: manifest, \d+ base tensors, \d+ expert records, [23] copied files/,
    );
  }
  const hf = await cli(["verify", "--model", `${root}/hf`]);
  assert.equal(hf.code, 0, hf.stderr);
  assert.match(hf.stdout, /Hugging Face checkpoint, .*carry no checksums/);
});

Deno.test("main.ts audit exits 1 on issue 12's cases: damaged record, negative size, wrong record offset, missing tokenizer.json", async () => {
  const reseal = async (dir: string, edit: (m: PackManifest) => void) => {
    const m = JSON.parse(Deno.readTextFileSync(`${dir}/${MANIFEST_FILE}`)) as PackManifest;
    edit(m);
    const { manifestChecksum: _, ...rest } = m;
    await writeManifest(dir, rest as UnsealedManifest);
  };
  const r5 = manifest.experts.records[5];
  const cases: [string, (dir: string) => Promise<void> | void, RegExp][] = [
    [
      "damaged expert record",
      (dir) => flipByte(`${dir}/${EXPERTS_FILE}`, r5.offset + 7),
      /expert record of layer 0 expert 5 in \S+experts\.bin has checksum/,
    ],
    [
      "negative tensor size",
      (dir) => reseal(dir, (m) => m.base.tensors["model.norm.weight"].bytes = -512),
      /base\.tensors\["model\.norm\.weight"\]\.bytes is -512/,
    ],
    [
      "wrong expert offset",
      (dir) => reseal(dir, (m) => m.experts.records[5].offset += 4096),
      /experts\.records\[6\]\.offset \d+ \(layer 0 expert 6\) overlaps the record before/,
    ],
    [
      "record checksums swapped, manifest resealed",
      (dir) =>
        reseal(dir, (m) => {
          const [a, b] = [m.experts.records[5], m.experts.records[6]];
          [a.checksum, b.checksum] = [b.checksum, a.checksum];
        }),
      /expert record of layer 0 expert 5 in \S+experts\.bin has checksum/,
    ],
    [
      "record checksums swapped, manifest not resealed",
      (dir) => {
        const path = `${dir}/${MANIFEST_FILE}`;
        const m = JSON.parse(Deno.readTextFileSync(path)) as PackManifest;
        const [a, b] = [m.experts.records[5], m.experts.records[6]];
        [a.checksum, b.checksum] = [b.checksum, a.checksum];
        Deno.writeTextFileSync(path, JSON.stringify(m, null, 1));
      },
      /manifest\.json has checksum/,
    ],
    [
      "missing tokenizer.json",
      (dir) => Deno.removeSync(`${dir}/tokenizer.json`),
      /cannot read \S+tokenizer\.json/,
    ],
  ];
  for (const [what, damage, re] of cases) {
    const dir = copyDir(`${root}/packed`);
    await damage(dir);
    const a = await cli(["audit", "--model", dir]);
    assert.equal(a.code, 1, `${what}: ${a.stderr}`);
    assert.match(a.stderr, re, what);
    assert.doesNotMatch(a.stdout + a.stderr, /-512 B|RangeError|TypeError/, what);
    const g = await cli(["generate", "--model", dir, "--ids", "1,2", "--max-tokens", "2"]);
    assert.equal(g.code, 1, `${what}: generate ${g.stderr}`);
    assert.match(
      g.stderr,
      /generate failed: (ManifestError|ExpertChecksumError|PackedFileError): /,
    );
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("main.ts logits on a copy of the default model with one flipped byte in model.norm.weight exits 1 naming the tensor, no NaN", async () => {
  const dir = copyDir(DEFAULT_MODEL_DIR);
  const m = JSON.parse(Deno.readTextFileSync(`${dir}/${MANIFEST_FILE}`)) as PackManifest;
  const t = m.base.tensors["model.norm.weight"];
  flipByte(`${dir}/${BASE_FILE}`, t.offset + 11, 0x40);
  const r = await cli(["logits", "--model", dir, "--ids", "1,2,3"]);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, "");
  assert.match(
    r.stderr,
    /logits failed: TensorChecksumError: base tensor model\.norm\.weight in \S+base\.bin/,
  );
  Deno.removeSync(dir, { recursive: true });
});
