/**
 * The server's public face: the app, serve(), the CLI command, its error classes, and the engines
 * it runs on (in-process LocalEngine, WorkerEngine in a Deno Worker).
 */
export {
  type AppOptions,
  createApp,
  DEFAULT_HOST,
  DEFAULT_MAX_BODY_BYTES,
  DEFAULT_MAX_TOKENS,
  DEFAULT_PORT,
  exposureWarning,
  type RunningServer,
  serve,
  type ServedAddress,
  servedHostNames,
  type ServeOptions,
} from "./app.ts";
export { expertCacheStats, SERVE_SPEC, serveCommand } from "./cli.ts";
export { type GenerationOutcome, ServerMetrics } from "./metrics.ts";
export * from "./errors.ts";
export type {
  ChatCompletion,
  ChatCompletionChunk,
  Completion,
  ModelList,
  Usage,
} from "./openai_types.ts";
export type { Engine, EngineInfo, EngineJob } from "../engine/engine.ts";
export { EngineClosedError } from "../engine/engine.ts";
export { eosIds, LocalEngine, type LocalEngineOptions, runtimeStats } from "../engine/local.ts";
export {
  type EngineHealth,
  type EngineModel,
  type EngineSpec,
  EngineWorkerError,
  WorkerEngine,
} from "../engine/worker_engine.ts";
