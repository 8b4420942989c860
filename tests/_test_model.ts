/**
 * A small real LanguageModel for server and generation tests: a bigram model whose logits for the
 * next token are row `previous id` of a fixed table (deterministic hash noise in [-1, 1) plus a
 * large boost on one successor), with a real per-session KV record (the ids it holds). Greedy
 * output is predictable: after a lowercase letter comes the next letter of "abc...z", after "z" a
 * space, after anything else "a"; the "eosAfter" byte, when set, is followed by <|im_end|>.
 * It counts live sessions so tests can check every session is freed.
 *
 * The server tests run it in the engine worker: the factories below (openBigramEngineModel and
 * the others) are what a `{kind: "module"}` EngineSpec names, and startTestServer() serves
 * through a WorkerEngine over one of them by default.
 */
import type { LanguageModel, ModelConfig, Session, SessionOptions } from "../src/types.ts";
import {
  loadTokenizer,
  QWEN_SPECIAL_TOKENS,
  type Tokenizer,
  writeByteTokenizer,
} from "../src/tokenizer.ts";
import { type AppOptions, serve } from "../src/server/app.ts";
import type { Engine } from "../src/engine/engine.ts";
import { runtimeStats } from "../src/engine/local.ts";
import { type EngineModel, type EngineSpec, WorkerEngine } from "../src/engine/worker_engine.ts";
import { openRuntime } from "../src/cli/runtime.ts";
import { openReferenceModel } from "../src/reference/model.ts";
import { openModelDir } from "../src/model_dir.ts";
import { GpuModel } from "../src/gpu/model.ts";
import type { Gpu } from "../src/gpu/device.ts";

/** 256 bytes + 3 specials (ids 256..258) + a few unused ids, as a fixture vocab would have. */
export const TEST_VOCAB = 272;
/** <|im_end|>: writeByteTokenizer() puts the specials right after the 256 bytes. */
export const IM_END = 256 + QWEN_SPECIAL_TOKENS.indexOf("<|im_end|>");
/** Margin of the greedy successor over the noise: e^8 / (V e^1) ~ 4 to 1 at temperature 1. */
const BOOST = 8;
const CODE_A = "a".charCodeAt(0);
const CODE_Z = "z".charCodeAt(0);
const CODE_SPACE = " ".charCodeAt(0);

export interface TestModelOptions {
  maxContext?: number;
  /** The byte after which the greedy successor is <|im_end|> (default: none). */
  eosAfter?: string;
  /** Each forward() waits this long first, as a real model's step takes time (default 0). */
  stepDelayMs?: number;
}

/** The greedy successor of `prev` in the test model. */
export function greedySuccessor(prev: number, eosAfter?: string): number {
  if (eosAfter !== undefined && prev === eosAfter.charCodeAt(0)) return IM_END;
  if (prev >= CODE_A && prev < CODE_Z) return prev + 1;
  if (prev === CODE_Z) return CODE_SPACE;
  return CODE_A;
}

/** Deterministic noise in [-1, 1) for table cell (prev, next). */
function noise(prev: number, next: number): number {
  let h = Math.imul(prev + 1, 0x9e3779b1) ^ Math.imul(next + 7, 0x85ebca77);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return ((h ^ (h >>> 16)) >>> 0) / 2 ** 31 - 1;
}

export class BigramTestModel implements LanguageModel {
  readonly config: ModelConfig;
  readonly maxContext: number;
  readonly stepDelayMs: number;
  readonly #table: Float32Array[] = [];
  /** Sessions created and not yet freed. */
  liveSessions = 0;
  /** Sessions ever created. */
  sessionsCreated = 0;
  /** The most sessions alive at once (1 when generations never overlap). */
  maxLiveSessions = 0;

  constructor(opts: TestModelOptions = {}) {
    this.maxContext = opts.maxContext ?? 256;
    this.stepDelayMs = opts.stepDelayMs ?? 0;
    this.config = {
      modelType: "qwen3_moe",
      tensorPrefix: "",
      vocabSize: TEST_VOCAB,
      hiddenSize: 8,
      numLayers: 1,
      numHeads: 1,
      numKvHeads: 1,
      headDim: 8,
      numExperts: 2,
      topK: 1,
      moeIntermediateSize: 8,
      normTopkProb: true,
      rmsNormEps: 1e-6,
      ropeTheta: 10000,
      maxPositionEmbeddings: this.maxContext,
      tieWordEmbeddings: false,
      bosTokenId: null,
      eosTokenIds: [IM_END],
    };
    for (let prev = 0; prev < TEST_VOCAB; prev++) {
      const row = new Float32Array(TEST_VOCAB);
      for (let next = 0; next < TEST_VOCAB; next++) row[next] = noise(prev, next);
      row[greedySuccessor(prev, opts.eosAfter)] += BOOST;
      this.#table.push(row);
    }
  }

  newSession(): Session {
    this.liveSessions++;
    this.sessionsCreated++;
    this.maxLiveSessions = Math.max(this.maxLiveSessions, this.liveSessions);
    return new BigramSession(this);
  }

