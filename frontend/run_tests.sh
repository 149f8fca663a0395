#!/usr/bin/env bash
# The frontend's whole test suite, as CI runs it (no GPU needed: headless Chromium runs WebGPU on SwiftShader).
# Needs: Node >= 20.19 with npm, Debian's `chromium` (or CHROMIUM=/path), and the repository's Python
# environment (torch, safetensors) for the reference fixtures. About 1.5 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi
npm run lint                      # prettier --check and tsc
npm test                          # pretest: python scripts/make_fixtures.py (skipped when up to date)
node scripts/browser-test.mjs     # kernel + whole-model parity against PyTorch, every mode, both backbones
node scripts/browser-test.mjs --gemm tiled --only tiny16/q4   # the tiled GEMM of hardware GPUs (SwiftShader runs "direct")
node scripts/browser-test.mjs --weights packed --only tiny16/q8   # q8 decoded in the direct GEMM (SwiftShader expands at load)
node scripts/cpu-parity.mjs       # the CPU path (onnxruntime-web wasm on the ONNX files) against PyTorch
node scripts/e2e.mjs              # built page: pick model, generate, reconstruct, pad, loop, roam; screenshot
