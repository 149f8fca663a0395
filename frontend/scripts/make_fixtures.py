"""Reference fixtures for the frontend tests, computed with the PyTorch model (CPU).

Writes frontend/test-fixtures/ (git-ignored):
  <model>/model_<mode>.safetensors   tiny randomized Sphere Encoders, Power-Spherical VAEs and VQ-VAE
                                     tokenizers, latent-diffusion models and somar codebooks exported with
                                     engine.webformat
  <model>/reference_<mode>.safetensors  inputs and PyTorch outputs of the DEQUANTIZED model of that file
                                         (encode, decode, sample, guided sample with cfg_mode "combo",
                                         reconstruct; vqvae: tokens, decode of tokens, reconstruction, token
                                         map; somar: latent maps, patches, tokens, decode of tokens,
                                         reconstruction, atlas); none for the 1-D psvae, which the page does not show
  <model>/dequant_<mode>.safetensors    the float32 state dict read back by engine.webformat
  <model>/model_{decoder,encoder,unet}.onnx  the models in ONNX_MODELS exported with engine.onnx_export (the
                                         page's CPU path; the decoder alone for a decoder-only file), with
                                         model_tensors.bin for the families that read stored tensors
  kernels.safetensors + kernels.json    single-op cases (GEMM in every encoding, convs, norms, attention...)
  diffusion.safetensors + diffusion.json  whole DDIM (η > 0) and DDPM runs of models/diffusion.py with a
                                         recording denoiser: each step's x, network output and step noise
  index.json                             the demo's model list for these files (engine.webformat.write_index)
  manifest.json                          what was written, with configs (written last: marks completion)

Usage: python frontend/scripts/make_fixtures.py [--out DIR] [--force] [--workers 2]. Skips the work when the inputs
(this script, models/, engine/webformat.py and the family table) have not changed since the last run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from engine.onnx_export import export_onnx, remove_onnx  # noqa: E402
from engine.webformat import (  # noqa: E402
    build_header,
    dequantize_groups,
    export_model,
    load_model_from_web_weights,
    quantize_groups,
    read_raw,
    read_web_weights,
    write_atomic,
    write_index,
)
from models import build_model  # noqa: E402
from models.diffusion import Schedule, ddim_sample, ddim_timesteps, ddpm_sample, guided_denoiser  # noqa: E402
from models.layers import apply_rope, rope_angles_2d, sincos_pos_embed_2d, sphere_project  # noqa: E402
from models.ldm import timestep_embedding  # noqa: E402

MODES = ("fp32", "fp16", "q8", "q4")
BATCH = 2
# name -> (registry name, overrides, modes). Tiny 16 px models: SwiftShader runs WebGPU on the CPU.
LEGACY = {"vit_legacy16": "decoder_mixer"}  # model -> config key its files' headers lack, as older exports did
MODELS = {
    "vit_tiny16": ("vit_tiny", dict(image_size=16), MODES),
    "convnet_tiny16": ("convnet_tiny", dict(image_size=16), MODES),
    # adaLN-Zero + linear unpatchify head + patch 4 + no QK norm
    "vit_cond16": (
        "vit_tiny",
        dict(image_size=16, num_classes=10, pixel_head="linear", patch_size=4, qk_norm=False),
        ("fp32", "q4"),
    ),
    # a file exported before decoder_mixer existed: no key in its config, the decoder mixes the latent channels
    "vit_legacy16": ("vit_tiny", dict(image_size=16, decoder_mixer="latent"), ("fp32", "q8")),
    # adaLN-Zero in conv blocks + BatchNorm folded at export + two levels
    "convnet_cond_bn16": (
        "convnet_tiny",
        dict(image_size=16, num_classes=10, norm="batch", channel_mults=(1, 2), depth=2),
        ("fp32", "q8"),
    ),
}
# Power-Spherical VAEs (models/psvae.py), same layout. Tiny sizes: width 16, depth 1.
PSVAE = {
    # the globe: z_dim 3, conv encoder and decoder, GroupNorm. Two levels (an 8x8 map): with four (a 2x2 map,
    # GroupNorm over 8 values) a random z_dim-3 model is so ill-conditioned that PyTorch's own float32 3-step
    # sample differs from float64 by up to 1.3e-3, more than the chained tolerance; two levels: <= 4e-5
    "psvae_globe16": ("psvae_tiny", dict(image_size=16, z_dim=3, channel_mults=(1, 2)), MODES),
    # the upsampling decoder at 32 px, one channel, class-conditional (a per-channel class offset of its seed
    # map; adaLN in the conv encoder), BatchNorm folded into the encoder's convs and to affines in the decoder
    "psvae_up32": (
        "psvae_tiny",
        dict(
            image_size=32,
            in_channels=1,
            z_dim=8,
            decoder="upsample",
            norm="batch",
            channel_mults=(1, 2, 2),
            num_classes=10,
        ),
        MODES,
    ),
    # ViT encoder (mean token) + conv decoder, class-conditional: adaLN widths differ (vit_width 32, 4 * width 64)
    "psvae_vit16": (
        "psvae_tiny",
        dict(image_size=16, z_dim=8, backbone="vit", vit_width=32, heads=2, num_classes=10),
        ("fp32", "q8"),
    ),
    # a file with the decoder alone (export_weights.py writes both networks; the page must cope with one):
    # the upsampling decoder at z_dim 8; the page decodes and samples in one step, and says why it cannot encode
    "psvae_decoder16": (
        "psvae_tiny",
        dict(image_size=16, z_dim=8, decoder="upsample", channel_mults=(1, 2)),
        ("fp32", "q4"),
    ),
    # 1-D signals: exported and listed in index.json, but the page says it does not show them
    "psvae_signal32": ("psvae_tiny", dict(backbone="conv1d", signal_length=32, in_channels=2, z_dim=3), ("fp32",)),
}
MODELS.update(PSVAE)
# VQ-VAE tokenizers (models/vqvae.py): 16 px, width 16, two levels (an 8x8 token grid), 64 codes
VQVAE = {
    # cosine nearest code (l2_norm), every mode
    "vqvae_tiny16": ("vqvae_tiny", dict(image_size=16, width=16, channel_mults=(1, 2), codebook_size=64), MODES),
    # Euclidean nearest code, no attention, SVQVAE's [0, 1] input range
    "vqvae_l2off16": (
        "vqvae_tiny",
        dict(
            image_size=16,
            width=16,
            channel_mults=(1, 2),
            codebook_size=64,
            l2_norm=False,
            attn_at_lowest=False,
            input_range="zero_one",
        ),
        ("fp32",),
    ),
}
MODELS.update(VQVAE)
# latent diffusion (models/ldm.py): a 16 px KL autoencoder (f2, 4 latent channels), a stage-2 UNet on its 8x8
# latents (width 16, attention with 2 heads at the 4x4 level), the same class-conditional (10 classes, DDPM and
# η 0.5 as the file's sampler defaults) and a pixel UNet (v-prediction, cosine schedule)
LDM_AE = dict(image_size=16, ae_width=16, ae_mults=(1, 2), ae_res_blocks=1, latent_channels=4, ae_groups=8)
LDM_UNET = dict(unet_width=16, unet_mults=(1, 2), unet_res_blocks=1, unet_attn_levels=(1,), unet_groups=8, unet_heads=2)
LDM = {
    "ldm_ae16": ("ldm_ae_tiny", LDM_AE, MODES),
    "ldm_tiny16": ("ldm_tiny", dict(**LDM_AE, **LDM_UNET, latent_scale=0.8), MODES),
    "ldm_cond16": (
        "ldm_tiny",
        dict(**LDM_AE, **LDM_UNET, latent_scale=0.8, num_classes=10, sampler="ddpm", eta=0.5),
        ("fp32", "q8"),
    ),
    # two blocks per level (three on the way up), attention at 8x8: the skip bookkeeping of the bigger UNets
    "ddpm16": (
        "ddpm_tiny",
        dict(
            image_size=16,
            **{**LDM_UNET, "unet_res_blocks": 2},
            prediction="v",
            beta_schedule="cosine",
        ),
        ("fp32", "q4"),
    ),
}
MODELS.update(LDM)
# somar codebooks (models/somar.py): a 16 px somar autoencoder (f2: an 8x8x4 tanh-bounded map) with a coarse level
# (the whole map, 4 units) and a fine one (2x2 patches: 16 tokens of 16 values, 16 units on a 4x4 SOM), fitted on demo
# images (fit_somar); the same levels over an ldm autoencoder's posterior mean and over a vqvae's latent; a prior over
# the first codebook (the page paints its codebook's tokens; its transformer does not run in the page)
SOMAR_AE = dict(image_size=16, ae_width=16, ae_mults=(1, 2), ae_res_blocks=1, latent_channels=4, ae_groups=8)
SOMAR_LEVELS = dict(level_patches=(0, 2), level_sizes=(4, 16))
VQVAE_CONFIG = dict(image_size=16, width=16, channel_mults=[1, 2], codebook_size=64)  # vqvae_tiny16's settings
SOMAR = {
    "somar_cb16": ("somar_codebook_tiny", dict(**SOMAR_AE, **SOMAR_LEVELS), ("fp32", "q8")),
    "somar_ldm16": (
        "somar_codebook_tiny",
        dict(**SOMAR_AE, **SOMAR_LEVELS, autoencoder_family="ldm", autoencoder={"kind": "autoencoder", **LDM_AE}),
        ("fp32",),
    ),
    # over a cosine vqvae's pre-quantisation latent (8x8x8, on the unit sphere per position): 16 tokens of 32 values
    "somar_vq16": (
        "somar_codebook_tiny",
        dict(**SOMAR_AE, **SOMAR_LEVELS, autoencoder_family="vqvae", autoencoder=VQVAE_CONFIG),
        ("fp32",),
    ),
    "somar_prior16": (
        "somar_prior_tiny",
        dict(**SOMAR_AE, **SOMAR_LEVELS, prior_width=16, prior_depth=1, prior_heads=2),
        ("q4",),
    ),
}
MODELS.update(SOMAR)
SOMAR_FIT_STEPS = 3  # batch-SOM steps on demo images: the first initialises the codes on the maps' PCA plane
LDM_TIME = 600  # the timestep of the one-pass UNet references
LDM_STEPS = 3  # DDIM steps of the whole-loop references
LDM_ETA = 0.5  # η of the stochastic DDIM references
# name -> (sampler, η, prediction, beta schedule, x̂_0 clip, steps) of the unit tests' recorded sampler runs
SAMPLER_CASES = {
    "ddim_eta_half_eps_linear": ("ddim", 0.5, "eps", "linear", None, 4),
    "ddim_eta_one_v_cosine_clip": ("ddim", 1.0, "v", "cosine", 1.0, 4),
    "ddpm_eps_linear_clip": ("ddpm", 0.0, "eps", "linear", 1.0, 4),
    "ddpm_v_cosine": ("ddpm", 0.0, "v", "cosine", None, 5),
}
SAMPLER_SHAPE = (2, 3, 4, 4)  # (n, C, h, w) of the recorded runs
SAMPLER_SCHEDULE = dict(timesteps=1000, beta_start=1e-4, beta_end=0.02)  # DDPM's linear range (cosine ignores it)
DECODER_ONLY = {"psvae_decoder16"}  # models whose files keep only the decoder.* tensors
# models that also get ONNX files (the page's CPU path): unconditional and conditional, both backbones, psvae; a
# tokenizer, a class-conditional latent-diffusion model (UNet, autoencoder, latent_scale), a pixel one, a somar codebook
ONNX_MODELS = {"vit_tiny16", "convnet_tiny16", "vit_cond16", "convnet_cond_bn16", "psvae_vit16", "psvae_decoder16"}
ONNX_MODELS |= {"vqvae_tiny16", "ldm_cond16", "ddpm16", "somar_cb16"}
GUIDANCE = 2.0
RECON_ANGLE = 30.0  # degrees of re-noising between reconstruction rounds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "frontend" / "test-fixtures"))
    parser.add_argument("--force", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--workers", type=int, default=2, help="processes building the model fixtures (1: this one)")
    return parser.parse_args(argv)


def inputs_digest() -> str:
    digest = hashlib.sha256()
    engine = [REPO / "engine" / "webformat.py", REPO / "engine" / "onnx_export.py"]
    engine += sorted((REPO / "engine").glob("famil*.py"))
    engine += sorted((REPO / "engine").glob("web_*.py"))
    for path in [Path(__file__), *engine, *sorted((REPO / "models").glob("*.py"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random non-trivial weights: zero-initialised heads, mixer scales and adaLN would hide most ops."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim >= 2:
                param.copy_(noise / math.sqrt(param[0].numel()))
            elif name.endswith("_scale"):
                param.copy_(0.5 * noise)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * noise)
            else:
                param.copy_(0.1 * noise)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=gen))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=gen))


def demo_images(n: int, size: int, channels: int = 3) -> torch.Tensor:
    """n real CIFAR-10 images from assets/, area-resized to size, in [-1, 1], (n, channels, size, size);
    one channel = the mean of RGB."""
    images = np.load(REPO / "assets" / "cifar10_demo.npz")["images"][:n]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    x = F.interpolate(x, size=(size, size), mode="area") if size != x.shape[-1] else x
    return x.mean(1, keepdim=True) if channels == 1 else x


@torch.no_grad()
def references(model, images: torch.Tensor, labels: torch.Tensor | None, seed: int) -> dict[str, torch.Tensor]:
    """Inputs and outputs of encode, decode, sample (3 steps), guided sample and reconstruct (2 steps)."""
    n, shape = images.shape[0], model.latent_shape
    gen = torch.Generator().manual_seed(seed)
    latents = sphere_project(torch.randn((n, *shape), generator=gen))
    out = {"images": images, "latents": latents}
    out["encode"] = model.encode(images, labels)
    out["decode"] = model.decode(latents, labels)
    # sample() draws e then e' from its generator: draw them the same way to hand them to the browser
    draw = torch.Generator().manual_seed(seed + 1)
    out["noise"] = torch.randn((n, *shape), generator=draw)
    out["renoise"] = torch.randn((n, *shape), generator=draw)
    out["sample"] = model.sample(n, steps=3, generator=torch.Generator().manual_seed(seed + 1), labels=labels)
    if labels is not None:
        out["sample_guided"] = model.sample(
            n, steps=2, generator=torch.Generator().manual_seed(seed + 1), labels=labels, cfg=GUIDANCE, cfg_mode="combo"
        )
        out["labels"] = labels.float()
    draw = torch.Generator().manual_seed(seed + 2)
    out["recon_renoise"] = torch.randn((n, *shape), generator=draw)
    out["reconstruct"] = model.reconstruct(
        images, steps=2, generator=torch.Generator().manual_seed(seed + 2), labels=labels, noise_angle=RECON_ANGLE
    )
    return {k: v.float().contiguous() for k, v in out.items()}


@torch.no_grad()
def psvae_references(model, images: torch.Tensor, labels: torch.Tensor | None, seed: int) -> dict[str, torch.Tensor]:
    """As references() for a psvae: latents on the unit sphere, sample() from the uniform prior (its Gaussian
    handed to the browser as `noise`), cycles without noise."""
    n, d = images.shape[0], model.config.z_dim
    gen = torch.Generator().manual_seed(seed)
    latents = F.normalize(torch.randn((n, d), generator=gen), dim=-1)
    out = {"images": images, "latents": latents}
    out["encode"] = model.encode(images, labels)[0]  # mu
    out["decode"] = model.decode(latents, labels)
    # the prior normalises one Gaussian (n, d) drawn from the generator: draw it the same way
    out["noise"] = torch.randn((n, d), generator=torch.Generator().manual_seed(seed + 1))
    out["sample"] = model.sample(n, steps=3, generator=torch.Generator().manual_seed(seed + 1), labels=labels)
    out["sample_1_step"] = model.sample(n, steps=1, generator=torch.Generator().manual_seed(seed + 1), labels=labels)
    if labels is not None:
        out["sample_guided"] = model.sample(
            n, steps=2, generator=torch.Generator().manual_seed(seed + 1), labels=labels, cfg=GUIDANCE, cfg_mode="combo"
        )
        out["labels"] = labels.float()
    out["reconstruct"] = model.reconstruct(images, steps=2, labels=labels)
    return {k: v.float().contiguous() for k, v in out.items()}


@torch.no_grad()
def token_margins(model, images: torch.Tensor) -> torch.Tensor:
    """(B, h, w) gap between the second-nearest and the nearest code's squared distance: where it is ~0, float
    rounding may pick either code (the browser's parity test allows a different index only there)."""
    z = model.encode_latent(images)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    flat = F.normalize(flat, dim=1) if model.config.l2_norm else flat
    distances = torch.cdist(flat.double(), model.quantizer.codebook().double()).pow(2)
    best = distances.topk(2, dim=1, largest=False).values
    return (best[:, 1] - best[:, 0]).view(z.shape[0], z.shape[2], z.shape[3])


@torch.no_grad()
def vqvae_references(model, images: torch.Tensor, labels: torch.Tensor | None, seed: int) -> dict[str, torch.Tensor]:
    """Tokens of the images (with their nearest-code margins), images of random tokens (decode_indices), the
    one-round reconstruction and the token maps of the tokens."""
    gen = torch.Generator().manual_seed(seed)
    tokens = model.encode(images)
    random_tokens = torch.randint(0, model.config.codebook_size, tokens.shape, generator=gen)
    out = {"images": images, "tokens": tokens, "margins": token_margins(model, images)}
    out["random_tokens"] = random_tokens
    out["decode"] = model.decode_indices(random_tokens)
    out["reconstruct"] = model.reconstruct(images)
    out["token_map"] = model.token_map(tokens)
    return {k: v.float().contiguous() for k, v in out.items()}


@torch.no_grad()
def ldm_references(model, images: torch.Tensor, labels: torch.Tensor | None, seed: int) -> dict[str, torch.Tensor]:
    """Autoencoder: the posterior mean, decode of random latents (clamped), reconstruction. Stage 2 and pixel: one UNet
    pass at LDM_TIME with its time features, one DDIM step (T -> the next time of a 10-step run), a LDM_STEPS-step
    DDIM run from a given x_T with the decoded x̂_0 of each step; stage 2 also the autoencoder's round trip, pixel a
    DDPM run; a conditional UNet its passes with labels and guidance, its stochastic runs (conditional_references)."""
    gen = torch.Generator().manual_seed(seed)
    if model.config.kind == "autoencoder":
        latents = torch.randn((images.shape[0], model.config.latent_channels, 8, 8), generator=gen)
        out = {"images": images, "encode": model.encode(images)[0], "latents": latents}
        out |= {"decode": model.decode(latents).clamp(-1, 1), "reconstruct": model.reconstruct(images)}
        return {k: v.float().contiguous() for k, v in out.items()}
    x = torch.randn((images.shape[0], *model.diffusion_shape), generator=gen)
    t = torch.full((len(x),), LDM_TIME)
    out = {"x": x, "t": t.float(), "time_features": timestep_embedding(t, model.config.unet_width), "unet": model(x, t)}
    if labels is not None:
        out |= conditional_references(model, x, t, labels, seed)
    first, second = ddim_timesteps(model.config.timesteps, 10)[:2]
    t = torch.full((len(x),), first)
    x0, eps = model.schedule.predict_x0_eps(x, t, model(x, t), model.config.prediction)
    if model.config.kind == "pixel":
        x0 = x0.clamp(-1, 1)
        eps = (x - model.schedule.alphas_bar[first].sqrt() * x0) / (1 - model.schedule.alphas_bar[first]).sqrt()
    prev = model.schedule.alphas_bar[second]
    out["ddim_step"] = prev.sqrt() * x0 + (1 - prev).sqrt() * eps
    clip = 1.0 if model.config.kind == "pixel" else None
    predictions = ddim_sample(model.unet, model.schedule, x, LDM_STEPS, prediction=model.config.prediction,
                              return_all=True, clip_x0=clip)  # fmt: skip
    out["sample_steps"] = torch.stack([model._to_images(p) for p in predictions])
    if model.config.kind == "latent":
        out |= {"images": images, "reconstruct": model.reconstruct(images)}
    if model.config.kind == "pixel":  # DDPM with x̂_0 clamped and ε̂ recomputed
        out |= stochastic_sample(model, None, 1.0, seed, "ddpm", "sample_ddpm")
    return {k: v.float().contiguous() for k, v in out.items()}


@torch.no_grad()
def conditional_references(model, x, t, labels, seed: int) -> dict[str, torch.Tensor]:
    """A class-conditional UNet: one pass with labels (a class and the null class), one guided pass (w = GUIDANCE),
    a guided DDPM run (the file's default sampler) and a DDIM η = LDM_ETA run with the labels."""
    out = {"labels": labels.float(), "unet": model(x, t, labels)}
    out["unet_guided"] = guided_denoiser(model.unet, labels, model.config.num_classes, GUIDANCE)(x, t)
    out |= stochastic_sample(model, labels, GUIDANCE, seed, "ddpm", "sample_ddpm")
    out |= stochastic_sample(model, labels, 1.0, seed, "ddim", "sample_ddim_eta")
    return out


@torch.no_grad()
def stochastic_sample(model, labels, cfg: float, seed: int, sampler: str, name: str) -> dict[str, torch.Tensor]:
    """model.sample(LDM_STEPS) and what its generator drew, replayed for the browser: x_T, then one (n, C, h, w) draw
    per step with σ > 0 (all but the last: DDPM and DDIM η > 0 add no noise on the step to t = 0)."""
    n = len(labels) if labels is not None else BATCH
    generator = torch.Generator().manual_seed(seed + 3)
    kwargs = dict(labels=labels, cfg=cfg, sampler=sampler, eta=LDM_ETA)
    images = model.sample(n, steps=LDM_STEPS, generator=torch.Generator().manual_seed(seed + 3), **kwargs)
    x_T = torch.randn((n, *model.diffusion_shape), generator=generator)
    noise = torch.stack([torch.randn((n, *model.diffusion_shape), generator=generator) for _ in range(LDM_STEPS - 1)])
    return {name: images, f"{name}_x_T": x_T, f"{name}_noise": noise}


@torch.no_grad()
def somar_references(model, images: torch.Tensor, labels: torch.Tensor | None, seed: int) -> dict[str, torch.Tensor]:
    """The finest level of a somar codebook (or a prior's): the latent maps of the images and their patches (the
    page's patchify), tokens with their nearest-unit margins, images of random tokens (decode_tokens), the
    reconstruction through the codebook and the atlas (codebook_atlas)."""
    codebook = model.codebook if model.config.kind == "prior" else model
    level = len(codebook.levels) - 1
    latent = codebook.autoencoder.encode(images)
    patches = codebook.level_vectors(latent)[level]  # (B, N, D)
    tokens = codebook.tokenize(images)[level]
    distances = torch.cdist(patches.flatten(0, 1).double(), codebook.levels[level].codes.double()).pow(2)
    best = distances.topk(2, dim=1, largest=False).values
    gen = torch.Generator().manual_seed(seed)
    random_tokens = torch.randint(0, codebook.vocab_sizes[level], tokens.shape, generator=gen)
    out = {"images": images, "latent": latent, "patches": patches, "tokens": tokens, "random_tokens": random_tokens}
    out |= {"margins": (best[:, 1] - best[:, 0]).view(tokens.shape), "decode": codebook.decode_tokens(random_tokens)}
    out |= {"reconstruct": codebook.reconstruct(images), "atlas": codebook.codebook_atlas(level)}
    return {k: v.float().contiguous() for k, v in out.items()}


@torch.no_grad()
def fit_somar(model) -> None:
    """A few batch-SOM steps of a somar codebook (or a prior's) on demo images, so that its units are real maps."""
    if getattr(model.config, "family", None) != "somar" or model.config.kind == "autoencoder":
        return
    codebook = model.codebook if model.config.kind == "prior" else model
    images = demo_images(16, model.config.image_size, model.config.in_channels)
    for _ in range(SOMAR_FIT_STEPS):
        codebook.fit_step(images)


def model_references(model, labels: torch.Tensor | None, seed: int) -> dict[str, torch.Tensor] | None:
    """The references of a model's family (None for 1-D signal models: the page does not show them)."""
    if getattr(model, "is_signal", False):
        return None
    images = demo_images(BATCH, model.config.image_size, model.config.in_channels)
    make = {"psvae": psvae_references, "vqvae": vqvae_references, "ldm": ldm_references, "somar": somar_references}
    return make.get(model.config.family, references)(model, images, labels, seed)


def drop_config_key(path: Path, key: str) -> None:
    """Rewrite a web file's header without `key` in its config (the data section is kept byte for byte)."""
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    config = json.loads(header["__metadata__"]["config"])
    del config[key]
    header["__metadata__"]["config"] = json.dumps(config)
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-(8 + len(text)) % 8)  # the data section starts at a multiple of 8 (docs/web_format.md §1)
    path.write_bytes(len(text).to_bytes(8, "little") + text.encode() + raw[8 + header_len :])