  /** Row `prev` of the table (the next-token logits after `prev`). */
  row(prev: number): Float32Array {
    return this.#table[prev];
  }
}

class BigramSession implements Session {
  #ids: number[] = [];
  #freed = false;
  readonly #model: BigramTestModel;

  constructor(model: BigramTestModel) {
    this.#model = model;
  }

  get length(): number {
    return this.#ids.length;
  }

  async forward(ids: number[], opts: { lastOnly?: boolean } = {}): Promise<Float32Array[]> {
    if (this.#model.stepDelayMs > 0) {
      await new Promise((r) => setTimeout(r, this.#model.stepDelayMs));
    }
    if (this.#freed) throw new Error("BigramSession.forward after free()");
    if (this.#ids.length + ids.length > this.#model.maxContext) {
      throw new Error(`BigramSession: ${this.#ids.length + ids.length} tokens exceed the context`);
    }
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= TEST_VOCAB) {
        throw new Error(`BigramSession: token id ${id} outside the vocab`);
      }
    }
    this.#ids.push(...ids);
    const rows = ids.map((id) => this.#model.row(id).slice());
    return opts.lastOnly ? rows.slice(-1) : rows;
  }

  truncate(length: number): void {
    this.#ids.length = Math.min(length, this.#ids.length);
  }

  free(): void {
    if (this.#freed) return;
    this.#freed = true;
    this.#model.liveSessions--;
  }
}

/** A temporary model directory with the byte tokenizer for TEST_VOCAB. */
export async function testModelDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "server_test_" });
  await writeByteTokenizer(dir, TEST_VOCAB);
  return dir;
}

/** Options of openBigramEngineModel(): the model's, and failures on demand. */
export interface BigramEngineOptions extends TestModelOptions {
  /** The first `failSessions` newSession() calls throw Error(failMessage) (default 0). */
  failSessions?: number;
  failMessage?: string;
  /** When set, opening fails with Error(loadError): a model that does not load. */
  loadError?: string;
  /** Fixed figures reported as the model's own (expert cache hits, misses, ...). */
  cacheFigures?: Record<string, number>;
}

/**
 * The engine worker's factory of a BigramTestModel and the byte tokenizer. Its stats() are the
 * model's own session counters (bigramLiveSessions, bigramSessionsCreated,
 * bigramMaxLiveSessions) plus `cacheFigures`.
 */
export async function openBigramEngineModel(
  opts: BigramEngineOptions = {},
): Promise<EngineModel> {
  if (opts.loadError !== undefined) throw new Error(opts.loadError);
  const dir = await testModelDir();
  const tokenizer = await loadTokenizer(dir);
  await Deno.remove(dir, { recursive: true });
  const bigram = new BigramTestModel(opts);
  let failures = opts.failSessions ?? 0;
  const model: LanguageModel = {
    config: bigram.config,
    maxContext: bigram.maxContext,
    newSession() {
      if (failures > 0) {
        failures--;
        throw new Error(opts.failMessage ?? "newSession failed on purpose");
      }
      return bigram.newSession();
    },
  };
  return {
    model,
    tokenizer,
    stats: () => ({
      ...opts.cacheFigures,
      bigramLiveSessions: bigram.liveSessions,
      bigramSessionsCreated: bigram.sessionsCreated,
      bigramMaxLiveSessions: bigram.maxLiveSessions,
    }),
  };
}

/**
 * The engine worker's factory of the GPU runtime over the embedded default model (flags as
 * `main.ts serve` takes them), counting the sessions opened masked and exact (maskedSessions,
 * exactSessions in stats()).
 */
export async function openCountingRuntime(
  opts: { flags: Record<string, string | boolean>; defaultContext: number },
): Promise<EngineModel> {
  const rt = await openRuntime(opts.flags, opts.defaultContext);
  const counts = { maskedSessions: 0, exactSessions: 0 };
  const gpu = rt.model;
  const model: LanguageModel = {
    config: gpu.config,
    maxContext: gpu.maxContext,
    newSession(o?: SessionOptions) {
      const s = gpu.newSession(o);
      counts[s.routerMasking ? "maskedSessions" : "exactSessions"]++;
      return s;
    },
  };
  return {
    model,
    tokenizer: await loadTokenizer(rt.opened.dir),
    stats: () => ({ ...runtimeStats(rt), ...counts }),
    close: () => rt.close(),
    gpu: rt.model.gpu,
  };
}

/** GPU faults a test injects into openFixtureGpuModel()'s model, each once per worker. */
export interface GpuFaults {
  /** The n-th session opened (counted over every model this worker opens) first destroys the
   * device, as a driver reset would: the engine must answer 503 and reopen the model. */
  loseDeviceOnSession?: number;
  /** The n-th session opened first makes an invalid buffer (an uncaptured validation error). */
  validationErrorOnSession?: number;
  /** Opening fails once this many models were opened in this worker (a reopen that fails). */
  failOpenAfter?: number;
}

