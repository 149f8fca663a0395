/** Seeded random numbers for sampling in the browser (not torch's generator: seeds do not match Python). */

/**
 * xoshiro128** seeded through splitmix32; uniform floats in [0, 1). `stream` picks one of many independent
 * generators of a seed (stream i: image i of a batch, so an image's draws do not depend on its batch); stream 0 is
 * the generator of the seed alone.
 */
export class Random {
  private s = new Uint32Array(4);

  constructor(seed: number, stream = 0) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) this.s[i] = splitmix32((x = (x + 0x9e3779b9) >>> 0));
    let y = stream >>> 0; // the stream changes the last two words only: distinct (seed, stream) give distinct states
    for (let i = 2; stream !== 0 && i < 4; i++) this.s[i] ^= splitmix32((y = (y + 0x9e3779b9) >>> 0));
    if (this.s.every((v) => v === 0)) this.s[0] = 1;
  }

  nextUint32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  uniform(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Standard normal by Box-Muller. */
  gaussian(): number {
    let u = 0;
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  gaussians(count: number): Float32Array {
    const out = new Float32Array(count);
    for (let i = 0; i < count; i++) out[i] = this.gaussian();
    return out;
  }
}

/** splitmix32's output function of one state word. */
function splitmix32(x: number): number {
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
