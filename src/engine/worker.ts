/**
 * The engine worker's module (spawned by WorkerEngine.start): opens the model its spec names, runs
 * a LocalEngine over it, and streams each job's pieces, result or error back by message. It pushes
 * a stats snapshot whenever the engine's own figures change (a job queued, started, ended) and at
 * least every STATS_INTERVAL_MS while busy, so the main thread never asks for one.
 */
import { openRuntime } from "../cli/runtime.ts";
import { loadTokenizer } from "../tokenizer.ts";
import { LocalEngine, runtimeStats } from "./local.ts";
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

/** The worker's global scope, as far as this module uses it. */
interface WorkerScope {
  postMessage(message: FromWorker): void;
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
}
const scope = globalThis as unknown as WorkerScope;
const post = (m: FromWorker) => scope.postMessage(m);

let engine: LocalEngine | null = null;
/** Running jobs by id: their abort and the promise that settles once the job has ended. */
const jobs = new Map<number, { abort: AbortController; ended: Promise<void> }>();

/** Pushes engine.stats() when it differs from the last push; a timer repeats it while busy. */
class StatsPusher {
  #last: Record<string, number> = {};
  #at = 0;
  #timer: ReturnType<typeof setInterval> | null = null;

  /** Pushes the snapshot if anything changed. */
  push(): void {
    if (engine === null) return;
    const s = engine.stats();
    this.#at = performance.now();
    if (!sameFigures(s, this.#last)) {
      this.#last = s;
      post({ type: "stats", stats: s });
    }
    const busy = s.queueBusy > 0 || s.queueWaiting > 0;
    if (busy && this.#timer === null) {
      this.#timer = setInterval(() => this.push(), STATS_INTERVAL_MS);
    } else if (!busy && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
  }

  /** Pushes if the last push is STATS_INTERVAL_MS old (the timer cannot fire inside a step). */
  tick(): void {
    if (performance.now() - this.#at >= STATS_INTERVAL_MS) this.push();
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
      return { model: rt.model, tokenizer, stats: () => runtimeStats(rt), close: () => rt.close() };
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

async function open(spec: EngineSpec): Promise<void> {
  try {
    const m = await openSpec(spec);
    engine = new LocalEngine(m.model, m.tokenizer, {
      stats: m.stats,
      close: m.close,
      onChange: () => stats.push(),
    });
    post({ type: "ready", info: engine.info, stats: engine.stats() });
  } catch (e) {
    post({ type: "failed", error: toWire(e) });
  }
}

/** Drives one job to its end, posting each piece, then its result or error. */
async function drive(id: number, job: EngineJob, signal: AbortSignal): Promise<void> {
  try {
    if (engine === null) throw new Error("the engine worker got a job before its model opened");
    const it = engine.run(job, signal);
    while (true) {
      const step = await it.next();
      if (step.done) {
        stats.push(); // the figures of the finished job arrive before its result
        post({ type: "done", id, result: step.value });
        return;
      }
      post({ type: "piece", id, piece: step.value });
      stats.tick();
    }
  } catch (e) {
    stats.push();
    post({ type: "error", id, error: toWire(e) });
  } finally {
    jobs.delete(id);
  }
}

async function close(): Promise<void> {
  for (const job of jobs.values()) job.abort.abort();
  await Promise.all([...jobs.values()].map((j) => j.ended));
  await engine?.close();
  engine = null;
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
