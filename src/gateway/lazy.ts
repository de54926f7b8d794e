// Packages the gateway needs only after its data port serves (undici for the node:http path, ws
// for the event stream): loaded on first use, so a restart serves ~100 ms sooner (importing
// undici alone took 101 ms here, ws 36 ms) and a gateway whose traffic stays on the fast path
// never carries undici (~20 MB of RSS).
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
let undiciModule: typeof import("undici") | undefined;
let wsModule: typeof import("ws") | undefined;

export function undici(): typeof import("undici") {
  undiciModule ??= require("undici") as typeof import("undici");
  return undiciModule;
}

export function ws(): typeof import("ws") {
  wsModule ??= require("ws") as typeof import("ws");
  return wsModule;
}
