// Run a Python script with $PYTHON, else python, else python3 (npm scripts cannot default env vars portably).
import { spawnSync } from "node:child_process";

const candidates = [process.env.PYTHON, "python", "python3"].filter(Boolean);
for (const python of candidates) {
  const result = spawnSync(python, process.argv.slice(2), { stdio: "inherit" });
  if (result.error?.code === "ENOENT") continue;
  process.exit(result.status ?? 1);
}
console.error(`no Python interpreter found (tried ${candidates.join(", ")}); set PYTHON=/path/to/python`);
process.exit(1);
