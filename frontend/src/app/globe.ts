/**
 * The globe panel's canvas: a shaded wireframe of S^2 (parallels and meridians every 30°) in orthographic
 * projection. Dragging turns it and picks the front point; hovering (or a tap) picks the point under the
 * pointer; arrow keys turn it by 10°. Each pick calls `onPick` with a unit vector (the latent to decode).
 */

import { dragged, fromLatLon, frontPoint, initialRotation, pointAt, screenOf, type Rotation, type Vec3 } from "../globe";

const GRID_DEGREES = 30;
const SEGMENT_DEGREES = 5; // polyline resolution of the grid lines
const KEY_TURN_DEGREES = 10;
const TAP_PIXELS = 4; // a press that moves less than this is a tap, not a drag

export type PickKind = "cursor" | "front";

/** The grid lines as polylines of world points: parallels (-60..60) then meridians (-180..150). */
function graticule(): { points: Vec3[]; major: boolean }[] {
  const lines: { points: Vec3[]; major: boolean }[] = [];
  for (let lat = -90 + GRID_DEGREES; lat < 90; lat += GRID_DEGREES) {
    const points: Vec3[] = [];
    for (let lon = -180; lon <= 180; lon += SEGMENT_DEGREES) points.push(fromLatLon(lat, lon));
    lines.push({ points, major: lat === 0 });
  }
  for (let lon = -180; lon < 180; lon += GRID_DEGREES) {
    const points: Vec3[] = [];
    for (let lat = -90; lat <= 90; lat += SEGMENT_DEGREES) points.push(fromLatLon(lat, lon));
    lines.push({ points, major: lon === 0 });
  }
  return lines;
}

export class Globe {
  rotation: Rotation = initialRotation();
  private marker: Vec3 | null = null;
  private press: { x: number; y: number; moved: boolean } | null = null;
  private readonly lines = graticule();

  constructor(
    private canvas: HTMLCanvasElement,
    private onPick: (point: Vec3, kind: PickKind) => void,
  ) {
    canvas.onpointerdown = (event) => this.pointerDown(event);
    canvas.onpointermove = (event) => this.pointerMove(event);
    canvas.onpointerup = (event) => this.pointerUp(event);
    canvas.onpointercancel = () => (this.press = null);
    canvas.onkeydown = (event) => this.keyDown(event);
  }

  /** Back to the starting view, picking its front point. */
  reset(): void {
    this.rotation = initialRotation();
    this.pick(frontPoint(this.rotation), "front");
  }

  private get radius(): number {
    return this.canvas.width * 0.46;
  }

