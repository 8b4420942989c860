import assert from "node:assert/strict";
import { encodeFloats, toFloat64 } from "../src/dtype.ts";
import { adviseDontNeed, adviseWillNeed, mapFile } from "../src/mmap.ts";
import {
  openSafetensors,
  parseHeader,
  SafetensorsError,
  writeSafetensors,
} from "../src/safetensors.ts";

/** A safetensors file from a raw header object and data (lets tests write what the writer refuses). */
function rawFile(header: unknown, data: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("writeSafetensors() round-trips names, dtypes, shapes, values and metadata", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/m.safetensors`;
    await writeSafetensors(path, [
      {
        name: "z.weight",
        dtype: "F32",
        shape: [2, 3],
        data: encodeFloats([1, 2, 3, 4, 5, 6], "F32"),
      },
      { name: "a.bias", dtype: "BF16", shape: [3], data: encodeFloats([0.5, -1, 8], "BF16") },
      { name: "m.norm", dtype: "F16", shape: [1], data: encodeFloats([2 ** -24], "F16") },
      { name: "empty", dtype: "F32", shape: [0, 4], data: new Uint8Array(0) },
    ], { format: "pt" });
    const f = openSafetensors(path);
    try {
      assert.deepEqual(f.metadata, { format: "pt" });
      // Sorted by name, data packed in that order like the Python library.
      assert.deepEqual(f.entries.map((e) => [e.name, e.begin, e.end]), [
        ["a.bias", 0, 6],
        ["empty", 6, 6],
        ["m.norm", 6, 8],
        ["z.weight", 8, 32],
      ]);
      assert.equal(f.dataStart % 8, 0);
      const z = f.view("z.weight");
      assert.deepEqual(z.shape, [2, 3]);
      assert.equal(z.dtype, "F32");
      assert.deepEqual([...toFloat64(z)], [1, 2, 3, 4, 5, 6]);
      assert.equal(z.offset, f.dataStart + 8);
      assert.deepEqual([...toFloat64(f.view("a.bias"))], [0.5, -1, 8]);
      assert.deepEqual([...toFloat64(f.view("m.norm"))], [2 ** -24]);
      assert.equal(f.view("empty").bytes.length, 0);
      // Zero copy: the view shares the mapping's buffer.
      assert.equal(z.bytes.buffer, f.file.bytes.buffer);
    } finally {
      f.close();
    }
  });
});

Deno.test("writeSafetensors() pads the JSON header with spaces to a multiple of 8", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/p.safetensors`;
    await writeSafetensors(path, [
      { name: "x", dtype: "F32", shape: [1], data: encodeFloats([7], "F32") },
    ]);
    const bytes = await Deno.readFile(path);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(n % 8, 0);
    const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
    assert.deepEqual(JSON.parse(text), {
      x: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
    });
    assert.match(text, /^\{.*\} *$/);
    assert.equal(bytes.length, 8 + n + 4);
  });
});

Deno.test("writeSafetensors() refuses unsupported dtypes and wrong data sizes, naming the tensor", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(
      writeSafetensors(`${dir}/a`, [
        // deno-lint-ignore no-explicit-any
        { name: "ids", dtype: "I32" as any, shape: [1], data: new Uint8Array(4) },
      ]),
      (e: Error) => e instanceof SafetensorsError && /ids/.test(e.message) && /I32/.test(e.message),
    );
    await assert.rejects(
      writeSafetensors(`${dir}/b`, [
        { name: "w", dtype: "F32", shape: [2], data: new Uint8Array(4) },
      ]),
      (e: Error) => e instanceof SafetensorsError && /tensor w/.test(e.message),
    );
  });
});

Deno.test("parseHeader() rejects malformed files with the file and tensor named", () => {
  const ok = { w: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  assert.equal(parseHeader(rawFile(ok, new Uint8Array(8)), "f").entries.length, 1);
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(4), /f: 4 bytes, too short/],
    [rawFile(ok, new Uint8Array(4)), /f: tensor w ends at data byte 8 but the file holds 4/],
    [
      rawFile({ w: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)),
      /tensor w has 8 bytes but F32 \[3\] needs 12/,
    ],
    [
      rawFile({ w: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, new Uint8Array(8)),
      /tensor w has data_offsets/,
    ],
    [
      rawFile({ w: { shape: [2], data_offsets: [0, 8] } }, new Uint8Array(8)),
      /tensor w has no dtype/,
    ],
    [
      rawFile({ w: { dtype: "F32", shape: [-1], data_offsets: [0, 8] } }, new Uint8Array(8)),
      /tensor w has shape/,
    ],
    [
      rawFile({
        a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
        b: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
      }, new Uint8Array(8)),
      /a and b overlap/,
    ],
    [rawFile([1, 2], new Uint8Array(0)), /not a JSON object/],
  ];
  for (const [bytes, re] of cases) {
    assert.throws(
      () => parseHeader(bytes, "f"),
      (e: Error) => e instanceof SafetensorsError && re.test(e.message),
      String(re),
    );
  }
  const huge = new Uint8Array(16);
  new DataView(huge.buffer).setBigUint64(0, 1n << 40n, true);
  assert.throws(() => parseHeader(huge, "f"), /header length 1099511627776 exceeds the file/);
  const badJson = new Uint8Array(13);
  badJson[0] = 5;
  badJson.set(new TextEncoder().encode("{oops"), 8);
  assert.throws(() => parseHeader(badJson, "f"), /header is not valid JSON/);
});

