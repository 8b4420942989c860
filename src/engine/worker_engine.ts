/**
 * WorkerEngine: the main thread's proxy of an engine that runs in a Deno Worker (worker.ts), so
 * the GPU's blocking readbacks never stall the thread that serves HTTP. Jobs, pieces, errors and
 * stats cross by message:
 *
 *   main -> worker: open {spec} | run {id, job} | abort {id} | close
 *   worker -> main: ready {info, stats} | failed {error} | piece {id, piece} | done {id, result}
 *                   | error {id, error} | stats {stats} | health {health, stats?} | closed
 *
 * Errors cross as name + message (+ the ApiError fields) and are rebuilt here as instances of the
 * same class, so the server answers them exactly as when the engine runs in-process.
 *
 * Health: after a GPU error or a lost device the worker reopens the model on a new device;
 * meanwhile health() is "unavailable" and run() fails at once with ModelUnavailableError (503),
 * then "ok" again, or "error" when every reopen failed.
 */
import type { LanguageModel } from "../types.ts";
import type { Tokenizer } from "../tokenizer.ts";
import type { Flags } from "../cli/args.ts";
import { UsageError } from "../cli/args.ts";
import { GenerationAbortedError, type GenerationResult, type Piece } from "../generate.ts";
import { QueueAbortedError, QueueFullError } from "../server/queue.ts";
import { ContextOverflowError } from "../gpu/session.ts";
import { DeviceLostError, type Gpu, GpuError } from "../gpu/device.ts";
import { ExpertChecksumError } from "../experts/store.ts";
import { ExpertBudgetError, ExpertUploadError } from "../gpu/expert_cache.ts";
import { ManifestError } from "../pack/manifest.ts";
import { FileChecksumError, PackedFileError, TensorChecksumError } from "../pack/integrity.ts";
import { ModelDirError } from "../model_dir.ts";
import * as apiErrors from "../server/errors.ts";
import { ApiError } from "../server/errors.ts";
import { type Engine, EngineClosedError, type EngineInfo, type EngineJob } from "./engine.ts";

/** What the worker opens. */
export type EngineSpec =
  & (
    /** The runtime the CLI flags name: openRuntime(flags, defaultContext) + its tokenizer. */
    | { kind: "runtime"; flags: Flags; defaultContext: number; maxQueue?: number }
    /** Tests: `(await import(url))[exportName](options)`, which returns an EngineModel. */
    | { kind: "module"; url: string; exportName: string; options?: unknown }
  )
  & {
    /** Waits (ms) before each attempt to reopen the model after a GPU failure; its length is
     * the number of attempts (default: worker.ts REOPEN_DELAYS_MS). */
    reopenDelaysMs?: number[];
  };

/** What a `{kind: "module"}` factory returns. */
export interface EngineModel {
  model: LanguageModel;
  tokenizer: Tokenizer;
  /** The model's own figures, merged into the engine's stats(). */
  stats?: () => Record<string, number>;
  /** Frees the model; runs when the engine closes. */
  close?: () => void;
  /** The model's GPU: checked before each piece leaves the worker; its loss reopens the model. */
  gpu?: Gpu;
}

/** Where an engine stands (WorkerEngine.health(); /health answers from it). */
export type EngineHealth =
  | { status: "ok" }
  /** Temporarily unusable (a GPU failure; the model is being reopened). */
  | { status: "unavailable"; message: string }
  /** No longer usable (every reopen failed). Messages carry no paths: clients see them. */
  | { status: "error"; message: string };

/** An error as it crosses the worker boundary. */
export interface WireError {
  name: string;
  message: string;
  stack?: string;
  /** ApiError fields (when the error is one). */
  api?: { status: number; type: string; param: string | null; code: string | null };
}

type Stats = Record<string, number>;

export type ToWorker =
  | { type: "open"; spec: EngineSpec }
  | { type: "run"; id: number; job: EngineJob }
  | { type: "abort"; id: number }
  | { type: "close" };

