/**
 * A Power-Spherical VAE (models/psvae.py `PSVAE`) on WebGPU: its latent is a point of the unit sphere
 * S^(d-1). encode gives mu (B, d) on the sphere; sample decodes uniform points of the sphere (normalised
 * Gaussians) and refines with encode -> normalise -> decode cycles, no noise; reconstruct is D(mu(x)) with
 * the same cycles. Classifier-free guidance as `PSVAE._guided` (combo: sqrt(w) on mu, renormalised, and on
 * the pixels).
 */

import type { PSVAEConfig } from "./config";
import { parseWeightFile, WebFormatError, type WeightFile } from "./format";
import type { Gpu, Workspace } from "./gpu";
import type { GraphIO } from "./graph";
import { buildPsvaeGraphs, hasEncoder } from "./graph_psvae";
import { WebModel, type CommonReconstructOptions, type CommonSampleOptions, type Graphs, type Timings } from "./model";

/** A file the page reads but does not show (a 1-D signal model): the message says why, in one line. */
export class UnsupportedModelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UnsupportedModelError";
  }
}

/** Why the page does not show a psvae with this backbone, or null when it does. */
export function psvaeUnsupported(backbone: string | undefined): string | null {
  if (backbone === "conv1d") {
    return "1-D signal models (psvae conv1d) are not shown in this page; draw their curves with sampling.py";
  }
  return null;
}

export class PSVAEModel extends WebModel<PSVAEConfig> {
  readonly latentShape: number[];
  readonly latentSize: number; // d
  readonly radius = 1; // the unit sphere S^(d-1), not sqrt(L) as the Sphere Encoder's
  readonly canEncode: boolean;

  private constructor(gpu: Gpu, file: WeightFile) {
    super(gpu, file);
    this.latentSize = this.config.z_dim;
    this.latentShape = [this.config.z_dim];
    this.canEncode = hasEncoder(this.weights);
  }

  /** Parse and verify a sphere-web file holding a psvae, and build the batch-1 graphs. */
  static async load(gpu: Gpu, buffer: ArrayBuffer, source = "weights"): Promise<PSVAEModel> {
    return PSVAEModel.fromFile(gpu, await parseWeightFile(buffer, source), source);
  }

  /** A model from a parsed file (a bad or unsupported file fails here, not at the first call). */
  static fromFile(gpu: Gpu, file: WeightFile, source = "weights"): PSVAEModel {
    const cfg = file.config;
    if (cfg.family !== "psvae") throw new WebFormatError(`'${source}' holds a '${cfg.family}' model, not a psvae`);
    const unsupported = psvaeUnsupported(cfg.backbone);
    if (unsupported) throw new UnsupportedModelError(`'${source}': ${unsupported}`);
    if (cfg.backbone !== "conv" && cfg.backbone !== "vit") throw new WebFormatError(`'${source}' has unknown backbone '${cfg.backbone}'`);
    if (cfg.decoder !== "conv" && cfg.decoder !== "upsample")
      throw new WebFormatError(`'${source}' has unknown decoder '${cfg.decoder}' (expected 'conv' or 'upsample')`);
    if (cfg.norm === "batch" && !file.bnFolded) throw new WebFormatError(`'${source}' has BatchNorm that was not folded at export`);
    if (!(Number.isInteger(cfg.z_dim) && cfg.z_dim >= 2))
      throw new WebFormatError(`'${source}' has z_dim ${cfg.z_dim}; the sphere needs d >= 2`);
    return new PSVAEModel(gpu, file).checkBuilds();
  }

  buildGraphs(ws: Workspace, batch: number, encoderIO: GraphIO, decoderIO: GraphIO): Graphs {
    return buildPsvaeGraphs(this.config, this.weights, ws, batch, encoderIO, decoderIO, this.tableCache);
  }

  /** mu (n, d) on the unit sphere for images (n, C, S, S) in [-1, 1] (PSVAE.encode's first output). */
  encode(images: Float32Array, labels?: number[]): Promise<Float32Array> {
    return super.encode(images, labels);
  }

  /** n images from z ~ Uniform(S^(d-1)) (`noise` = the Gaussians that are normalised), then steps-1 cycles. */
  sample(n: number, options: CommonSampleOptions = {}): Promise<Float32Array> {
    return this.runSample(n, options, (session) => [...session.encoder, session.projection("latent"), ...session.decoder]);
  }

  /** D(mu(x)), then steps-1 further encode -> decode cycles on mu. */
  reconstruct(images: Float32Array, options: CommonReconstructOptions = {}): Promise<{ images: Float32Array; timings: Timings }> {
    return this.runReconstruct(images, options, (session) => [...session.encoder, session.projection("latent"), ...session.decoder]);
  }
}