Deno.test("parseHeader() refuses bytes no tensor owns (gap, start past 0, trailing data), as huggingface/safetensors does", () => {
  const t = (begin: number, end: number) => ({
    dtype: "F32",
    shape: [(end - begin) / 4],
    data_offsets: [begin, end],
  });
  const ok = rawFile({ a: t(0, 8), b: t(8, 16) }, new Uint8Array(16));
  assert.deepEqual(parseHeader(ok, "f").entries.map((e) => e.name), ["a", "b"]);
  const cases: [Uint8Array, RegExp][] = [
    [
      rawFile({ a: t(0, 8), b: t(12, 20) }, new Uint8Array(20)),
      /f: 4 data bytes between tensor a and tensor b belong to no tensor/,
    ],
    [
      rawFile({ a: t(8, 16) }, new Uint8Array(16)),
      /f: 8 data bytes between the start of the data and tensor a belong to no tensor/,
    ],
    [
      rawFile({ a: t(0, 8) }, new Uint8Array(12)),
      /f: 4 data bytes after the last tensor a belong to no tensor/,
    ],
    [rawFile({}, new Uint8Array(4)), /4 data bytes after the header \(no tensors\)/],
    [
      rawFile({ a: { dtype: "I64", shape: [3], data_offsets: [0, 16] } }, new Uint8Array(16)),
      /tensor a has 16 bytes but I64 \[3\] needs 24/,
    ],
  ];
  for (const [bytes, re] of cases) {
    assert.throws(
      () => parseHeader(bytes, "f"),
      (e: Error) => e instanceof SafetensorsError && re.test(e.message),
      String(re),
    );
  }
});

Deno.test("openSafetensors() lists I32 tensors but view() refuses them naming tensor and dtype", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/i.safetensors`;
    const header = {
      __metadata__: { format: "pt" },
      ids: { dtype: "I32", shape: [2], data_offsets: [0, 8] },
      w: { dtype: "F32", shape: [1], data_offsets: [8, 12] },
    };
    await Deno.writeFile(path, rawFile(header, new Uint8Array(12)));
    const f = openSafetensors(path);
    try {
      assert.deepEqual(f.entries.map((e) => `${e.name}:${e.dtype}`), ["ids:I32", "w:F32"]);
      assert.throws(
        () => f.view("ids"),
        /tensor ids has dtype I32; supported dtypes are F32, BF16, F16/,
      );
      assert.throws(() => f.view("nope"), /has no tensor nope/);
      assert.deepEqual([...toFloat64(f.view("w"))], [0]);
    } finally {
      f.close();
    }
  });
});

Deno.test("mapFile() maps with mmap, reads in read mode, and handles zero-length files", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/b.bin`;
    await Deno.writeFile(path, new Uint8Array([9, 8, 7, 6, 5]));
    for (const mode of ["mmap", "read"] as const) {
      const m = mapFile(path, { mode });
      assert.equal(m.mode, mode);
      assert.equal(m.size, 5);
      assert.deepEqual([...m.bytes], [9, 8, 7, 6, 5]);
      m.close();
      m.close(); // idempotent
    }
    const empty = `${dir}/empty.bin`;
    await Deno.writeFile(empty, new Uint8Array(0));
    for (const mode of ["mmap", "read"] as const) {
      const m = mapFile(empty, { mode });
      assert.equal(m.size, 0);
      assert.equal(m.bytes.length, 0);
      m.close();
    }
    assert.throws(() => mapFile(`${dir}/missing.bin`), /cannot open .*missing\.bin/);
    assert.throws(() => mapFile(dir), /is not a regular file/);
  });
});

/** Beyond 2^31: offsets that would break if treated as int32 anywhere. */
const BIG_OFFSET = 2 ** 31 + 2 ** 30 + 12_345;

Deno.test("mapFile() maps a sparse 3 GiB file and reads bytes past 2 GiB", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/sparse.bin`;
    {
      using f = await Deno.open(path, { write: true, create: true });
      await f.truncate(BIG_OFFSET + 8); // sparse: no disk blocks are written
      await f.seek(BIG_OFFSET, Deno.SeekMode.Start);
      await f.write(new Uint8Array([1, 2, 3, 4]));
    }
    const m = mapFile(path);
    try {
      assert.equal(m.mode, "mmap");
      assert.equal(m.size, BIG_OFFSET + 8);
      assert.equal(m.bytes.length, BIG_OFFSET + 8);
      assert.deepEqual([...m.bytes.subarray(BIG_OFFSET - 1, BIG_OFFSET + 5)], [0, 1, 2, 3, 4, 0]);
      assert.equal(adviseWillNeed(m, BIG_OFFSET, 4096), true);
      assert.equal(adviseDontNeed(m, BIG_OFFSET, 4096), true);
      assert.equal(adviseDontNeed(path, 0, BIG_OFFSET + 8), true);
      // The data is still readable after its page cache was dropped.
      assert.equal(m.bytes[BIG_OFFSET + 3], 4);
    } finally {
      m.close();
    }
  });
});
