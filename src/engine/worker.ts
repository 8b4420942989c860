/**
 * The engine worker's module (spawned by WorkerEngine.start): opens the model its spec names, runs
 * a LocalEngine over it, and streams each job's pieces, result or error back by message. It pushes
 * a stats snapshot whenever the engine's own figures change (a job queued, started, ended) and at
 * least every STATS_INTERVAL_MS while busy, so the main thread never asks for one.
 *
 * GPU failures: before each job and before each piece is posted the device is checked
 * (gpu.check()), so a piece computed by invalid GPU work is never sent; its job fails with the
 * GpuError. A GPU error or a lost device makes the model unhealthy: the worker says so (health
 * "unavailable"), fails every job with the cause, frees the model and reopens the spec on a new
 * device, a bounded number of attempts (REOPEN_DELAYS_MS); then health is "ok" again, or "error".
 */
import { openRuntime } from "../cli/runtime.ts";
import { loadTokenizer } from "../tokenizer.ts";
import { LocalEngine, runtimeStats } from "./local.ts";
import { loadFigures } from "../experts/metrics.ts";
import { ModelUnavailableError } from "../server/errors.ts";
import {
  type EngineModel,
  type EngineSpec,
  type FromWorker,
  toWire,
  type ToWorker,
} from "./worker_engine.ts";
import type { EngineJob } from "./engine.ts";

/** Longest a busy engine's figures (expert cache, GPU counters) go without a push. */
const STATS_INTERVAL_MS = 250;
/** Waits before each attempt to reopen the model after a GPU failure (bounded retries): at
 * once (a reset driver is usually back), then after 1 s and 5 s. */
const REOPEN_DELAYS_MS = [0, 1000, 5000];
/** A lost device fails the work in flight before its `lost` promise resolves: how long a job's
 * error waits for the loss to be known, so the job reports the loss rather than its symptom. */
const LOSS_GRACE_MS = 100;

/** The worker's global scope, as far as this module uses it. */
interface WorkerScope {
  postMessage(message: FromWorker): void;
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
}
const scope = globalThis as unknown as WorkerScope;
const post = (m: FromWorker) => scope.postMessage(m);

/** The open model and the engine over it (null while opening or reopening). */
let current: { engine: LocalEngine; model: EngineModel } | null = null;
/** The spec opened (reopened after a GPU failure). */
let opened: EngineSpec | null = null;
/** Why the model is being reopened, while it is (jobs fail with it). */
let failure: Error | null = null;
let reopening: Promise<void> | null = null;
let closing = false;
/** Running jobs by id: their abort and the promise that settles once the job has ended. */
const jobs = new Map<number, { abort: AbortController; ended: Promise<void> }>();

/** Pushes engine.stats() when it differs from the last push; a timer repeats it while busy. */
class StatsPusher {
  #last: Record<string, number> = {};
  #at = 0;
  #timer: ReturnType<typeof setInterval> | null = null;

