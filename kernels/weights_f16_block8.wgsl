// load_block8 for f16 weights in rows8 (composed after weights_f16.wgsl by src/gpu/shader.ts when
// the kernel calls it, in place of the generic weights_block8.wgsl): the 8 rows of a rows8 chunk,
// row r's 8 elements at e + 8 r, one 16-byte word each, so the 8 words are consecutive. The word
// index is computed once for the chunk instead of once per row (llvmpipe: 1.14x on a decode
// matvec); the same words and conversions as load_w8, so the same values.

fn load_block8(e: u32) -> Block8 {
  let i = e >> 3u;
  return Block8(
    f16_w8(weights[i]),
    f16_w8(weights[i + 1u]),
    f16_w8(weights[i + 2u]),
    f16_w8(weights[i + 3u]),
    f16_w8(weights[i + 4u]),
    f16_w8(weights[i + 5u]),
    f16_w8(weights[i + 6u]),
    f16_w8(weights[i + 7u]),
  );
}
