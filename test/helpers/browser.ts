// Headless Debian chromium for the browser tests, launched the way ../shared/RECIPES.md says works
// here (WebGL2 through SwiftShader; never a downloaded browser).
import { existsSync } from "node:fs";
import { chromium, type Browser } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";

const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--enable-unsafe-swiftshader",
];

/** Fails with the set-up step to run when chromium is missing. */
export function requireChromium(): void {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run .ci/setup (apt-get install -y chromium)`);
}

export function launchChromium(): Promise<Browser> {
  requireChromium();
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS });
}

/** A panel's box in the page, CSS pixels. */
export interface Rect {
  left: number;
  top: number;
  width: number;
  height: number;
}