TORCH_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int8: "I8", torch.uint8: "U8"}


def keep_decoder_only(path: Path) -> None:
    """Rewrite a web file with only its decoder.* tensors (and their quantization entries), re-hashed."""
    metadata, tensors = read_raw(path)
    quantization = {k: v for k, v in json.loads(metadata["quantization"]).items() if k.startswith("decoder.")}
    packed = {name for info in json.loads(metadata["quantization"]).values() for name in (info["data"], info["scales"])}
    kept = {info[key] for info in quantization.values() for key in ("data", "scales")}
    entries = [
        (name, TORCH_DTYPES[tensor.dtype], tensor)
        for name, tensor in tensors.items()
        if (name in kept) or (name not in packed and name.startswith("decoder."))
    ]
    metadata = {k: v for k, v in metadata.items() if k != "data_sha256"} | {"quantization": json.dumps(quantization)}
    write_atomic(path, *build_header(entries, metadata))


def make_model_fixtures(name: str, out_dir: Path, seed: int) -> dict:
    torch.set_num_threads(1)  # tiny ops: threading only adds overhead (x100 on small CI machines)
    torch.manual_seed(seed)  # the same files whichever worker builds them, in whatever order
    registry_name, overrides, modes = MODELS[name]
    model = build_model(registry_name, **overrides)
    randomize(model, seed)
    fit_somar(model)
    model.eval()
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    labels = torch.tensor([3, model.config.num_classes]) if model.config.num_classes else None
    entry = {"config": model.config.to_dict(), "decoder_only": name in DECODER_ONLY, "modes": {}}
    for mode in modes:
        path = folder / f"model_{mode}.safetensors"
        export_model(model, path, mode)
        if name in LEGACY:
            drop_config_key(path, LEGACY[name])
        reference_model = load_model_from_web_weights(path)  # dequantized: the browser must match it tightly
        reference = model_references(reference_model, labels, seed)
        if reference is not None:
            save_file(reference, str(folder / f"reference_{mode}.safetensors"))
        if name in DECODER_ONLY:
            keep_decoder_only(path)  # after the references: PyTorch cannot load a model without its encoder
        _, state, _ = read_web_weights(path)
        save_file({k: v.float().contiguous() for k, v in state.items()}, str(folder / f"dequant_{mode}.safetensors"))
        entry["modes"][mode] = {
            "bytes": path.stat().st_size,
            "quantized": len(json.loads(read_raw(path)[0]["quantization"])),  # of the file as written
            "tensor_names": sorted(read_raw(path)[1]),  # as stored (packed names for quantized weights)
        }
    remove_onnx(folder)  # none left from an earlier run with another list
    if name in ONNX_MODELS:  # the float32 model, as the fp32 file holds it
        entry["onnx"] = export_onnx(model, folder, ("decoder",) if name in DECODER_ONLY else None)
    return entry