export type FromWorker =
  | { type: "ready"; info: EngineInfo; stats: Stats }
  | { type: "failed"; error: WireError }
  | { type: "piece"; id: number; piece: Piece }
  | { type: "done"; id: number; result: GenerationResult }
  | { type: "error"; id: number; error: WireError }
  | { type: "stats"; stats: Stats }
  | { type: "health"; health: EngineHealth; stats?: Stats }
  | { type: "closed" };

/** The worker died (an uncaught exception in it): its jobs end and the engine runs no more. */
export class EngineWorkerError extends Error {
  override name = "EngineWorkerError";
  constructor(detail: string) {
    super(`the engine worker crashed (${detail}); restart the server`);
  }
}

/** Error classes rebuilt by name, beside every ApiError subclass of server/errors.ts. */
const ERROR_CLASSES: (new (...args: never[]) => Error)[] = [
  GenerationAbortedError,
  QueueAbortedError,
  QueueFullError,
  EngineClosedError,
  EngineWorkerError,
  ContextOverflowError,
  DeviceLostError,
  GpuError,
  ExpertChecksumError,
  ExpertBudgetError,
  ExpertUploadError,
  ManifestError,
  TensorChecksumError,
  FileChecksumError,
  PackedFileError,
  ModelDirError,
  UsageError,
  TypeError,
  RangeError,
];
const API_ERROR_CLASSES = Object.values(apiErrors).filter((v): v is typeof ApiError =>
  typeof v === "function" && v.prototype instanceof ApiError
);
const BY_NAME = new Map<string, new (...args: never[]) => Error>(
  [...ERROR_CLASSES, ...API_ERROR_CLASSES].map((c) => [c.name, c]),
);

/** An exception as plain data for postMessage. */
export function toWire(e: unknown): WireError {
  if (!(e instanceof Error)) return { name: "Error", message: String(e) };
  const wire: WireError = { name: e.name, message: e.message, stack: e.stack };
  if (e instanceof ApiError) {
    wire.api = { status: e.status, type: e.type, param: e.param, code: e.code };
  }
  return wire;
}

/**
 * The exception `toWire` described, as an instance of the class of the same name (ApiError
 * subclasses with their status, type, param and code; unknown names as an Error of that name).
 * The fields are set through the base constructor, so no subclass constructor reruns.
 */
export function fromWire(w: WireError): Error {
  const cls = BY_NAME.get(w.name);
  const err: Error = w.api
    ? Reflect.construct(
      ApiError,
      [w.api.status, w.message, w.api.type, w.api.param, w.api.code],
      cls?.prototype instanceof ApiError ? cls : ApiError,
    )
    : Reflect.construct(Error, [w.message], cls ?? Error);
  Object.defineProperty(err, "name", { value: w.name, writable: true, configurable: true });
  if (w.stack !== undefined) err.stack = w.stack;
  return err;
}

type JobEvent =
  | { type: "piece"; piece: Piece }
  | { type: "done"; result: GenerationResult }
  | { type: "error"; error: Error };

/** A job's events in arrival order, awaited one at a time by its generator. */
class Inbox {
  readonly #events: JobEvent[] = [];
  #wake: (() => void) | null = null;

  push(event: JobEvent): void {
    this.#events.push(event);
    this.#wake?.();
    this.#wake = null;
  }

  async take(): Promise<JobEvent> {
    while (this.#events.length === 0) await new Promise<void>((r) => this.#wake = r);
    return this.#events.shift()!;
  }
}

export class WorkerEngine implements Engine {
  readonly info: EngineInfo;
  readonly #worker: Worker;
  readonly #jobs = new Map<number, Inbox>();
  #stats: Stats;
  #health: EngineHealth = { status: "ok" };
  #nextId = 1;
  #dead: Error | null = null;
  #closing: Promise<void> | null = null;
  #onClosed: (() => void) | null = null;

  /** Throws QueueFullError when the jobs this proxy has in the worker fill every place and the
   * line (the worker refuses the rest the same way; this keeps a streamed refusal a 503). */
  checkAdmission(): void {
    const waiting = this.#jobs.size - this.info.maxSequences;
    if (waiting >= this.info.maxQueue) throw new QueueFullError(waiting);
  }

