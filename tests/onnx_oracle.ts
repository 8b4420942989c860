/**
 * An independent oracle for the kernel tests: builds tiny ONNX graphs (npm onnx-proto) and runs
 * them in onnxruntime-web's wasm backend, single-threaded. Test files compare the WebGPU kernels
 * with both this and the float64 reference of src/reference/ops.ts.
 */
import * as ort from "onnxruntime-web";
import onnxProto from "onnx-proto";

// onnx-proto is a CommonJS protobufjs bundle: its namespace arrives as the default export.
const { onnx } = onnxProto as unknown as { onnx: typeof import("onnx-proto").onnx };

ort.env.wasm.numThreads = 1;

/** ONNX opset the graphs declare (23: RMSNormalization, RotaryEmbedding, Attention). */
export const OPSET = 23;
/** ONNX IR version matching opset 23. */
const IR_VERSION = 11;

/** TensorProto.DataType codes (int8 and uint4: quantized weights for DequantizeLinear). */
const ELEM = { float32: 1, int8: 3, int64: 7, uint4: 21 } as const;
export type ElemType = keyof typeof ELEM;

/** An input or initializer: values and dims. */
export interface OracleTensor {
  type: ElemType;
  /** uint4: two elements a byte, element 2i in the low nibble (ONNX's and ORT's packing). */
  data: Float32Array | BigInt64Array | Int8Array | Uint8Array;
  dims: number[];
}

/** An attribute value: number (int if integral and `ints`-free), float, ints or string. */
export type Attr = { i: number } | { f: number } | { ints: number[] } | { s: string };

/** One node of a graph. */
export interface OracleNode {
  op: string;
  inputs: string[];
  outputs: string[];
  attrs?: Record<string, Attr>;
  domain?: string;
}

/** f32 tensor helper. */
export function f32(data: ArrayLike<number>, dims: number[]): OracleTensor {
  return { type: "float32", data: Float32Array.from(data), dims };
}

/** int64 tensor helper. */
export function i64(data: ArrayLike<number>, dims: number[]): OracleTensor {
  return { type: "int64", data: BigInt64Array.from(Array.from(data, BigInt)), dims };
}

/** int8 tensor helper (values: integers in -128..127). */
export function i8(data: ArrayLike<number>, dims: number[]): OracleTensor {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isInteger(data[i]) || data[i] < -128 || data[i] > 127) {
      throw new RangeError(`int8 element ${i} is ${data[i]}`);
    }
  }
  return { type: "int8", data: Int8Array.from(data), dims };
}

/** uint4 tensor helper: values (integers in 0..15) packed two a byte, element 2i in the low nibble. */
export function u4(data: ArrayLike<number>, dims: number[]): OracleTensor {
  const packed = new Uint8Array(Math.ceil(data.length / 2));
  for (let i = 0; i < data.length; i++) {
    if (!Number.isInteger(data[i]) || data[i] < 0 || data[i] > 15) {
      throw new RangeError(`uint4 element ${i} is ${data[i]}`);
    }
    packed[i >> 1] |= data[i] << ((i & 1) * 4);
  }
  return { type: "uint4", data: packed, dims };
}

function attribute(name: string, a: Attr): InstanceType<typeof onnx.AttributeProto> {
  const T = onnx.AttributeProto.AttributeType;
  if ("i" in a) return onnx.AttributeProto.create({ name, type: T.INT, i: a.i });
  if ("f" in a) return onnx.AttributeProto.create({ name, type: T.FLOAT, f: a.f });
  if ("ints" in a) return onnx.AttributeProto.create({ name, type: T.INTS, ints: a.ints });
  return onnx.AttributeProto.create({ name, type: T.STRING, s: new TextEncoder().encode(a.s) });
}

function valueInfo(name: string, type: ElemType, dims?: number[]) {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType: ELEM[type],
        shape: dims ? { dim: dims.map((d) => ({ dimValue: d })) } : undefined,
      },
    },
  });
}

/** Runs `nodes` on `inputs` and returns the named outputs (types given, shapes inferred). */
export async function runGraph(
  nodes: OracleNode[],
  inputs: Record<string, OracleTensor>,
  outputs: Record<string, ElemType>,
): Promise<Record<string, Float32Array | BigInt64Array>> {
  const model = onnx.ModelProto.create({
    irVersion: IR_VERSION,
    opsetImport: [{ domain: "", version: OPSET }, { domain: "com.microsoft", version: 1 }],
    graph: {
      name: "oracle",
      node: nodes.map((n, i) =>
        onnx.NodeProto.create({
          name: `n${i}`,
          opType: n.op,
          domain: n.domain ?? "",
          input: n.inputs,
          output: n.outputs,
          attribute: Object.entries(n.attrs ?? {}).map(([k, v]) => attribute(k, v)),
        })
      ),
      input: Object.entries(inputs).map(([name, t]) => valueInfo(name, t.type, t.dims)),
      output: Object.entries(outputs).map(([name, type]) => valueInfo(name, type)),
    },
  });
  const bytes = onnx.ModelProto.encode(model).finish();
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  try {
    const feeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(inputs)) {
      feeds[name] = new ort.Tensor(t.type, t.data, t.dims);
    }
    const result = await session.run(feeds);
    const out: Record<string, Float32Array | BigInt64Array> = {};
    for (const name of Object.keys(outputs)) {
      out[name] = result[name].data as Float32Array | BigInt64Array;
    }
    return out;
  } finally {
    await session.release();
  }
}

/** Runs a single node whose inputs are named after `inputs` in order. */
export async function runNode(
  op: string,
  inputs: Record<string, OracleTensor>,
  outputs: Record<string, ElemType>,
  attrs?: Record<string, Attr>,
  domain?: string,
): Promise<Record<string, Float32Array | BigInt64Array>> {
  return await runGraph(
    [{ op, inputs: Object.keys(inputs), outputs: Object.keys(outputs), attrs, domain }],
    inputs,
    outputs,
  );
}
