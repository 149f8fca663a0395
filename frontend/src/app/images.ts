/** Canvas helpers: show model images, and turn files or bundled pictures into center-cropped model inputs. */

import { fromRGBA, toRGBA } from "../model";

/** Draw image `index` of a decoder output (n, C, S, S) in [-1, 1] on a canvas of S x S pixels. */
export function drawImage(canvas: HTMLCanvasElement, images: Float32Array, index: number, channels: number, size: number): void {
  if (canvas.width !== size || canvas.height !== size) {
    canvas.width = size;
    canvas.height = size;
  }
  const context = canvas.getContext("2d")!;
  context.putImageData(new ImageData(toRGBA(images, index, channels, size) as Uint8ClampedArray<ArrayBuffer>, size, size), 0, 0);
}

/** A grid of `count` canvases in `container` (reused when the count is unchanged). */
export function canvasGrid(container: HTMLElement, count: number): HTMLCanvasElement[] {
  let canvases = Array.from(container.querySelectorAll("canvas"));
  if (canvases.length !== count) {
    container.replaceChildren();
    canvases = Array.from({ length: count }, () => {
      const canvas = document.createElement("canvas");
      canvas.className = "pixel";
      container.appendChild(canvas);
      return canvas;
    });
    container.style.setProperty("--columns", String(Math.ceil(Math.sqrt(count))));
  }
  return canvases;
}

/** Decode an image file or URL into an ImageBitmap (throws a readable error for non-images). */
export async function loadBitmap(source: Blob | string): Promise<ImageBitmap> {
  const blob = typeof source === "string" ? await (await fetch(source)).blob() : source;
  try {
    return await createImageBitmap(blob);
  } catch {
    throw new Error("this file is not an image the browser can decode");
  }
}

/** Center square crop of a bitmap resized to size x size, as RGBA; also drawn on `preview` when given. */
export function centerCrop(bitmap: ImageBitmap, size: number, preview?: HTMLCanvasElement): Uint8ClampedArray {
  const side = Math.min(bitmap.width, bitmap.height);
  const canvas = preview ?? document.createElement("canvas");
  canvas.width = size;
  canvas.height = size;
  const context = canvas.getContext("2d", { willReadFrequently: true })!;
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side, 0, 0, size, size);
  return context.getImageData(0, 0, size, size).data;
}

/** Model input (1, C, S, S) in [-1, 1] from RGBA pixels. */
export function toModelInput(rgba: Uint8ClampedArray, channels: number, size: number): Float32Array {
  return fromRGBA(rgba, channels, size);
}

/** True when a decoded image is not a single flat color (used by the end-to-end test too). */
export function hasContent(images: Float32Array): boolean {
  let min = Infinity;
  let max = -Infinity;
  for (const value of images) {
    min = Math.min(min, value);
    max = Math.max(max, value);
  }
  return max - min > 1e-3;
}
