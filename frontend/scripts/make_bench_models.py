"""Randomly initialised Sphere Encoders of the registry sizes for `npm run bench`: every web mode plus the ONNX
files onnxruntime-web runs (trained weights time the same as random ones).

    python frontend/scripts/make_bench_models.py [--models vit_tiny vit_small convnet_small] [--image_size 32]

Writes frontend/test-results/bench-models/<model>_<size>px/model_<mode>.safetensors, model_decoder.onnx,
model_encoder.onnx and index.json (git-ignored).

`--serve` is the PyTorch side of `npm run bench`: a persistent process that reads one request per line on stdin,
`<model folder> <decode|encode> <batch> <threads>` (threads 0 = torch's default), times one call of the model
built from the folder's model_fp32.safetensors and answers `<milliseconds>` (or `error <message>`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from engine.onnx_export import export_onnx  # noqa: E402
from engine.webformat import MODES, export_model, load_model_from_web_weights, web_file_name, write_index  # noqa: E402
from models import build_model  # noqa: E402
from models.layers import sphere_project  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_tiny", "vit_small", "convnet_tiny", "convnet_small"])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--out", default=str(REPO / "frontend" / "test-results" / "bench-models"))
    parser.add_argument("--serve", action="store_true", help="answer timing requests on stdin (used by bench.mjs)")
    return parser.parse_args(argv)


def export_bench_model(name: str, image_size: int, out: Path) -> str:
    """Export one random model in every mode and as ONNX; a one-line summary."""
    torch.manual_seed(0)
    model = build_model(name, image_size=image_size).eval()
    with torch.no_grad():
        for param in model.parameters():  # zero-initialised heads would make every image flat
            param.normal_(0, 0.02)
    folder = out / f"{name}_{image_size}px"
    sizes = {mode: export_model(model, folder / web_file_name(mode), mode)["bytes"] for mode in MODES}
    onnx = export_onnx(model, folder) or {}
    sizes.update({f"onnx {part}": entry["bytes"] for part, entry in onnx.items()})
    params = sum(p.numel() for p in model.parameters())
    return f"{folder.name}: {params / 1e6:.2f}M params; " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())


# ---------------------------------------------------------------------------------------------------------
# --serve: PyTorch CPU latency, one timed call per request (bench.mjs interleaves and takes medians)


class TorchTimer:
    """Models loaded once per folder; inputs drawn once per (folder, batch)."""

    def __init__(self):
        self.models: dict[str, torch.nn.Module] = {}
        self.default_threads = torch.get_num_threads()

    def model(self, folder: str) -> torch.nn.Module:
        if folder not in self.models:
            self.models[folder] = load_model_from_web_weights(Path(folder) / web_file_name("fp32")).eval()
        return self.models[folder]

    @torch.no_grad()
    def time_ms(self, folder: str, part: str, batch: int, threads: int) -> float:
        model = self.model(folder)
        torch.set_num_threads(threads or self.default_threads)
        if part == "decode":
            generator = torch.Generator().manual_seed(batch)
            args = (sphere_project(torch.randn(batch, *model.latent_shape, generator=generator)),)
            call = model.decode
        else:
            size = model.config.image_size
            args = (torch.rand(batch, model.config.in_channels, size, size).mul(2).sub(1),)
            call = model.encode
        start = time.perf_counter()
        call(*args)
        return 1000 * (time.perf_counter() - start)


def serve() -> None:
    timer = TorchTimer()
    print(f"ready {timer.default_threads}", flush=True)
    for line in sys.stdin:
        try:
            folder, part, batch, threads = line.split()
            answer = f"{timer.time_ms(folder, part, int(batch), int(threads)):.3f}"
        except Exception as error:  # one bad request must not end the benchmark
            answer = f"error {type(error).__name__}: {error}".replace("\n", " ")
        print(answer, flush=True)


def main(args: argparse.Namespace) -> None:
    if args.serve:
        serve()
        return
    out = Path(args.out)
    for name in args.models:
        print(export_bench_model(name, args.image_size, out), flush=True)
    write_index(out)


if __name__ == "__main__":
    main(parse_args())
