/**
 * The chat page (GET /) in headless Chromium via npm `playwright-core`: typing a message shows a
 * streamed reply, and the tokens/s and expert-cache figures from /stats.
 * Chromium must be at /usr/bin/chromium (`apt-get install -y chromium`). Under CI=true a missing
 * browser fails the test; without CI it is skipped with the reason printed.
 */
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { startTestServer } from "./_test_model.ts";

const CHROMIUM = "/usr/bin/chromium";
const LAUNCH_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
/** Generous for a loaded 2-core machine; the reply itself takes milliseconds. */
const PAGE_TIMEOUT_MS = 30_000;

function chromiumPresent(): boolean {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
}

const present = chromiumPresent();
const inCi = Deno.env.get("CI") === "true";
if (!present && !inCi) {
  console.log(`chat_page_test skipped: ${CHROMIUM} is missing (apt-get install -y chromium)`);
}

Deno.test({
  name: "chat page streams a reply to a typed message and shows tokens/s and cache hit rate",
  ignore: !present && !inCi,
  async fn() {
    assert.ok(present, `${CHROMIUM} is missing; CI must install chromium`);
    const server = await startTestServer({
      eosAfter: "j",
      cacheStats: () => ({ hits: 9, misses: 1 }),
    });
    const userDataDir = await Deno.makeTempDir({ prefix: "chat_page_chromium_" });
    const browser = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: LAUNCH_ARGS,
      timeout: PAGE_TIMEOUT_MS,
    });
    try {
      const page = browser.pages()[0] ?? await browser.newPage();
      page.setDefaultTimeout(PAGE_TIMEOUT_MS);
      await page.goto(server.url + "/");
      assert.equal(await page.title(), "Qwen3-MoE chat");
      // count DOM updates of the conversation: a streamed reply grows piece by piece
      await page.evaluate(
        "window.updates = 0; new MutationObserver((m) => window.updates += m.length)" +
          ".observe(document.getElementById('log'), { subtree: true, childList: true })",
      );
      await page.fill("#temperature", "0"); // greedy: the bigram model's reply is known
      await page.fill("#input", "hello");
      await page.press("#input", "Enter");
      const reply = page.locator(".msg.assistant[data-done=true]");
      await reply.waitFor();
      assert.equal(await reply.textContent(), "abcdefghij"); // then <|im_end|>
      assert.equal(await page.locator(".msg.user").textContent(), "hello");
      const updates = await page.evaluate("window.updates") as number;
      assert.ok(updates >= 2 + 10, `${updates} DOM updates: expected 2 bubbles + one per token`);
      await page.locator("#hit", { hasText: "90.0%" }).waitFor(); // 9 hits, 1 miss
      assert.match(await page.locator("#speed").textContent() ?? "", /tokens\/s: \d/);
      assert.equal(server.model.liveSessions, 0);
    } finally {
      await browser.close();
      await server.close();
      await Deno.remove(userDataDir, { recursive: true });
    }
  },
});
