// Drives the intake web page in headless Chromium (Debian's chromium,
// through playwright-core): a client opens the invitation link, gets a
// one-time code, fills in the form, sees the page's own check of an answer
// as it is typed and the server's message next to a field it refused, fixes
// it and sends the form. Prints one JSON line with what it saw; exits
// non-zero on the first step that does not happen.
//
// Usage: node intake_page.cjs <invitation URL> <notifications.jsonl>
"use strict";

const fs = require("fs");
const { chromium } = require("playwright-core");

const [url, notifications] = process.argv.slice(2);
const TIMEOUT = 15000;

function lastCode() {
  // The last message with a code: notices to staff may come after it.
  const lines = fs.readFileSync(notifications, "utf8").trim().split("\n");
  for (const line of lines.reverse()) {
    const words = JSON.parse(line).body.split(/\s+/);
    const code = words.find((w) => /^\d{6}$/.test(w));
    if (code) return code;
  }
  throw new Error("no notification with a code");
}

function png(len) {
  const b = Buffer.alloc(len, 0x42);
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d]).copy(b, 0);
  Buffer.from("IHDR").copy(b, 12);
  return b;
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    timeout: TIMEOUT,
  });
  const seen = {};
  try {
    // The page is served with the service certificate of the dev CA.
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    await page.goto(url);
    seen.address_after_open = await page.evaluate(() => location.href);
    await page.getByRole("button", { name: "Send me a code" }).click();
    await page.locator("#code-step").waitFor({ state: "visible" });
    seen.hint = await page.locator("#code-hint").textContent();
    await page.getByLabel("Code").fill(lastCode());
    await page.getByRole("button", { name: "Continue" }).click();
    await page.locator("#form").waitFor({ state: "visible" });
    seen.title = await page.locator("h1").textContent();

    // Checked as it is typed.
    await page.getByLabel(/^email/).fill("jane-at-example.org");
    seen.typed_email_error = await page.locator("#e-email").textContent();
    await page.getByLabel(/^email/).fill("jane@example.org");
    seen.fixed_email_error = await page.locator("#e-email").textContent();

    await page.getByLabel(/^full name/).fill("Jane Quillfeather");
    await page.getByLabel(/^date of birth/).fill("1980-02-29");
    await page.getByLabel(/^passport number/).fill("X1234567");
    await page.getByLabel(/^annual income/).fill("52000");
    await page.getByLabel(/^contact by/).selectOption("post");
    await page.getByLabel(/^agree terms/).check();
    await page.getByLabel(/I have read and accept the privacy notice/).check();

    // A "PNG" whose content is a PDF passes the page's check of its type
    // and size; the server looks at the bytes and says no, next to the field.
    await page.setInputFiles("#f-passport_scan", {
      name: "passport.png",
      mimeType: "image/png",
      buffer: Buffer.from("%PDF-1.7\n% not an image\n" + "x".repeat(2000)),
    });
    await page.getByRole("button", { name: "Send to the firm" }).click();
    await page.waitForFunction(() => document.querySelector("#e-passport_scan").textContent.length > 0);
    seen.server_file_error = await page.locator("#e-passport_scan").textContent();
    seen.file_invalid = await page.locator("#f-passport_scan").getAttribute("aria-invalid");

    await page.setInputFiles("#f-passport_scan", {
      name: "passport.png",
      mimeType: "image/png",
      buffer: png(20000),
    });
    await page.getByRole("button", { name: "Send to the firm" }).click();
    await page.locator("#done").waitFor({ state: "visible" });
    seen.done = await page.locator("#done h2").textContent();
    seen.done_text = await page.locator("#done p").textContent();
    seen.csp = (await (await context.request.get(new URL("/", url).href)).headers())["content-security-policy"];

    // One address gets a bounded number of requests a minute.
    seen.rate_limited_after = 0;
    for (let sent = 1; sent <= 300; sent++) {
      const r = await context.request.get(new URL("/intake.css", url).href);
      if (r.status() === 429) { seen.rate_limited_after = sent; break; }
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(seen) + "\n");
})().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + "\n");
  process.exit(1);
});