  /** Canvas pixels of a pointer event (the canvas is scaled by CSS). */
  private position(event: PointerEvent): { x: number; y: number } {
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) / rect.width) * this.canvas.width,
      y: ((event.clientY - rect.top) / rect.height) * this.canvas.height,
    };
  }

  private pointUnder(event: PointerEvent): Vec3 | null {
    const { x, y } = this.position(event);
    return pointAt(this.rotation, (x - this.canvas.width / 2) / this.radius, (y - this.canvas.height / 2) / this.radius);
  }

  private pick(point: Vec3, kind: PickKind): void {
    this.marker = point;
    this.draw();
    this.onPick(point, kind);
  }

  private pointerDown(event: PointerEvent): void {
    this.canvas.setPointerCapture(event.pointerId);
    this.press = { ...this.position(event), moved: false };
  }

  private pointerMove(event: PointerEvent): void {
    if (this.press && event.buttons) {
      const { x, y } = this.position(event);
      const dx = x - this.press.x;
      const dy = y - this.press.y;
      if (!this.press.moved && Math.hypot(dx, dy) < TAP_PIXELS) return;
      this.press = { x, y, moved: true };
      this.rotation = dragged(this.rotation, dx, dy, this.radius);
      this.pick(frontPoint(this.rotation), "front"); // the point under the pointer travels with it: show the front
    } else if (event.pointerType === "mouse") {
      const point = this.pointUnder(event);
      if (point) this.pick(point, "cursor");
    }
  }

  private pointerUp(event: PointerEvent): void {
    const tap = this.press && !this.press.moved;
    this.press = null;
    const point = tap ? this.pointUnder(event) : null;
    if (point) this.pick(point, "cursor");
  }

  private keyDown(event: KeyboardEvent): void {
    const step = (KEY_TURN_DEGREES / 180) * Math.PI * this.radius; // pixels of drag that turn by one step
    const turns: Record<string, [number, number]> = {
      ArrowLeft: [-step, 0],
      ArrowRight: [step, 0],
      ArrowUp: [0, -step],
      ArrowDown: [0, step],
    };
    const turn = turns[event.key];
    if (!turn) return;
    event.preventDefault();
    this.rotation = dragged(this.rotation, turn[0], turn[1], this.radius);
    this.pick(frontPoint(this.rotation), "front");
  }

  /** Shaded disk, back grid lines faint, front ones solid, the picked point and the front cross. */
  draw(): void {
    const context = this.canvas.getContext("2d")!;
    const { width, height } = this.canvas;
    const style = getComputedStyle(this.canvas);
    const accent = style.getPropertyValue("--accent").trim() || "#2f6fde";
    const ink = style.getPropertyValue("--text").trim() || "#1d1d1f";
    const [cx, cy, r] = [width / 2, height / 2, this.radius];
    context.clearRect(0, 0, width, height);
    const shade = context.createRadialGradient(cx - 0.35 * r, cy - 0.4 * r, 0.1 * r, cx, cy, r);
    shade.addColorStop(0, "rgba(255, 255, 255, 0.55)");
    shade.addColorStop(1, "rgba(120, 140, 170, 0.35)");
    context.fillStyle = shade;
    context.beginPath();
    context.arc(cx, cy, r, 0, 2 * Math.PI);
    context.fill();
    for (const side of [false, true]) this.drawLines(context, side, side ? ink : accent);
    context.strokeStyle = ink;
    context.globalAlpha = 0.6;
    context.lineWidth = 1.5;
    context.beginPath();
    context.arc(cx, cy, r, 0, 2 * Math.PI);
    context.stroke();
    this.drawMarks(context, accent, ink);
    context.globalAlpha = 1;
  }

  /** Segments of the grid on one side of the globe (front: both ends face the viewer). */
  private drawLines(context: CanvasRenderingContext2D, front: boolean, color: string): void {
    const [cx, cy, r] = [this.canvas.width / 2, this.canvas.height / 2, this.radius];
    context.strokeStyle = color;
    for (const line of this.lines) {
      context.globalAlpha = front ? (line.major ? 0.8 : 0.4) : 0.12;
      context.lineWidth = line.major ? 2 : 1;
      context.beginPath();
      let previous: ReturnType<typeof screenOf> | null = null;
      for (const point of line.points) {
        const at = screenOf(this.rotation, point);
        if (previous && previous.front === front && at.front === front) {
          context.moveTo(cx + previous.u * r, cy + previous.v * r);
          context.lineTo(cx + at.u * r, cy + at.v * r);
        }
        previous = at;
      }
      context.stroke();
    }
  }

  private drawMarks(context: CanvasRenderingContext2D, accent: string, ink: string): void {
    const [cx, cy, r] = [this.canvas.width / 2, this.canvas.height / 2, this.radius];
    context.globalAlpha = 0.7;
    context.strokeStyle = ink;
    context.lineWidth = 1.5;
    context.beginPath(); // the front point: what a drag decodes
    context.moveTo(cx - 8, cy);
    context.lineTo(cx + 8, cy);
    context.moveTo(cx, cy - 8);
    context.lineTo(cx, cy + 8);
    context.stroke();
    const north = screenOf(this.rotation, [0, 0, 1]);
    if (north.front) {
      context.fillStyle = ink;
      context.font = `${Math.round(r * 0.09)}px system-ui, sans-serif`;
      context.fillText("N", cx + north.u * r + 4, cy + north.v * r - 4);
    }
    const mark = this.marker && screenOf(this.rotation, this.marker);
    if (mark?.front) {
      context.globalAlpha = 1;
      context.fillStyle = accent;
      context.strokeStyle = "white";
      context.lineWidth = 2;
      context.beginPath();
      context.arc(cx + mark.u * r, cy + mark.v * r, Math.max(5, r * 0.035), 0, 2 * Math.PI);
      context.fill();
      context.stroke();
    }
  }
}
