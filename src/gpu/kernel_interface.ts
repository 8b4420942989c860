/**
 * The contract between the WGSL kernels and the TypeScript that dispatches them, declared once and
 * checked when a pipeline is made, so that a mismatch is a start-up error naming the kernel, never
 * wrong numbers:
 *
 * - Shared constants (SHARED_CONSTANTS) are defined here only: composeSource emits them as WGSL
 *   `const`s ahead of every kernel, and the TypeScript side imports the same values.
 * - Bindings: the kinds a spec binds (uniform / read / rw / texture, by binding number) must be
 *   exactly the `var` declarations of the composed source (checkBindings).
 * - Params: a kernel whose binding 1 is `var<uniform> p: Params` reads `struct Params` of 4-byte
 *   scalars; the values an op writes must fill it exactly, up to its 16-byte padding
 *   (checkParams).
 * - Sizes the TypeScript computes dispatches from (workgroup sizes, rows per invocation, tile
 *   limits) are stated per spec (`expect`) and compared with the kernel's `const`/`override`
 *   declarations (checkConstants).
 */
import { MAX_STEP_TOKENS, WEIGHT_TEXTURE_WIDTH } from "./ops_api.ts";
import { ABSENT } from "./expert_pool.ts";

/** Expert count topk.wgsl keeps probabilities for (and moe_tiles counts pairs for). */
export const MAX_EXPERTS = 256;
/** Largest head_dim: attention.wgsl gives each of its 64 lanes 4 values; head_norm_rope.wgsl keeps
 * one head in workgroup memory. */
export const MAX_HEAD_DIM = 256;

/** u32 constants every kernel sees, emitted by composeSource ahead of kernels/common.wgsl. */
export const SHARED_CONSTANTS: Record<string, number> = {
  MAX_STEP_TOKENS,
  ABSENT_SLOT: ABSENT,
  MAX_EXPERTS,
  MAX_HEAD_DIM,
  WEIGHT_TEXTURE_WIDTH,
};

/** The WGSL of SHARED_CONSTANTS. */
export function sharedConstantsSource(): string {
  return Object.entries(SHARED_CONSTANTS)
    .map(([name, v]) => `const ${name}: u32 = ${v >>> 0}u;`)
    .join("\n");
}

/** A kernel's source and the TypeScript that dispatches it disagree. */
export class KernelInterfaceError extends Error {
  override name = "KernelInterfaceError";
  constructor(kernel: string, detail: string) {
    super(`kernels/${kernel}.wgsl and its op disagree: ${detail}`);
  }
}

export type DeclaredKind = "uniform" | "read" | "rw" | "texture";

/** The one texture a kernel may bind: weights in a read-only storage texture (TextureWeight). */
export const WEIGHT_TEXTURE_TYPE = "texture_storage_2d<rgba32uint, read>";

/** WGSL without comments. */
function code(src: string): string {
  return src.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/[^\n]*/g, "");
}

/** The group-0 declarations of a WGSL source (buffers, and weight textures as "texture"):
 * binding number -> kind and name. Any other texture type is an error. */
export function declaredBindings(
  src: string,
  kernel = "(source)",
): Map<number, { kind: DeclaredKind; name: string }> {
  const out = new Map<number, { kind: DeclaredKind; name: string }>();
  const re = /@group\(0\)\s*@binding\((\d+)\)\s*var(?:<([^>]*)>)?\s*(\w+)\s*:\s*([^;]*);/g;
  for (const m of code(src).matchAll(re)) {
    let kind: DeclaredKind;
    if (m[2] === undefined) {
      const type = m[4].replace(/\s+/g, " ").trim();
      if (type !== WEIGHT_TEXTURE_TYPE) {
        throw new KernelInterfaceError(kernel, `binding ${m[1]} (${m[3]}) has type ${type}`);
      }
      kind = "texture";
    } else {
      const space = m[2].split(",").map((x) => x.trim());
      kind = space[0] === "uniform" ? "uniform" : space[1] === "read_write" ? "rw" : "read";
    }
    out.set(Number(m[1]), { kind, name: m[3] });
  }
  return out;
}

/** Throws unless the source declares exactly `bindings` (kinds by binding number). */
export function checkBindings(
  kernel: string,
  src: string,
  bindings: readonly DeclaredKind[],
): void {
  const declared = declaredBindings(src, kernel);
  const problems: string[] = [];
  bindings.forEach((kind, i) => {
    const d = declared.get(i);
    if (!d) problems.push(`binding ${i} (${kind}) is not declared`);
    else if (d.kind !== kind) {
      problems.push(`binding ${i} (${d.name}) is ${d.kind}, the op binds ${kind}`);
    }
  });
  for (const [i, d] of declared) {
    if (i >= bindings.length) problems.push(`binding ${i} (${d.name}) is declared but not bound`);
  }
  if (problems.length > 0) throw new KernelInterfaceError(kernel, problems.join("; "));
}

/** Names of the fields of `struct Params` (4-byte scalars), or null when the kernel declares
 * none. */
export function paramsFields(kernel: string, src: string): string[] | null {
  const m = code(src).match(/struct\s+Params\s*\{([^}]*)\}/);
  if (!m) return null;
  const fields = m[1].split(",").map((f) => f.trim()).filter((f) => f !== "");
  return fields.map((f) => {
    const field = f.match(/^(\w+)\s*:\s*(u32|i32|f32)$/);
    if (!field) {
      throw new KernelInterfaceError(kernel, `Params field "${f}" is not a 4-byte scalar`);
    }
    return field[1];
  });
}

/** Throws unless an op's `values` 4-byte values fill the kernel's Params: every field but trailing
 * padding (`_`-named) is written, nothing past the struct. */
export function checkParams(kernel: string, src: string, values: number): void {
  const fields = paramsFields(kernel, src);
  if (fields === null) {
    throw new KernelInterfaceError(kernel, `the op writes ${values} params, no struct Params`);
  }
  const unwritten = fields.slice(values).filter((f) => !f.startsWith("_"));
  if (values > fields.length || unwritten.length > 0) {
    throw new KernelInterfaceError(
      kernel,
      `the op writes ${values} params for Params { ${fields.join(", ")} }` +
        (unwritten.length > 0 ? `: ${unwritten.join(", ")} never written` : ""),
    );
  }
  const decl = declaredBindings(src, kernel).get(1);
  if (!decl || decl.kind !== "uniform" || !/var<uniform>\s*p\s*:\s*Params/.test(code(src))) {
    throw new KernelInterfaceError(kernel, "Params must be bound as `var<uniform> p: Params` at 1");
  }
}

/** The u32 `const` and `override` (default value) declarations of a source. */
export function declaredConstants(src: string): Map<string, number> {
  const out = new Map<string, number>();
  const re = /^\s*(?:const|override)\s+(\w+)\s*:\s*u32\s*=\s*(0x[0-9a-fA-F]+|\d+)u?\s*;/gm;
  for (const m of code(src).matchAll(re)) out.set(m[1], Number(m[2]));
  return out;
}

/** Throws unless every expected constant is declared with that value. */
export function checkConstants(
  kernel: string,
  src: string,
  expect: Readonly<Record<string, number>>,
): void {
  const declared = declaredConstants(src);
  const problems = Object.entries(expect).flatMap(([name, want]) => {
    const got = declared.get(name);
    if (got === undefined) return [`${name} is not declared (the op assumes ${want})`];
    return got === want ? [] : [`${name} = ${got} in the kernel, the op assumes ${want}`];
  });
  if (problems.length > 0) throw new KernelInterfaceError(kernel, problems.join("; "));
}
