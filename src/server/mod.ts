/** The server's public face: the app, serve(), the CLI command, and its error classes. */
export {
  type AppOptions,
  createApp,
  DEFAULT_HOST,
  DEFAULT_MAX_BODY_BYTES,
  DEFAULT_MAX_TOKENS,
  DEFAULT_PORT,
  type RunningServer,
  serve,
  type ServeOptions,
} from "./app.ts";
export { expertCacheStats, serveCommand } from "./cli.ts";
export * from "./errors.ts";
export type {
  ChatCompletion,
  ChatCompletionChunk,
  Completion,
  ModelList,
  Usage,
} from "./openai_types.ts";
