// Weight loader for f16 weights: two elements per u32 of `weights`, element 2i in the low half,
// widened with unpack2x16float (core WGSL; shader-f16 is not needed).
// load_w4(e) returns elements e..e+3 (e even).
fn load_w4(e: u32) -> vec4<f32> {
  let i = e >> 1u;
  return vec4<f32>(unpack2x16float(weights[i]), unpack2x16float(weights[i + 1u]));
}
