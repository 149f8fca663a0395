import { describe, expect, it } from "vitest";
import { kernelsFor } from "../../src/gpu";

describe("kernelsFor", () => {
  it("gives software adapters the direct GEMM and float32-expanded weights", () => {
    expect(kernelsFor(true, "")).toEqual({ gemm: "direct", weights: "expanded" });
  });

  it("gives hardware adapters the tiled GEMM and packed weights", () => {
    expect(kernelsFor(false, "?model=vit_tiny")).toEqual({ gemm: "tiled", weights: "packed" });
  });

  it("lets the URL force either choice, each on its own", () => {
    expect(kernelsFor(true, "?weights=packed")).toEqual({ gemm: "direct", weights: "packed" });
    expect(kernelsFor(false, "?gemm=direct&weights=expanded")).toEqual({ gemm: "direct", weights: "expanded" });
    expect(kernelsFor(true, "?gemm=tiled")).toEqual({ gemm: "tiled", weights: "expanded" });
  });

  it("ignores values it does not know", () => {
    expect(kernelsFor(false, "?gemm=fast&weights=q4")).toEqual({ gemm: "tiled", weights: "packed" });
  });
});