  /** Pushes the snapshot if anything changed. */
  push(): void {
    const engine = current?.engine;
    if (!engine) return this.#stopTimer();
    const s = engine.stats();
    this.#at = performance.now();
    if (!sameFigures(s, this.#last)) {
      this.#last = s;
      post({ type: "stats", stats: s });
    }
    const busy = s.queueBusy > 0 || s.queueWaiting > 0;
    if (busy && this.#timer === null) {
      this.#timer = setInterval(() => this.push(), STATS_INTERVAL_MS);
    } else if (!busy) this.#stopTimer();
  }

  /** Pushes if the last push is STATS_INTERVAL_MS old (the timer cannot fire inside a step). */
  tick(): void {
    if (performance.now() - this.#at >= STATS_INTERVAL_MS) this.push();
  }

  #stopTimer(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }
}

function sameFigures(a: Record<string, number>, b: Record<string, number>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}

const stats = new StatsPusher();

async function openSpec(spec: EngineSpec): Promise<EngineModel> {
  if (spec.kind === "runtime") {
    const rt = await openRuntime(spec.flags, spec.defaultContext);
    try {
      const tokenizer = await loadTokenizer(rt.opened.dir);
      return {
        model: rt.model,
        tokenizer,
        stats: () => ({
          ...runtimeStats(rt),
          ...loadFigures(rt.model.cache.metrics.snapshot()),
        }),
        close: () => rt.close(),
        gpu: rt.model.gpu,
      };
    } catch (e) {
      rt.close();
      throw e;
    }
  }
  const mod = await import(spec.url);
  const factory = mod[spec.exportName];
  if (typeof factory !== "function") {
    throw new TypeError(`${spec.url} exports no function named ${spec.exportName}`);
  }
  return await factory(spec.options);
}

/** Opens `spec` and the engine over it; a lost device then starts a reopen. */
async function start(spec: EngineSpec): Promise<void> {
  const m = await openSpec(spec);
  const engine = new LocalEngine(m.model, m.tokenizer, {
    maxQueue: spec.kind === "runtime" ? spec.maxQueue : undefined,
    stats: m.stats,
    close: m.close,
    onChange: () => stats.push(),
  });
  current = { engine, model: m };
  m.gpu?.lost.then((lost) => {
    if (current?.model === m && !closing) void reopen(lost);
  });
}

async function open(spec: EngineSpec): Promise<void> {
  opened = spec;
  try {
    await start(spec);
    post({ type: "ready", info: current!.engine.info, stats: current!.engine.stats() });
  } catch (e) {
    post({ type: "failed", error: toWire(e) });
  }
}

/** Throws why the model cannot be trusted now: a reopen under way, a lost device, a GPU error. */
function checkHealthy(m: EngineModel | undefined): void {
  if (failure) throw failure;
  m?.gpu?.check();
}

/**
 * After a GPU failure: says the model is unavailable, fails every job with `cause`, frees the
 * model and reopens the spec, as many attempts as the spec's reopenDelaysMs (REOPEN_DELAYS_MS).
 */
function reopen(cause: Error): Promise<void> {
  return reopening ??= (async () => {
    failure = cause;
    const why = cause.name === "DeviceLostError"
      ? "the GPU device was lost"
      : "the GPU reported an error";
    console.error(`engine: ${cause.message}; reopening the model`);
    post({ type: "health", health: { status: "unavailable", message: `${why}; reloading` } });
    for (const job of jobs.values()) job.abort.abort();
    await Promise.all([...jobs.values()].map((j) => j.ended));
    const old = current;
    current = null;
    stats.push();
    try {
      await old?.engine.close();
    } catch (e) {
      console.error("engine: freeing the failed model:", e);
    }
    const delays = opened!.reopenDelaysMs ?? REOPEN_DELAYS_MS;
    for (let attempt = 1; attempt <= delays.length && !closing; attempt++) {
      await new Promise((r) => setTimeout(r, delays[attempt - 1]));
      try {
        await start(opened!);
        failure = null;
        reopening = null;
        post({ type: "health", health: { status: "ok" }, stats: current!.engine.stats() });
        return;
      } catch (e) {
        console.error(`engine: reopening the model, attempt ${attempt}: `, e);
        post({
          type: "health",
          health: {
            status: "unavailable",
            message: `${why}; reloading (attempt ${attempt} of ${delays.length} failed)`,
          },
        });
      }
    }
    post({
      type: "health",
      health: {
        status: "error",
        message: `${why} and the model could not be reloaded (the server's log says why); ` +
          "restart the server",
      },
    });
  })();
}

/** What a job that failed with `e` reports: the model's failure when there is one. */
async function causeOf(e: unknown, m: EngineModel | undefined): Promise<unknown> {
  if (failure) return failure;
  const gpu = m?.gpu;
  if (!gpu) return e;
  if (gpu.lostError) return gpu.lostError;
  if ((e as Error)?.name?.endsWith("AbortedError")) return e;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const lost = await Promise.race([
    gpu.lost,
    new Promise<null>((r) => timer = setTimeout(() => r(null), LOSS_GRACE_MS)),
  ]);
  clearTimeout(timer);
  return lost ?? e;
}

/** Drives one job to its end, posting each piece, then its result or error. */
async function drive(id: number, job: EngineJob, signal: AbortSignal): Promise<void> {
  const m = current?.model;
  try {
    if (current === null || m === undefined) {
      throw failure
        ? new ModelUnavailableError()
        : new Error("the engine worker got a job before its model opened");
    }
    checkHealthy(m);
    const it = current.engine.run(job, signal);
    try {
      while (true) {
        const step = await it.next();
        checkHealthy(m); // nothing the GPU computed after an error leaves the worker
        if (step.done) {
          stats.push(); // the figures of the finished job arrive before its result
          post({ type: "done", id, result: step.value });
          return;
        }
        post({ type: "piece", id, piece: step.value });
        stats.tick();
      }
    } finally {
      await it.return(undefined as never); // frees the session when a check ended the job
    }
  } catch (e) {
    const cause = await causeOf(e, m);
    const name = (cause as Error)?.name;
    if (!closing && (name === "GpuError" || name === "DeviceLostError")) {
      void reopen(cause as Error); // says "unavailable" at once: before this job's error arrives
    }
    stats.push();
    post({ type: "error", id, error: toWire(cause) });
  } finally {
    jobs.delete(id);
  }
}

async function close(): Promise<void> {
  closing = true;
  for (const job of jobs.values()) job.abort.abort();
  await Promise.all([...jobs.values()].map((j) => j.ended));
  await reopening;
  await current?.engine.close();
  current = null;
  stats.push();
  post({ type: "closed" });
}

scope.onmessage = (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  switch (m.type) {
    case "open":
      return void open(m.spec);
    case "run": {
      const abort = new AbortController();
      jobs.set(m.id, { abort, ended: drive(m.id, m.job, abort.signal) });
      return;
    }
    case "abort":
      return jobs.get(m.id)?.abort.abort();
    case "close":
      return void close();
  }
};
