// load_block8 for 16-bit float weights (bf16, f16) in rows8 (composed after weights_bf16.wgsl or
// weights_f16.wgsl by src/gpu/shader.ts when the kernel calls it, in place of the generic
// weights_block8.wgsl): the 8 rows of a rows8 chunk, row r's 8 elements at e + 8 r, one 16-byte
// word each, so the 8 words are consecutive. The word index is computed once for the chunk
// instead of once per row (llvmpipe: 1.13x on a decode matvec); word_w8 is the loader's own
// conversion, as in its load_w8, so the values are the same.

fn load_block8(e: u32) -> Block8 {
  let i = e >> 3u;
  return Block8(
    word_w8(weights[i]),
    word_w8(weights[i + 1u]),
    word_w8(weights[i + 2u]),
    word_w8(weights[i + 3u]),
    word_w8(weights[i + 4u]),
    word_w8(weights[i + 5u]),
    word_w8(weights[i + 6u]),
    word_w8(weights[i + 7u]),
  );
}
