// CPU time of this Chromium's GPU process, where SwiftShader runs WebGPU: other jobs' load inflates wall time much
// more than it inflates this (Linux /proc only). Used by bench.mjs and gemm-bench.mjs.
import fs from "node:fs";

/** The pid of the GPU process of the Chromium this node process launched, or null (no /proc, or none found). */
export function gpuProcess() {
  if (!fs.existsSync("/proc/self/stat")) return null;
  const parent = (pid) => Number(fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")[1]);
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      if (!fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("--type=gpu-process")) continue;
      for (let p = Number(pid); p > 1; p = parent(p)) if (p === process.pid) return Number(pid);
    } catch {
      // a process that ended while we looked
    }
  }
  return null;
}

/** User + system CPU milliseconds of process `pid` so far (clock ticks of 10 ms). */
export function cpuMs(pid) {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}
