import assert from "node:assert/strict";
import {
  bf16ToF32,
  encodeFloats,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  toFloat32,
  toFloat64,
} from "../src/dtype.ts";
import type { FloatDType, TensorView } from "../src/types.ts";

/** The number whose f32 bit pattern is bits. */
function f32FromBits(bits: number): number {
  return new Float32Array(new Uint32Array([bits]).buffer)[0];
}

Deno.test("bf16ToF32() decodes known bit patterns exactly", () => {
  assert.equal(bf16ToF32(0x3f80), 1);
  assert.equal(bf16ToF32(0xc000), -2);
  assert.equal(bf16ToF32(0x3e80), 0.25);
  assert.equal(bf16ToF32(0x4049), 3.140625);
  assert.equal(bf16ToF32(0x0001), 2 ** -133); // smallest subnormal
  assert.equal(bf16ToF32(0x7f80), Infinity);
  assert.equal(bf16ToF32(0xff80), -Infinity);
  assert.ok(Number.isNaN(bf16ToF32(0x7fc0)));
  assert.ok(Object.is(bf16ToF32(0x8000), -0));
});

Deno.test("f32ToBf16() rounds to nearest, ties to even", () => {
  assert.equal(f32ToBf16(1), 0x3f80);
  assert.equal(f32ToBf16(Math.PI), 0x4049); // 3.14159 -> 3.140625
  assert.equal(f32ToBf16(f32FromBits(0x3f808000)), 0x3f80); // tie, even below
  assert.equal(f32ToBf16(f32FromBits(0x3f818000)), 0x3f82); // tie, odd below: up
  assert.equal(f32ToBf16(f32FromBits(0x3f808001)), 0x3f81); // just above the tie
  assert.equal(f32ToBf16(f32FromBits(0x3f807fff)), 0x3f80); // just below the tie
  assert.equal(f32ToBf16(f32FromBits(0x7f7fffff)), 0x7f80); // max f32 rounds to infinity
  assert.equal(f32ToBf16(-0), 0x8000);
  assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(NaN))));
});

Deno.test("f16ToF32() decodes normals, subnormals, infinities and NaN", () => {
  assert.equal(f16ToF32(0x3c00), 1);
  assert.equal(f16ToF32(0xc000), -2);
  assert.equal(f16ToF32(0x3555), 0.333251953125);
  assert.equal(f16ToF32(0x7bff), 65504);
  assert.equal(f16ToF32(0x0400), 2 ** -14); // smallest normal
  assert.equal(f16ToF32(0x0001), 2 ** -24); // smallest subnormal
  assert.equal(f16ToF32(0x03ff), 1023 * 2 ** -24); // largest subnormal
  assert.equal(f16ToF32(0x7c00), Infinity);
  assert.equal(f16ToF32(0xfc00), -Infinity);
  assert.ok(Number.isNaN(f16ToF32(0x7e00)));
  assert.ok(Object.is(f16ToF32(0x8000), -0));
});

Deno.test("f32ToF16() rounds to nearest even, overflows to inf, underflows to subnormals", () => {
  assert.equal(f32ToF16(1), 0x3c00);
  assert.equal(f32ToF16(1 / 3), 0x3555);
  assert.equal(f32ToF16(65504), 0x7bff);
  assert.equal(f32ToF16(65519), 0x7bff); // below the tie with 65536
  assert.equal(f32ToF16(65520), 0x7c00); // tie, odd below: up to infinity
  assert.equal(f32ToF16(1e6), 0x7c00);
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00); // tie, even below
  assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02); // tie, odd below: up
  assert.equal(f32ToF16(2 ** -24), 0x0001);
  assert.equal(f32ToF16(2 ** -25), 0x0000); // tie with zero: even
  assert.equal(f32ToF16(1.5 * 2 ** -25), 0x0001);
  assert.equal(f32ToF16(3 * 2 ** -25), 0x0002); // 1.5 ulp tie: up to even 2
  assert.equal(f32ToF16(1023.5 * 2 ** -24), 0x0400); // subnormal carries into the exponent
  assert.equal(f32ToF16(2 ** -30), 0x0000);
  assert.equal(f32ToF16(-0), 0x8000);
  assert.equal(f32ToF16(-Infinity), 0xfc00);
  assert.ok(Number.isNaN(f16ToF32(f32ToF16(NaN))));
});

Deno.test("f32ToF16() and f32ToBf16() invert the decoders on every non-NaN pattern", () => {
  for (let bits = 0; bits < 0x10000; bits++) {
    const h = f16ToF32(bits);
    if (!Number.isNaN(h)) assert.equal(f32ToF16(h), bits, `f16 0x${bits.toString(16)}`);
    const b = bf16ToF32(bits);
    if (!Number.isNaN(b)) assert.equal(f32ToBf16(b), bits, `bf16 0x${bits.toString(16)}`);
  }
});

function view(values: number[], dtype: FloatDType): TensorView {
  const bytes = encodeFloats(values, dtype);
  return { name: "t", dtype, shape: [2, values.length / 2], bytes, file: "mem", offset: 0 };
}

Deno.test("toFloat32() and toFloat64() decode F32, BF16 and F16 views", () => {
  const values = [1, -2, 0.5, 3.140625, 2 ** -14, 65504];
  for (const dtype of ["F32", "BF16", "F16"] as const) {
    if (dtype === "BF16") {
      assert.deepEqual([...toFloat64(view(values, dtype))], [
        1,
        -2,
        0.5,
        3.140625,
        2 ** -14,
        65536,
      ]);
    } else {
      assert.deepEqual([...toFloat64(view(values, dtype))], values);
    }
  }
  const pi = toFloat32(view([Math.PI, 0], "F32"));
  assert.equal(pi[0], Math.fround(Math.PI));
  assert.equal(toFloat32(view([Math.PI, 0], "BF16"))[0], 3.140625);
});

Deno.test("toFloat64() reads a view at an odd byte offset of its buffer", () => {
  const inner = encodeFloats([1.5, -0.25], "F32");
  const outer = new Uint8Array(inner.length + 3);
  outer.set(inner, 3);
  const v: TensorView = {
    name: "t",
    dtype: "F32",
    shape: [2],
    bytes: outer.subarray(3),
    file: "mem",
    offset: 3,
  };
  assert.deepEqual([...toFloat64(v)], [1.5, -0.25]);
});
