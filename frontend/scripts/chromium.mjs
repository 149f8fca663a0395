// Launch the system Chromium (Debian package `chromium`) headless with WebGPU on, through playwright-core.
// playwright-core never downloads a browser: we point it at /usr/bin/chromium (or $CHROMIUM).
import fs from "node:fs";
import { chromium } from "playwright-core";

export const CHROMIUM_FLAGS = [
  "--no-sandbox",
  "--enable-unsafe-webgpu", // WebGPU on Linux is behind this flag; headless then uses SwiftShader (CPU)
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-dev-shm-usage", // containers often have a tiny /dev/shm
];

export function chromiumPath() {
  const candidates = [process.env.CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].filter(Boolean);
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) throw new Error(`no Chromium found (tried ${candidates.join(", ")}): apt-get install -y chromium, or set CHROMIUM=/path`);
  return found;
}

/** Headless browser; playwright gives every launch a fresh temporary profile (--user-data-dir) itself. */
export async function launchChromium(extraFlags = []) {
  const browser = await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: [...CHROMIUM_FLAGS, ...extraFlags, ...(process.env.CHROMIUM_FLAGS ?? "").split(" ").filter(Boolean)],
  });
  return { browser, close: () => browser.close() };
}
