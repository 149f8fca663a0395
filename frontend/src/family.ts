/**
 * The families the page reads (docs/families.md): a file's `family` (absent = "sphere") picks its model
 * class. The parser already refused families it does not know, naming them (src/format.ts).
 */

import type { FamilyName } from "./config";
import { DEFAULT_FAMILY, FAMILY_CONFIG_KEYS, parseWeightFile, type WeightFile } from "./format";
import type { Gpu } from "./gpu";
import { SphereModel, type WebModel } from "./model";
import { PSVAEModel, psvaeUnsupported } from "./psvae";
import { LDMModel } from "./ldm";
import { SOMARModel, somarUnsupported } from "./somar";
import { VQVAEModel, vqvaeUnsupported } from "./vqvae";

const MODEL_CLASSES: Record<FamilyName, (gpu: Gpu, file: WeightFile, source: string) => WebModel> = {
  sphere: (gpu, file, source) => SphereModel.fromFile(gpu, file, source),
  psvae: (gpu, file, source) => PSVAEModel.fromFile(gpu, file, source),
  vqvae: (gpu, file, source) => VQVAEModel.fromFile(gpu, file, source),
  ldm: (gpu, file, source) => LDMModel.fromFile(gpu, file, source),
  somar: (gpu, file, source) => SOMARModel.fromFile(gpu, file, source),
};

/** Parse and verify a weight file of any family the page reads, and build its model. */
export async function loadModel(gpu: Gpu, buffer: ArrayBuffer, source = "weights"): Promise<WebModel> {
  const file = await parseWeightFile(buffer, source);
  return MODEL_CLASSES[file.config.family](gpu, file, source);
}

/** The index.json fields the page looks at before downloading a file. */
export interface IndexFields {
  name: string;
  family?: string; // absent in index files written before families existed: sphere
  backbone?: string;
  quantizer?: string;
  codebook_family?: string; // somar prior: "vqvae" when it models a vqvae's tokens
}

/**
 * Why the page will not show the model of an index.json entry (so it is not downloaded), or null. The same
 * checks run again on the file's own header when it loads.
 */
export function entryProblem(entry: IndexFields): string | null {
  const family = entry.family ?? DEFAULT_FAMILY;
  if (!Object.hasOwn(FAMILY_CONFIG_KEYS, family)) return `'${entry.name}' holds a '${family}' model, a family this page does not know`;
  if (family === "psvae") {
    const reason = psvaeUnsupported(entry.backbone);
    return reason && `'${entry.name}': ${reason}`;
  }
  if (family === "vqvae") {
    const reason = vqvaeUnsupported(entry.quantizer);
    return reason && `'${entry.name}': ${reason}`;
  }
  if (family === "somar") {
    const reason = somarUnsupported(entry.codebook_family);
    return reason && `'${entry.name}': ${reason}`;
  }
  return null;
}
