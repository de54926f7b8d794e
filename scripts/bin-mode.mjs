// After a build: the compiled CLI entry is the package's bin, so it must be executable
// (the compiler writes it 0644, and `npx flotilla` then fails with "Permission denied").
import { chmodSync } from "node:fs";

chmodSync(new URL("../dist/src/cli/main.js", import.meta.url), 0o755);
