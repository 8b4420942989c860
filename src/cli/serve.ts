/**
 * `main.ts serve [--model DIR] [--host 127.0.0.1] [--port 8000] [--api-key KEY]
 * [--expert-cache-mib M | --expert-slots N]`: the OpenAI-compatible server. /health answers
 * while the model loads; the server stops on Ctrl-C.
 */
import { basename } from "node:path";
import { info, numberFlag, parseFlags } from "./args.ts";
import {
  openRuntime,
  type Runtime,
  RUNTIME_BOOLEAN_FLAGS,
  RUNTIME_STRING_FLAGS,
} from "./runtime.ts";
import { DEFAULT_MODEL_DIR } from "../model_dir.ts";
import { loadTokenizer } from "../tokenizer.ts";
import { DEFAULT_HOST, DEFAULT_PORT, serve } from "../server/app.ts";
import { DEFAULT_MAX_CONTEXT } from "../gpu/model.ts";

export async function serveCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(
    argv,
    [...RUNTIME_STRING_FLAGS, "host", "port", "api-key", "model-id"],
    RUNTIME_BOOLEAN_FLAGS,
  );
  const dir = (flags.model as string | undefined) ?? DEFAULT_MODEL_DIR;
  const port = numberFlag(flags, "port", DEFAULT_PORT, (n) => Number.isInteger(n) && n >= 0);
  const host = (flags.host as string | undefined) ?? DEFAULT_HOST;
  const tokenizer = await loadTokenizer(dir);
  let runtime: Runtime | null = null;
  const loading = openRuntime(flags, DEFAULT_MAX_CONTEXT).then((rt) => {
    runtime = rt;
    info("model ready");
    return rt.model;
  });
  loading.catch((e) => info(`model failed to load: ${(e as Error).message}`));
  const modelId = (flags["model-id"] as string | undefined) ??
    (flags.model ? basename(dir.replace(/\/$/, "")) : "default");
  const stop = new AbortController();
  const running = serve({
    model: loading,
    tokenizer,
    modelId,
    apiKey: flags["api-key"] as string | undefined,
    host,
    port,
    signal: stop.signal,
    cacheStats: () => cacheStats(runtime),
  });
  info(`serving ${modelId} on ${running.url} (OpenAI API under /v1, chat page at /)`);
  Deno.addSignalListener("SIGINT", () => stop.abort());
  await running.server.finished;
  (runtime as Runtime | null)?.close();
  return 0;
}

/** Expert cache and readback figures for /metrics and the chat page. */
function cacheStats(rt: Runtime | null): Record<string, number> {
  if (rt === null) return {};
  const m = rt.model.cache.metrics.snapshot();
  const s = rt.model.stats;
  return {
    hits: m.hits,
    misses: m.misses,
    hitRate: m.hitRate,
    evictions: m.evictions,
    prefetchIssued: m.prefetchIssued,
    prefetchHit: m.prefetchHit,
    prefetchWasted: m.prefetchWasted,
    bytesUploaded: m.bytesUploaded,
    expertSlots: rt.model.pool.totalSlots,
    coldLoads: m.latency.cold.count,
    coldLoadMeanMs: m.latency.cold.meanMs,
    warmLoads: m.latency.warm.count,
    warmLoadMeanMs: m.latency.warm.meanMs,
    gpuSteps: s.steps,
    gpuReadbacks: s.readbacks,
    gpuReruns: s.reruns,
  };
}
