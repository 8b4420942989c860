/** src/philox.ts against Random123's known-answer vectors, exact 64-bit products and seed keys. */
import assert from "node:assert/strict";
import {
  mulhi32,
  philox4x32,
  seedKey,
  uniform24,
  type Words2,
  type Words4,
} from "../src/philox.ts";

/**
 * Known answers of Random123 (D. E. Shaw Research, github.com/DEShawResearch/random123, file
 * tests/kat_vectors, the "philox4x32 7" and "philox4x32 10" lines; columns: rounds, counter (4
 * words), key (2 words), expected output (4 words)).
 */
const KAT = `
philox4x32 7 00000000 00000000 00000000 00000000 00000000 00000000   5f6fb709 0d893f64 4f121f81 4f730a48
philox4x32 7 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   5207ddc2 45165e59 4d8ee751 8c52f662
philox4x32 7 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   4dfccaba 190a87f0 c47362ba b6b5242a
philox4x32 10 00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
philox4x32 10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
philox4x32 10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
`;

Deno.test("philox4x32() reproduces Random123's known-answer vectors (7 and 10 rounds)", () => {
  const lines = KAT.trim().split("\n");
  assert.equal(lines.length, 6);
  for (const line of lines) {
    const [, rounds, ...hex] = line.trim().split(/\s+/);
    const w = hex.map((h) => parseInt(h, 16));
    const ctr = w.slice(0, 4) as Words4, key = w.slice(4, 6) as Words2;
    assert.deepEqual(philox4x32(ctr, key, Number(rounds)), w.slice(6), line);
    if (rounds === "10") assert.deepEqual(philox4x32(ctr, key), w.slice(6), "10 is the default");
  }
});

Deno.test("mulhi32() is the exact high word of the 64-bit product", () => {
  const edges = [0, 1, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
  const pairs: [number, number][] = [];
  for (const a of edges) for (const b of edges) pairs.push([a, b]);
  let s = 12345;
  for (let i = 0; i < 10_000; i++) {
    s = philox4x32([i, 0, 0, 0], [s, 7])[0];
    pairs.push([s, philox4x32([i, 1, 0, 0], [s, 7])[1]]);
  }
  for (const [a, b] of pairs) {
    assert.equal(mulhi32(a, b), Number((BigInt(a) * BigInt(b)) >> 32n), `${a} * ${b}`);
  }
});

Deno.test("seedKey() splits a seed's 64-bit two's complement into low and high words", () => {
  assert.deepEqual(seedKey(0), [0, 0]);
  assert.deepEqual(seedKey(5), [5, 0]);
  assert.deepEqual(seedKey(2 ** 32), [0, 1]);
  assert.deepEqual(seedKey(2 ** 32 + 7), [7, 1]);
  assert.deepEqual(seedKey(Number.MAX_SAFE_INTEGER), [0xffffffff, 0x1fffff]);
  assert.deepEqual(seedKey(-1), [0xffffffff, 0xffffffff]);
  assert.deepEqual(seedKey(-5), [0xfffffffb, 0xffffffff]);
  assert.deepEqual(seedKey(-(2 ** 32)), [0, 0xffffffff]);
  assert.deepEqual(seedKey(-(2 ** 32) - 1), [0xffffffff, 0xfffffffe]);
  // -(2^53 - 1) = 2^64 - 2^53 + 1
  assert.deepEqual(seedKey(Number.MIN_SAFE_INTEGER), [1, 0xffe00000]);
  for (const bad of [1.5, NaN, Infinity, 2 ** 53]) {
    assert.throws(() => seedKey(bad), RangeError, String(bad));
  }
});

Deno.test("uniform24() is the top 24 bits of the first word, on a 2^-24 grid in [0, 1)", () => {
  const n = 100_000;
  let sum = 0;
  for (let counter = 0; counter < n; counter++) {
    const u = uniform24(-42, counter);
    const word = philox4x32([counter, 0, 0, 0], seedKey(-42))[0];
    assert.equal(u, (word >>> 8) / 2 ** 24);
    assert.ok(u >= 0 && u < 1 && Math.fround(u) === u);
    sum += u;
  }
  // The mean of n uniforms has standard deviation sqrt(1/12/n) = 9.1e-4: 5 of them is 4.6e-3.
  assert.ok(Math.abs(sum / n - 0.5) < 4.6e-3, `mean ${sum / n}`);
  assert.notEqual(uniform24(1, 0), uniform24(2, 0));
  assert.notEqual(uniform24(1, 0), uniform24(1, 1));
  assert.equal(uniform24(2 ** 32 + 3, 9), uniform24(2 ** 32 + 3, 9));
  assert.notEqual(uniform24(2 ** 32 + 3, 9), uniform24(3, 9), "the high word is part of the key");
});
