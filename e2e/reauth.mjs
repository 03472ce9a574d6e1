// The reauthorize link in real headless Chromium, driven by Playwright (playwright-core,
// the machine's Chromium): sign in to the dashboard and capture the Identities page with
// the broken identity in red, then open the link from the Authorization Failure email,
// consent at the sandbox, come back to gapless and read the result.
//
// Input (environment): GAPLESS_BASE, GAPLESS_LINK, GAPLESS_TOKEN, SANDBOX_USER,
// SANDBOX_PASSWORD, ARTIFACTS (a directory), CHROMIUM (default /usr/bin/chromium).
// Output: one JSON line on stdout; exit status 1 with the reason on any failure.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

const base = env("GAPLESS_BASE");
const link = env("GAPLESS_LINK");
const token = env("GAPLESS_TOKEN");
const user = env("SANDBOX_USER");
const password = env("SANDBOX_PASSWORD");
const artifacts = env("ARTIFACTS");
mkdirSync(artifacts, { recursive: true });

const expect = (condition, message) => {
  if (!condition) throw new Error(message);
};

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(20_000);

  // The operator's view: the identity is red.
  await page.goto(`${base}/login`);
  await page.fill('input[name="token"]', token);
  await Promise.all([page.waitForURL(`${base}/identities`), page.click('button[type="submit"]')]);
  const row = page.locator("#identity-acme");
  expect((await row.getAttribute("class")) === "red", "the broken identity is not red");
  const badge = (await row.locator(".badge").textContent()).trim();
  expect(badge === "needs_reauth", `badge says ${badge}`);
  await page.screenshot({ path: join(artifacts, "identities-red.png"), fullPage: true });

  // The person who received the email: no gapless account, just the link.
  const person = await (await browser.newContext()).newPage();
  person.setDefaultTimeout(20_000);
  await person.goto(link);
  const heading = (await person.locator("h1").textContent()).trim();
  expect(heading === "Reauthorize Sandbox Ads", `heading: ${heading}`);
  await person.click("#reauthorize");
  await person.waitForURL(/\/oauth\/authorize/);
  await person.fill('input[name="username"]', user);
  await person.fill('input[name="password"]', password);
  await Promise.all([
    person.waitForURL(/\/reauth\/progress\//),
    person.click('button[value="allow"]'),
  ]);
  // The progress page refreshes itself until the back-fill is done.
  await person.locator("#backfill-state", { hasText: /^(complete|stopped)$/ }).waitFor();
  const done = (await person.locator("#done").textContent()).trim();
  expect(done === "Reauthorized", `result page: ${await person.content()}`);
  const state = (await person.locator("#identity-state").textContent()).trim();
  const backfill = (await person.locator("#backfill-state").textContent()).trim();
  const recovered = Number((await person.locator("#recovered").textContent()).trim());
  const lost = Number((await person.locator("#lost").textContent()).trim());
  await person.screenshot({ path: join(artifacts, "reauthorized.png"), fullPage: true });

  // The operator's view again: green.
  await page.goto(`${base}/identities`);
  const after = await page.locator("#identity-acme").getAttribute("class");
  await page.screenshot({ path: join(artifacts, "identities-after.png"), fullPage: true });

  console.log(JSON.stringify({ state, backfill, recovered, lost, after }));
} catch (error) {
  console.error(String(error?.stack ?? error));
  process.exitCode = 1;
} finally {
  await browser.close();
}