# ---------------------------------------------------------------------------------------------------------
# single-op cases


def quantized_case(prefix: str, weight2d: torch.Tensor, tensors: dict, group_size: int = 32) -> None:
    """Store a (rows, cols) weight in every encoding plus its dequantized float32 values per encoding."""
    tensors[f"{prefix}.f32"] = weight2d.float().contiguous()
    tensors[f"{prefix}.f32.dequant"] = weight2d.float().clone()
    half = weight2d.to(torch.float16)
    tensors[f"{prefix}.f16"] = half.view(torch.int16).to(torch.int32).bitwise_and(0xFFFF).float()  # bits as floats
    tensors[f"{prefix}.f16.dequant"] = half.float()
    for bits in (8, 4):
        packed, scales = quantize_groups(weight2d, bits, group_size)
        tensors[f"{prefix}.q{bits}"] = packed.to(torch.int32).bitwise_and(0xFF).float()  # bytes as floats
        tensors[f"{prefix}.q{bits}.scales"] = scales.view(torch.int16).to(torch.int32).bitwise_and(0xFFFF).float()
        tensors[f"{prefix}.q{bits}.dequant"] = dequantize_groups(packed, scales, bits, weight2d.shape[1], group_size)


def kernel_cases() -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Inputs/outputs of single ops, computed by torch; the browser runs each with our kernels."""
    gen = torch.Generator().manual_seed(1234)
    rand = lambda *shape: torch.randn(shape, generator=gen)  # noqa: E731
    tensors, cases = {}, []

    # linear: sizes that are not multiples of the 32x32 tiles; K = 45 takes the GEMM's scalar path (and a
    # short last quantization group), K = 72 its vector path (4 k per load, groups of 8)
    for tag, (rows, k_in, k_out, group) in {"linear": (37, 45, 29, 32), "linear4": (37, 72, 40, 8)}.items():
        x, w, b = rand(rows, k_in), rand(k_out, k_in) / 6, rand(k_out) * 0.1
        tensors.update({f"{tag}.x": x, f"{tag}.b": b})
        quantized_case(f"{tag}.w", w, tensors, group_size=group)
        for enc in ("f32", "f16", "q8", "q4"):
            tensors[f"{tag}.y.{enc}"] = F.linear(x, tensors[f"{tag}.w.{enc}.dequant"], b)
        cases.append({"op": "linear", "tag": tag, "rows": rows, "in": k_in, "out": k_out, "group_size": group})

    # convolutions on NCHW (2, 5, 9, 9): 3x3 pad 1, strided 3x3 (pad 1, stride 2), patch 3/3, up-sample + conv
    x = rand(2, 5, 9, 9)
    tensors["conv.x"] = x
    for tag, (cout, k, stride, pad, up) in {
        "same": (7, 3, 1, 1, 1),
        "strided": (6, 3, 2, 1, 1),
        "patch": (8, 3, 3, 0, 1),
        "up": (4, 3, 1, 1, 2),
        "point": (3, 1, 1, 0, 1),
    }.items():
        w, b = rand(cout, 5, k, k) / math.sqrt(5 * k * k), rand(cout) * 0.1
        quantized_case(f"conv.{tag}.w", w.reshape(cout, -1), tensors, group_size=16)
        tensors[f"conv.{tag}.b"] = b
        src = F.interpolate(x, scale_factor=2.0, mode="nearest") if up > 1 else x
        for enc in ("f32", "f16", "q8", "q4"):
            weight = tensors[f"conv.{tag}.w.{enc}.dequant"].reshape(cout, 5, k, k)
            tensors[f"conv.{tag}.y.{enc}"] = F.conv2d(src, weight, b, stride=stride, padding=pad)
        cases.append(
            {
                "op": "conv",
                "tag": tag,
                "out": cout,
                "kernel": k,
                "stride": stride,
                "pad": pad,
                "upsample": up,
                "in": 5,
                "size": 9,
                "batch": 2,
                "group_size": 16,
            }
        )

    # activations via a linear with identity weights
    x = rand(4, 40) * 3
    tensors.update({"act.x": x, "act.gelu": F.gelu(x), "act.silu": F.silu(x), "act.tanh": torch.tanh(x * 4)})

    # RMSNorm (eps 1e-6) and GroupNorm (eps 1e-6)
    x, weight = rand(6, 40), 1 + 0.2 * rand(40)
    tensors.update({"rms.x": x, "rms.w": weight, "rms.y": F.rms_norm(x, (40,), weight, eps=1e-6)})
    x, gamma, beta = rand(2, 16, 5, 5) * 2 + 0.5, 1 + 0.2 * rand(16), 0.1 * rand(16)
    tensors.update({"gn.x": x, "gn.w": gamma, "gn.b": beta, "gn.y": F.silu(F.group_norm(x, 8, gamma, beta, eps=1e-6))})

    # QK-normed RoPE attention on a 5x5 grid, 2 heads of 16: (B, T, 3, H, d) rows -> (B, T, H*d)
    batch, grid, heads, head_dim = 2, 5, 2, 16
    tokens = grid * grid
    qkv = rand(batch, tokens, 3 * heads * head_dim)
    q_norm, k_norm = 1 + 0.2 * rand(head_dim), 1 + 0.2 * rand(head_dim)
    angles = rope_angles_2d(grid, grid, head_dim, 100.0)
    q, k, v = qkv.view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q = apply_rope(F.rms_norm(q, (head_dim,), q_norm, eps=1e-6), angles.cos(), angles.sin())
    k = apply_rope(F.rms_norm(k, (head_dim,), k_norm, eps=1e-6), angles.cos(), angles.sin())
    attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    tensors.update({"attn.qkv": qkv, "attn.q_norm": q_norm, "attn.k_norm": k_norm, "attn.y": attended})
    cases.append({"op": "attention", "batch": batch, "grid": grid, "heads": heads, "head_dim": head_dim})

    # sphere projection with and without re-noising
    z, e = rand(3, 50) * 3, rand(3, 50)
    sigma = math.tan(math.radians(80))
    tensors.update(
        {
            "sphere.z": z,
            "sphere.e": e,
            "sphere.f": sphere_project(z),
            "sphere.renoised": sphere_project(sphere_project(z) + sigma * e),
        }
    )
    tensors["sphere.unit"] = F.normalize(z, dim=-1)  # a psvae's unit sphere: radius 1, not sqrt(L)
    cases.append({"op": "sphere", "sigma": sigma})

    # non-persistent tables the readers rebuild from the config (docs/web_format.md §6)
    angles = rope_angles_2d(6, 6, 32, 100.0)
    tensors["tables.pos"] = sincos_pos_embed_2d(6, 6, 48)
    tensors.update({"tables.rope_cos": angles.cos(), "tables.rope_sin": angles.sin()})
    cases.append({"op": "tables", "grid": 6, "width": 48, "head_dim": 32, "rope_theta": 100.0})
    return {k: v.float().contiguous() for k, v in tensors.items()}, cases


def recorded_sampler_runs() -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Each SAMPLER_CASES run of ddim_sample / ddpm_sample with a denoiser that returns fixed random outputs and
    records the x it is given: every step's x (steps + 1, *SAMPLER_SHAPE, the last the result), the outputs and the
    step noise the generator drew (replayed), so the unit tests redo each step with the same numbers."""
    tensors, cases = {}, {}
    for i, (name, (sampler, eta, prediction, kind, clip, steps)) in enumerate(SAMPLER_CASES.items()):
        gen = torch.Generator().manual_seed(100 + i)
        schedule = Schedule(kind=kind, **SAMPLER_SCHEDULE)
        outputs = torch.randn((steps, *SAMPLER_SHAPE), generator=gen)
        x_T = torch.randn(SAMPLER_SHAPE, generator=gen)
        seen = []

        def denoise(x, t, outputs=outputs, seen=seen):
            seen.append(x.clone())
            return outputs[len(seen) - 1]

        common = dict(prediction=prediction, generator=torch.Generator().manual_seed(200 + i), clip_x0=clip)
        if sampler == "ddim":
            result = ddim_sample(denoise, schedule, x_T, steps, eta=eta, **common)
        else:
            result = ddpm_sample(denoise, schedule, x_T, steps, **common)
        replay = torch.Generator().manual_seed(200 + i)
        noise = torch.stack([torch.randn(SAMPLER_SHAPE, generator=replay) for _ in range(steps - 1)])
        tensors |= {f"{name}.x": torch.stack([*seen, result]), f"{name}.outputs": outputs, f"{name}.noise": noise}
        cases[name] = {"sampler": sampler, "eta": eta, "prediction": prediction, "beta_schedule": kind, "clip": clip}
        cases[name] |= {"steps": steps, **SAMPLER_SCHEDULE}
    return {k: v.float().contiguous() for k, v in tensors.items()}, cases


