/**
 * `main.ts serve [--model DIR] [--host H] [--port P] [--api-key KEY] [--model-id ID] [runtime
 * flags]`: loads the tokenizer, starts the OpenAI-compatible server at once (/health answers
 * "loading" while the model opens on the GPU), and serves until interrupted. The API key may also
 * come from the environment variable QWEN_MOE_API_KEY.
 */
import { basename, resolve } from "node:path";
import { info, numberFlag, parseFlags } from "../cli/args.ts";
import { openRuntime, RUNTIME_BOOLEAN_FLAGS, RUNTIME_STRING_FLAGS } from "../cli/runtime.ts";
import { DEFAULT_MODEL_DIR } from "../model_dir.ts";
import { loadTokenizer } from "../tokenizer.ts";
import type { ExpertMetricsSnapshot } from "../experts/metrics.ts";
import { DEFAULT_HOST, DEFAULT_MAX_BODY_BYTES, DEFAULT_PORT, serve } from "./app.ts";

/** Context the server's sessions get unless --max-context says otherwise. */
const DEFAULT_SERVE_CONTEXT = 4096;
const API_KEY_ENV = "QWEN_MOE_API_KEY";
const MS_PER_SECOND = 1000;

/** The expert cache snapshot as flat numbers for /metrics and /stats. */
export function expertCacheStats(s: ExpertMetricsSnapshot): Record<string, number> {
  const out: Record<string, number> = {
    hits: s.hits,
    misses: s.misses,
    hitRate: s.hitRate,
    evictions: s.evictions,
    prefetchIssued: s.prefetchIssued,
    prefetchHit: s.prefetchHit,
    prefetchWasted: s.prefetchWasted,
    bytesUploaded: s.bytesUploaded,
  };
  for (const source of ["cold", "warm"] as const) {
    const l = s.latency[source];
    out[`${source}Loads`] = l.count;
    out[`${source}LoadMeanSeconds`] = l.meanMs / MS_PER_SECOND;
    out[`${source}LoadP99Seconds`] = l.p99Ms / MS_PER_SECOND;
  }
  return out;
}

export async function serveCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(
    argv,
    [...RUNTIME_STRING_FLAGS, "host", "port", "api-key", "model-id", "max-body-bytes"],
    RUNTIME_BOOLEAN_FLAGS,
  );
  const port = numberFlag(flags, "port", DEFAULT_PORT, (n) => Number.isInteger(n) && n >= 0);
  const maxBodyBytes = numberFlag(flags, "max-body-bytes", DEFAULT_MAX_BODY_BYTES, (n) => n > 0);
  const dir = (flags.model as string | undefined) ?? DEFAULT_MODEL_DIR;
  const tokenizer = await loadTokenizer(dir);
  const runtime = openRuntime(flags, DEFAULT_SERVE_CONTEXT);
  runtime.catch((e) => info(`serve: the model failed to load: ${(e as Error).message}`));
  let metrics: (() => Record<string, number>) | null = null;
  runtime.then((rt) =>
    metrics = () => ({
      ...expertCacheStats(rt.model.cache.metrics.snapshot()),
      expertSlots: rt.model.pool.totalSlots,
      gpuSteps: rt.model.stats.steps,
      gpuReadbacks: rt.model.stats.readbacks,
      gpuReruns: rt.model.stats.reruns,
    }), () => {});
  const stop = new AbortController();
  Deno.addSignalListener("SIGINT", () => stop.abort());
  const { server, url } = serve({
    signal: stop.signal,
    model: runtime.then((rt) => rt.model),
    tokenizer,
    modelId: (flags["model-id"] as string | undefined) ?? basename(resolve(dir)),
    apiKey: (flags["api-key"] as string | undefined) ?? Deno.env.get(API_KEY_ENV),
    maxBodyBytes,
    cacheStats: () => metrics ? metrics() : {},
    host: (flags.host as string | undefined) ?? DEFAULT_HOST,
    port,
  });
  info(`serving ${url} (chat page at ${url}/, OpenAI API at ${url}/v1)`);
  await server.finished;
  (await runtime.catch(() => null))?.close();
  return 0;
}