  private constructor(worker: Worker, info: EngineInfo, stats: Stats) {
    this.#worker = worker;
    this.info = info;
    this.#stats = stats;
    worker.onmessage = (e: MessageEvent<FromWorker>) => this.#receive(e.data);
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault(); // the server lives on; its jobs fail with the worker's error
      this.#die(new EngineWorkerError(e.message));
    };
  }

  /**
   * Spawns the worker and opens `spec` in it; resolves once the model is ready, rejects with the
   * worker's load error (same class, same message) otherwise.
   */
  static start(spec: EngineSpec): Promise<WorkerEngine> {
    const worker = new Worker(new URL("./worker.ts", import.meta.url).href, { type: "module" });
    return new Promise((resolve, reject) => {
      worker.onmessage = (e: MessageEvent<FromWorker>) => {
        const m = e.data;
        if (m.type === "ready") resolve(new WorkerEngine(worker, m.info, m.stats));
        if (m.type === "failed") {
          worker.terminate();
          reject(fromWire(m.error));
        }
      };
      worker.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        worker.terminate();
        reject(new EngineWorkerError(e.message));
      };
      worker.postMessage({ type: "open", spec } satisfies ToWorker);
    });
  }

  async *run(job: EngineJob, signal: AbortSignal): AsyncGenerator<Piece, GenerationResult> {
    if (this.#dead) throw this.#dead;
    if (this.#closing) throw new EngineClosedError();
    if (this.#health.status !== "ok") throw new apiErrors.ModelUnavailableError();
    const id = this.#nextId++;
    const inbox = new Inbox();
    this.#jobs.set(id, inbox);
    const abort = () => this.#post({ type: "abort", id });
    let ended = false;
    try {
      this.#post({ type: "run", id, job });
      if (signal.aborted) abort();
      else signal.addEventListener("abort", abort, { once: true });
      while (true) {
        const event = await inbox.take();
        if (event.type === "piece") yield event.piece;
        else {
          ended = true;
          if (event.type === "done") return event.result;
          throw event.error;
        }
      }
    } finally {
      signal.removeEventListener("abort", abort);
      this.#jobs.delete(id);
      if (!ended) abort(); // returned early (client gone): the worker frees the session
    }
  }

  stats(): Record<string, number> {
    return this.#stats;
  }

  /** "ok", "unavailable" while the worker reopens the model after a GPU failure, or "error". */
  health(): EngineHealth {
    if (this.#dead === null) return this.#health;
    // the worker's own message may name files: it went to the log (#die)
    return { status: "error", message: "the engine worker crashed; restart the server" };
  }

  close(): Promise<void> {
    return this.#closing ??= (async () => {
      if (!this.#dead) {
        const closed = new Promise<void>((r) => this.#onClosed = r);
        this.#post({ type: "close" });
        await closed;
      }
      this.#worker.terminate();
      this.#failJobs(new EngineClosedError());
    })();
  }

  #post(message: ToWorker): void {
    if (this.#dead === null) this.#worker.postMessage(message);
  }

  #receive(m: FromWorker): void {
    switch (m.type) {
      case "piece":
        return this.#jobs.get(m.id)?.push({ type: "piece", piece: m.piece });
      case "done":
        return this.#jobs.get(m.id)?.push({ type: "done", result: m.result });
      case "error":
        return this.#jobs.get(m.id)?.push({ type: "error", error: fromWire(m.error) });
      case "stats":
        this.#stats = m.stats;
        return;
      case "health":
        this.#health = m.health;
        if (m.stats) this.#stats = m.stats;
        return;
      case "closed":
        return this.#onClosed?.();
    }
  }

  #die(e: Error): void {
    console.error(e.message);
    this.#dead = e;
    this.#worker.terminate();
    this.#failJobs(e);
    this.#onClosed?.();
  }

  #failJobs(e: Error): void {
    for (const inbox of this.#jobs.values()) inbox.push({ type: "error", error: e });
  }
}