def all_model_fixtures(out_dir: Path, workers: int) -> dict[str, dict]:
    """make_model_fixtures of every model, in `workers` spawned processes (one thread each; the ONNX exports take most
    of the time), the models with ONNX files first so that the two workers finish together."""
    seeds = {name: 10 + i for i, name in enumerate(MODELS)}
    order = sorted(MODELS, key=lambda name: name not in ONNX_MODELS)
    if workers <= 1:
        return {name: make_model_fixtures(name, out_dir, seeds[name]) for name in MODELS}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(make_model_fixtures, name, out_dir, seeds[name]) for name in order}
        return {name: futures[name].result() for name in MODELS}


def main(args: argparse.Namespace) -> None:
    out_dir = Path(args.out)
    digest = inputs_digest()
    manifest_path = out_dir / "manifest.json"
    if not args.force and manifest_path.exists():
        if json.loads(manifest_path.read_text()).get("digest") == digest:
            print(f"fixtures in {out_dir} are up to date")
            return
    torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = all_model_fixtures(out_dir, args.workers)
    tensors, cases = kernel_cases()
    save_file(tensors, str(out_dir / "kernels.safetensors"))
    (out_dir / "kernels.json").write_text(json.dumps(cases, indent=1))
    tensors, runs = recorded_sampler_runs()
    save_file(tensors, str(out_dir / "diffusion.safetensors"))
    (out_dir / "diffusion.json").write_text(json.dumps(runs, indent=1))
    manifest = {"digest": digest, "batch": BATCH, "guidance": GUIDANCE, "recon_angle": RECON_ANGLE, "models": models}
    manifest |= {"ldm_steps": LDM_STEPS, "ldm_eta": LDM_ETA}
    write_index(out_dir)  # index.json as batch_export.py writes it: the e2e test and the benchmark serve this folder
    manifest_path.write_text(json.dumps(manifest, indent=1))
    print(f"wrote fixtures for {', '.join(models)} and {len(cases)} kernel cases to {out_dir}")


if __name__ == "__main__":
    main(parse_args())
