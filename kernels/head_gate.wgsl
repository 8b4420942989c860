// Under an expert budget, before a decode step's lm_head: if the step's pass routed to an absent
// expert (a miss flag is set) or an earlier step of the same batch did (the sticky word), its
// logits will be thrown away (the step is redone after the experts are loaded), so the lm_head's
// indirect dispatch arguments are zeroed and the lm_head does no work. Otherwise they are left as
// the CPU wrote them. One invocation: the flags are few (layers x experts) and it runs once a step.

struct Params {
  n_flags: u32, // miss flags to scan: missed[0 .. n_flags)
  n_args: u32, // words of dispatch arguments, args[0 .. n_args); args[n_args]: the sticky word
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> missed: array<u32>; // [L*E]
@group(0) @binding(3) var<storage, read_write> args: array<u32>; // [n_args] + sticky

@compute @workgroup_size(1)
fn main() {
  var any = args[p.n_args];
  for (var i = 0u; i < p.n_flags; i++) {
    any |= missed[i];
  }
  if (any != 0u) {
    args[p.n_args] = 1u;
    for (var i = 0u; i < p.n_args; i++) {
      args[i] = 0u;
    }
  }
}
