/**
 * Which tensors `main.ts pack --quant TYPE [--quant-base TYPE]` stores quantized, in which GGML
 * type, and their bytes. Experts take --quant; with --quant-base the attention projections and
 * lm_head (the embedding table too when they are tied: it is lm_head) take --quant-base; norms and
 * routers always stay in floating point. Quantization is GGML's reference round-to-nearest
 * (src/quant/quantize.ts), so the bytes are what llama-quantize writes without an imatrix.
 *
 * A row whose length is not a whole number of the type's blocks falls back as llama-quantize's
 * llama_tensor_get_type does (Q4_K -> Q5_0, Q6_K -> Q8_0, then F16 when that does not fit
 * either); Q8_0, Q4_0 and Q5_0 have no fallback there ("Unsupported tensor size"), so such a
 * tensor is refused by name. Every fallback is recorded in the manifest. A tensor that is already
 * quantized (read from a GGUF file) is kept as it is: it is never quantized twice.
 */
import { encodeFloats, isFloatDType, tensorBytes, toFloat32 } from "../dtype.ts";
import { QUANT_FORMATS, type QuantType } from "../quant/formats.ts";
import { quantizeRows } from "../quant/quantize.ts";
import type { DType, TensorView } from "../types.ts";

export interface QuantOptions {
  /** Type of the experts' gate, up and down projections. */
  experts?: QuantType;
  /** Type of q/k/v/o and lm_head. */
  base?: QuantType;
}

/** A tensor stored in another type than asked, and why (recorded in the manifest). */
export interface QuantFallback {
  tensor: string;
  wanted: QuantType;
  used: DType;
  reason: string;
}

/** The manifest's record of a quantized pack. */
export interface QuantizationRecord {
  experts: QuantType | null;
  base: QuantType | null;
  fallbacks: QuantFallback[];
}

/** A tensor that cannot be stored in the asked type. */
export class QuantizeError extends Error {
  override name = "QuantizeError";
}

/** llama-quantize's fallback when a row is not whole blocks (llama-quant.cpp). */
const FALLBACK: Partial<Record<QuantType, QuantType>> = { Q4_K: "Q5_0", Q6_K: "Q8_0" };

/** Base roles (src/weights.ts) that --quant-base quantizes. */
const BASE_ROLES = new Set(["layer.q", "layer.k", "layer.v", "layer.o", "lm_head"]);

/** The type asked for a tensor of this role, or null to keep it as it is. */
function askedType(
  role: string,
  opts: QuantOptions,
  tiedEmbeddings: boolean,
): QuantType | null {
  if (role.startsWith("expert.")) return opts.experts ?? null;
  if (BASE_ROLES.has(role) || (role === "embed" && tiedEmbeddings)) return opts.base ?? null;
  return null;
}

/** The type a [.., cols] tensor is stored in when `wanted` is asked (with the fallback rule). */
function storedType(
  name: string,
  dtype: DType,
  cols: number,
  wanted: QuantType,
): { dtype: DType; fallback?: QuantFallback } {
  if (!isFloatDType(dtype)) return { dtype }; // already quantized: kept
  const fits = (t: QuantType) => cols % QUANT_FORMATS[t].elems === 0;
  if (fits(wanted)) return { dtype: wanted };
  const next = FALLBACK[wanted];
  if (next === undefined) {
    throw new QuantizeError(
      `tensor ${name} has rows of ${cols} values, not whole ${wanted} blocks of ` +
        `${QUANT_FORMATS[wanted].elems} (llama-quantize refuses it too); pick another --quant type`,
    );
  }
  const used: DType = fits(next) ? next : "F16";
  return {
    dtype: used,
    fallback: {
      tensor: name,
      wanted,
      used,
      reason: `rows of ${cols} values are not whole blocks of ${QUANT_FORMATS[wanted].elems}`,
    },
  };
}

/** The view converted to dtype (a heap copy), or the view itself when it already is. */
export function convertView(view: TensorView, dtype: DType): TensorView {
  if (view.dtype === dtype) return view;
  const cols = view.shape[view.shape.length - 1];
  const values = toFloat32(view);
  const bytes = isFloatDType(dtype)
    ? encodeFloats(values, dtype)
    : quantizeRows(dtype, values, values.length / cols, cols);
  if (bytes.length !== tensorBytes(dtype, view.shape)) {
    throw new QuantizeError(`tensor ${view.name}: ${dtype} gave ${bytes.length} bytes`);
  }
  return { ...view, dtype, bytes };
}

/** Decides and converts tensors for one pack; collects the fallbacks. */
export class Quantizer {
  readonly fallbacks: QuantFallback[] = [];
  private decided = new Map<string, DType>();

  constructor(readonly opts: QuantOptions, private tiedEmbeddings: boolean) {}

  get active(): boolean {
    return this.opts.experts !== undefined || this.opts.base !== undefined;
  }

  /** The dtype a tensor is stored in. For expert parts, `kind` ("gate", "up", "down") makes
   * one decision per kind, recorded once. Already quantized tensors keep their type. */
  decide(view: TensorView, role: string, kind?: string): DType {
    const wanted = askedType(role, this.opts, this.tiedEmbeddings);
    if (wanted === null || !isFloatDType(view.dtype)) return view.dtype;
    const key = kind ?? view.name;
    let dtype = this.decided.get(key);
    if (dtype === undefined) {
      const cols = view.shape[view.shape.length - 1];
      const name = kind ? `${view.name} (every expert's ${kind})` : view.name;
      const s = storedType(name, view.dtype, cols, wanted);
      dtype = s.dtype;
      if (s.fallback) this.fallbacks.push(s.fallback);
      this.decided.set(key, dtype);
    }
    return dtype;
  }

  /** Bytes of the tensor as stored. */
  storedBytes(view: TensorView, role: string, kind?: string): number {
    return tensorBytes(this.decide(view, role, kind), view.shape);
  }

  /** The tensor as it is stored: converted when its role asks for another type. */
  apply(view: TensorView, role: string, kind?: string): TensorView {
    return convertView(view, this.decide(view, role, kind));
  }

  record(): QuantizationRecord {
    return {
      experts: this.opts.experts ?? null,
      base: this.opts.base ?? null,
      fallbacks: this.fallbacks,
    };
  }
}
