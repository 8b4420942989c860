// Weight loaders for f16 weights at any even offset: two elements per u32 word of `weights`
// (declared by the kernel as array<WeightWord>), element 2i in the low half, widened with
// unpack2x16float (core WGSL; shader-f16 is not needed). load_w4(e) returns elements e..e+3,
// load_w8(e) e..e+7 (e even).

alias WeightWord = u32;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

fn load_w4(e: u32) -> vec4<f32> {
  let i = e >> 1u;
  return vec4<f32>(unpack2x16float(weights[i]), unpack2x16float(weights[i + 1u]));
}

fn load_w8(e: u32) -> W8 {
  return W8(load_w4(e), load_w4(e + 4u));
}
