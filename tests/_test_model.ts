/**
 * A small real LanguageModel for server and generation tests: a bigram model whose logits for the
 * next token are row `previous id` of a fixed table (deterministic hash noise in [-1, 1) plus a
 * large boost on one successor), with a real per-session KV record (the ids it holds). Greedy
 * output is predictable: after a lowercase letter comes the next letter of "abc...z", after "z" a
 * space, after anything else "a"; the "eosAfter" byte, when set, is followed by <|im_end|>.
 * It counts live sessions so tests can check every session is freed.
 */
import type { LanguageModel, ModelConfig, Session } from "../src/types.ts";
import {
  loadTokenizer,
  QWEN_SPECIAL_TOKENS,
  type Tokenizer,
  writeByteTokenizer,
} from "../src/tokenizer.ts";
import { type AppOptions, serve } from "../src/server/app.ts";

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
  readonly #table: Float32Array[] = [];
  /** Sessions created and not yet freed. */
  liveSessions = 0;
  /** Sessions ever created. */
  sessionsCreated = 0;
  /** The most sessions alive at once (1 when generations never overlap). */
  maxLiveSessions = 0;

  constructor(opts: TestModelOptions = {}) {
    this.maxContext = opts.maxContext ?? 256;
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

  forward(ids: number[], opts: { lastOnly?: boolean } = {}): Promise<Float32Array[]> {
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
    return Promise.resolve(opts.lastOnly ? rows.slice(-1) : rows);
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

/** A running server over a BigramTestModel on a free loopback port. */
export interface TestServer {
  url: string;
  model: BigramTestModel;
  tokenizer: Tokenizer;
  close(): Promise<void>;
}

/** Starts serve() on 127.0.0.1:0 with a BigramTestModel and the byte tokenizer. */
export async function startTestServer(
  opts: Partial<AppOptions> & TestModelOptions = {},
): Promise<TestServer> {
  const dir = await testModelDir();
  const tokenizer = await loadTokenizer(dir);
  const model = new BigramTestModel(opts);
  const abort = new AbortController();
  const { server, url } = serve({
    modelId: TEST_MODEL_ID,
    maxBodyBytes: 64 * 1024,
    ...opts,
    model: opts.model ?? model,
    tokenizer,
    host: "127.0.0.1",
    port: 0,
    signal: abort.signal,
  });
  return {
    url,
    model,
    tokenizer,
    close: async () => {
      abort.abort();
      await server.finished;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** The id the test servers serve. */
export const TEST_MODEL_ID = "bigram-test";