/** Sessions opened by every openFixtureGpuModel() model of this worker (faults count on it). */
let fixtureSessions = 0;
/** Models openFixtureGpuModel() opened in this worker (1 + the reopens after GPU failures). */
let fixtureModelsOpened = 0;

/**
 * The engine worker's factory of the real GpuModel over a fixture checkpoint directory (with the
 * tokenizer writeByteTokenizer() put there), with `faults` injected. Its stats() count the models
 * opened (fixtureModelsOpened) and sessions (fixtureSessions) in this worker.
 */
export async function openFixtureGpuModel(
  opts: { dir: string; maxContext: number; faults?: GpuFaults },
): Promise<EngineModel> {
  if (fixtureModelsOpened === opts.faults?.failOpenAfter) {
    throw new Error("the fixture model does not open again (failOpenAfter)");
  }
  const opened = openModelDir(opts.dir);
  const gpuModel = await GpuModel.open(opened.weights, { maxContext: opts.maxContext });
  fixtureModelsOpened++;
  const gpu: Gpu = gpuModel.gpu;
  const faults = opts.faults ?? {};
  const model: LanguageModel = {
    config: gpuModel.config,
    maxContext: gpuModel.maxContext,
    newSession(o?: SessionOptions) {
      fixtureSessions++;
      if (fixtureSessions === faults.loseDeviceOnSession) gpu.device.destroy();
      if (fixtureSessions === faults.validationErrorOnSession) {
        gpu.device.createBuffer({
          label: "test.invalid",
          size: 16,
          usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE, // MAP_READ allows COPY_DST only
        });
      }
      return gpuModel.newSession(o);
    },
  };
  return {
    model,
    tokenizer: await loadTokenizer(opts.dir),
    stats: () => ({ fixtureModelsOpened, fixtureSessions }),
    close: () => {
      gpuModel.destroy();
      opened.close();
    },
    gpu,
  };
}

/** The engine worker's factory of the CPU reference model over a checkpoint directory. */
export async function openReferenceEngineModel(
  opts: { dir: string; maxContext: number },
): Promise<EngineModel> {
  const model = await openReferenceModel(opts.dir, { maxContext: opts.maxContext });
  return { model, tokenizer: await loadTokenizer(opts.dir), close: () => model.close() };
}

/** A spec for the engine worker: `exportName` of this module called with `options`. */
export function testModelSpec(exportName: string, options: unknown): EngineSpec {
  return { kind: "module", url: import.meta.url, exportName, options };
}

/** A running server on a free loopback port. */
export interface TestServer {
  url: string;
  tokenizer: Tokenizer;
  /** The engine it serves (a WorkerEngine unless the test gave its own engine, or a model). */
  engine: Engine | Promise<Engine> | null;
  /** The engine's latest figures (a WorkerEngine's: the last snapshot its worker pushed). */
  stats(): Record<string, number>;
  /** The bigram model's session counters as stats() reports them. */
  model: { liveSessions: number; sessionsCreated: number; maxLiveSessions: number };
  close(): Promise<void>;
}

export interface TestServerOptions extends Partial<AppOptions>, BigramEngineOptions {
  /** What the engine worker opens (default: openBigramEngineModel with these options). */
  spec?: EngineSpec;
}

/**
 * Starts serve() on 127.0.0.1:0 with the byte tokenizer (or `opts.tokenizer`) over a
 * WorkerEngine that opens `opts.spec`, by default the bigram model with `opts`'s options; an
 * `engine` or `model` given in `opts` is served as it is instead (and not closed).
 */
export async function startTestServer(opts: TestServerOptions = {}): Promise<TestServer> {
  const dir = await testModelDir();
  const tokenizer = opts.tokenizer ?? await loadTokenizer(dir);
  const { maxContext, eosAfter, stepDelayMs, failSessions, failMessage, loadError, cacheFigures } =
    opts;
  const owned = opts.engine === undefined && opts.model === undefined
    ? await WorkerEngine.start(
      opts.spec ?? testModelSpec("openBigramEngineModel", {
        maxContext,
        eosAfter,
        stepDelayMs,
        failSessions,
        failMessage,
        loadError,
        cacheFigures,
      }),
    )
    : null;
  const engine = owned ?? opts.engine;
  const abort = new AbortController();
  const { server, url } = serve({
    modelId: TEST_MODEL_ID,
    maxBodyBytes: 64 * 1024,
    ...opts,
    engine,
    tokenizer,
    host: "127.0.0.1",
    port: 0,
    signal: abort.signal,
  });
  let ready: Engine | null = owned;
  Promise.resolve(engine).then((e) => ready = e ?? null, () => {});
  const stats = () => ready?.stats() ?? {};
  return {
    url,
    tokenizer,
    engine: engine ?? null,
    stats,
    model: {
      get liveSessions() {
        return stats().bigramLiveSessions;
      },
      get sessionsCreated() {
        return stats().bigramSessionsCreated;
      },
      get maxLiveSessions() {
        return stats().bigramMaxLiveSessions;
      },
    },
    close: async () => {
      abort.abort();
      await server.finished;
      await owned?.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** The id the test servers serve. */
export const TEST_MODEL_ID = "bigram-test";
