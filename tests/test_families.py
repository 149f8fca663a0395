"""One machinery for every model family (docs/families.md): the family table, dispatch on a config's family,
capabilities honoured by renders, sampling.py, evaluate.py and export, named optimizer groups, loss hooks (own
state, gradient-free stages), (x, labels, sigma) batches, and flags that belong to another family.

A test-only "toy" family (a linear autoencoder) is plugged in the way a real one is: an entry in
engine.families.FAMILIES and its names in models.MODELS."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import evaluate
import export_weights
import sampling
import training
from engine.checkpoint import CheckpointError, load_checkpoint, load_model_from_checkpoint
from engine.families import FAMILIES, Family, FamilyError, family_of_model, model_from_config
from engine.flags import weight_rule
from engine.images import render_eval_images, save_grid
from engine.optim import build_optimizer, build_scheduler
from engine.trainer import lr_logs
from engine.webformat import WebFormatError, export_model, load_model_from_web_weights, read_web_weights, write_index
from models import MODELS, SphereConfig, build_model
from tests.helpers import perturb
from tests.test_export import write_run
from tests.test_webformat import edit_config, rewrite_header

# ---------------------------------------------------------------------------------------------------------
# The toy family


@dataclass
class ToyConfig:
    """Test-only config: what every family config has, plus the variant that sets the capabilities."""

    family: str = "toy"
    image_size: int = 8
    in_channels: int = 3
    num_classes: int = 0
    latent_dim: int = 4
    norm: str = "group"
    variant: str = "plain"  # plain: cannot sample; sampler: samples, steps not prefixes; frozen: nothing trains

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ToyConfig:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown toy config keys {unknown}")
        return cls(**data)


class ToyAutoencoder(nn.Module):
    """A linear autoencoder; capabilities depend on the config's variant."""

    default_eval_steps = (1, 3)

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.can_sample = config.variant == "sampler"
        self.steps_are_prefix = False
        self.cannot_sample_reason = "it is a plain autoencoder with no prior"
        pixels = config.in_channels * config.image_size**2
        self.encoder, self.decoder = nn.Linear(pixels, config.latent_dim), nn.Linear(config.latent_dim, pixels)
        self.runs: list[tuple[int, bool]] = []  # (steps, return_all) of every sample() call
        if config.variant == "frozen":
            self.requires_grad_(False)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"all": list(self.parameters())}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        return torch.tanh(self.decoder(z)).view(len(z), self.config.in_channels, size, size)

    @torch.no_grad()
    def reconstruct(self, x, steps=1, generator=None, labels=None, return_all=False):
        outputs = [self.decode(self.encode(x))]
        for _ in range(steps - 1):
            outputs.append(self.decode(self.encode(outputs[-1])))
        return outputs if return_all else outputs[-1]

    @torch.no_grad()
    def sample(self, n, steps=1, generator=None, labels=None, cfg=1.0, cfg_mode="combo", return_all=False):
        self.runs.append((steps, return_all))
        z = torch.stack([torch.randn(self.config.latent_dim, generator=g) for g in generator])
        outputs = [self.decode(z * (steps + t)) for t in range(steps)]  # a longer run differs at every step
        return outputs if return_all else outputs[-1]


class ToyLoss:
    """MSE reconstruction, weighted by 1/sigma when the batch carries per-value errors; records what it saw."""

    def __init__(self, weight: float):
        self.weight, self.batches = weight, []

    def __call__(self, model, batch, step):
        self.batches.append(batch)
        x = batch[0]
        recon = model.decode(model.encode(x))
        error = (recon - x) ** 2 / (batch[2] if len(batch) == 3 else 1.0)
        loss = self.weight * error.mean()
        return loss, {"loss": float(loss.detach()), "mse": float(F.mse_loss(recon.detach(), x))}


class StatefulToyLoss(ToyLoss):
    """Also trains its own critic with its own optimizer (as a GAN's discriminator), drawing from the main RNG:
    the state that must survive a resume."""

    def __init__(self, weight: float):
        super().__init__(weight)
        with torch.random.fork_rng():  # the same critic every run, without touching the training RNG
            torch.manual_seed(123)
            self.critic = nn.Linear(3, 1)
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=0.05)
        self.calls = 0

    def __call__(self, model, batch, step):
        loss, logs = super().__call__(model, batch, step)
        features = batch[0].mean((2, 3)).detach()
        critic_loss = (self.critic(features + torch.randn_like(features)) ** 2).mean()
        self.optimizer.zero_grad()
        critic_loss.backward()
        self.optimizer.step()
        self.calls += 1
        return loss, {**logs, "critic": float(critic_loss.detach())}

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "optimizer": self.optimizer.state_dict(), "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.calls = int(state["calls"])


class FittingToyLoss(ToyLoss):
    """A stage fitted without gradients (as a SOM): moves the decoder bias towards the batch mean in place."""

    gradient_free = True

    def __call__(self, model, batch, step):
        assert not torch.is_grad_enabled(), "a gradient-free loss is called under torch.no_grad()"
        if step == 0:
            self.initial_bias = model.decoder.bias.clone()
        model.decoder.bias.mul_(0.5).add_(0.5 * batch[0].flatten(1).mean(0))
        return super().__call__(model, batch, step)


BUILT_LOSSES: list[ToyLoss] = []
LOSSES = {"plain": ToyLoss, "stateful": StatefulToyLoss, "gradient_free": FittingToyLoss}


def build_toy_loss(args, model, device) -> ToyLoss:
    BUILT_LOSSES.append(LOSSES[args.toy_loss](args.toy_weight))
    return BUILT_LOSSES[-1]


def add_toy_flags(group) -> None:
    group.add_argument("--toy_weight", type=float, default=1.0)
    group.add_argument("--toy_loss", choices=sorted(LOSSES), default="plain")


def toy_builder(variant: str):
    def build(**overrides) -> ToyAutoencoder:
        return ToyAutoencoder(ToyConfig(variant=variant, **overrides))

    return build


TOY = Family(
    name="toy",
    config_class=ToyConfig,
    model_class=ToyAutoencoder,
    registry={f"toy_{variant}": toy_builder(variant) for variant in ("plain", "sampler", "frozen")},
    add_flags=add_toy_flags,
    model_overrides=lambda args, dataset: {},
    build_loss=build_toy_loss,
    lr_multipliers=lambda args: {"all": 2.0},
    flag_rules=(weight_rule("--toy_weight"),),
    summary="test-only linear autoencoders",
)


@pytest.fixture
def toy(monkeypatch) -> Family:
    """The toy family plugged into the table and the registry for one test."""
    monkeypatch.setitem(FAMILIES, "toy", TOY)
    for name, builder in TOY.registry.items():
        monkeypatch.setitem(MODELS, name, builder)
    BUILT_LOSSES.clear()
    return TOY


def toy_flags(results: Path, *extra: str, model: str = "toy_plain") -> list[str]:
    return [
        *("--model_type", model, "--dataset", "demo", "--image_size", "8", "--batch_size", "4"),
        *("--epochs", "2", "--steps", "3", "--num_workers", "0", "--results_dir", str(results)),
        *("--eval_samples", "4", "--log_every", "1", "--device", "cpu", "--no-curves", *extra),  # --curves: once
    ]


def train(*flags: str) -> Path:
    return training.main(training.parse_args(list(flags)))


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------
# The table and dispatch


def test_every_registered_model_is_in_exactly_one_family_and_keeps_the_contract():
    owners = {name: [f.name for f in FAMILIES.values() if name in f.registry] for name in MODELS}
    assert all(len(families) == 1 for families in owners.values()), owners
    assert set(MODELS) == {name for family in FAMILIES.values() for name in family.registry}
    for family in FAMILIES.values():
        name = min(family.registry, key=len)  # the alias or the smallest name: any entry builds the same class
        with torch.device("meta"):
            model = build_model(name)
        assert isinstance(model, family.model_class) and model.config.family == family.name
        assert isinstance(model.can_sample, bool) and isinstance(model.steps_are_prefix, bool)
        assert model.default_eval_steps and all(isinstance(t, int) and t >= 1 for t in model.default_eval_steps)
        groups = model.parameter_groups()
        assert sorted(id(p) for ps in groups.values() for p in ps) == sorted(id(p) for p in model.parameters())
        config = model.config.to_dict()
        assert {"family", "image_size", "in_channels", "num_classes"} <= set(config)
        assert family.config_class.from_dict(config) == model.config
        with pytest.raises(ValueError, match="unknown"):
            family.config_class.from_dict({**config, "bogus": 1})


def test_presets_stay_in_their_family():
    from engine.flags import load_mapping
    from engine.training_flags import CONFIG_DIR

    for family in FAMILIES.values():
        for file in family.presets.values():
            model_type = load_mapping(CONFIG_DIR / file).get("model_type")
            assert model_type is None or family_of_model(model_type) is family, file


def test_configs_without_a_family_are_sphere_and_unknown_families_are_named(tmp_path):
    config = build_model("convnet_tiny", image_size=16).config.to_dict()
    assert config["family"] == "sphere"
    legacy = {key: value for key, value in config.items() if key != "family"}
    assert model_from_config(legacy).config == model_from_config(config).config
    known = "ldm, psvae, somar, sphere, vqvae"
    with pytest.raises(FamilyError, match=f"unknown model family 'flow'; this code knows {known}"):
        model_from_config({**config, "family": "flow"})
    write_run(tmp_path, "demo_20250101_000000", "demo", build_model("convnet_tiny", image_size=16))
    path = tmp_path / "demo_20250101_000000" / "checkpoints" / "checkpoint_latest.pth"
    ckpt = load_checkpoint(path)
    ckpt["config"]["model"]["family"] = "flow"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as error:
        load_model_from_checkpoint(path)
    assert "unknown model family 'flow'" in str(error.value) and "\n" not in str(error.value)
    message = run_exit(sampling, ["--checkpoint", str(path), "--dest_folder", str(tmp_path / "out")])
    assert "unknown model family 'flow'" in message


def test_a_config_of_one_family_is_refused_as_another(toy):
    sphere = build_model("convnet_tiny", image_size=16).config.to_dict()
    with pytest.raises(ValueError, match="unknown toy config keys"):
        model_from_config({**sphere, "family": "toy"})
    with pytest.raises(ValueError, match="a 'toy' config is not a Sphere Encoder config"):
        SphereConfig.from_dict({**sphere, "family": "toy"})


def run_exit(script, argv: list[str]) -> str:
    """The one-line `error: ...` message a script stops with."""
    with pytest.raises(SystemExit) as caught:
        script.main(script.parse_args(argv))
    message = str(caught.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------------------
# Flags of one family


def test_help_groups_each_familys_flags(toy, capsys):
    with pytest.raises(SystemExit):
        training.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "sphere family:" in text and "toy family:" in text
    sphere_part, toy_part = text.split("sphere family:")[1].split("toy family:")
    assert "--noise_angle" in sphere_part and "--encoder_lr_mult" in sphere_part and "--toy_weight" not in sphere_part
    assert "--toy_weight" in toy_part and "--noise_angle" not in toy_part
    assert "toy_sampler" in text.split("sphere family:")[0]  # --model_type takes every family's names


def test_another_familys_flag_is_refused(toy, tmp_path):
    cases = [
        (["--model_type", "toy_plain", "--noise_angle", "30"], "--noise_angle is a sphere-family flag"),
        (["--model", "toy_plain", "--encoder_lr_mult=1"], "--encoder_lr_mult is a sphere-family flag"),
        (["--model_type", "vit_tiny", "--toy_weight", "2"], "--toy_weight is a toy-family flag; vit_tiny is a sphere"),
    ]
    for argv, words in cases:
        with pytest.raises(SystemExit) as caught:
            training.parse_args(argv)
        message = str(caught.value.code)
        assert message.startswith(f"error: {words}") and message.endswith(": remove it") and "\n" not in message
    config = tmp_path / "sphere.yaml"
    config.write_text("recon_perc_weight: 0\n")
    with pytest.raises(SystemExit, match=rf"recon_perc_weight \(in config file '{config}'\) is a sphere-family flag"):
        training.parse_args(["--model_type", "toy_plain", "--config", str(config)])
    args = training.parse_args(["--model_type", "toy_plain", "--toy_weight", "2"])
    assert args.toy_weight == 2 and not hasattr(args, "noise_angle")  # the other family's flags are dropped
    assert args.preset == "none"  # the toy family has no presets: auto falls back to the plain defaults
    with pytest.raises(SystemExit, match="--preset quickstart: toy models have no quickstart preset"):
        training.parse_args(["--model_type", "toy_plain", "--preset", "quickstart"])
    with pytest.raises(SystemExit, match="--toy_weight -1.0 is a loss weight"):
        train(*toy_flags(tmp_path / "results", "--toy_weight", "-1"))
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------------------
# Training: groups, batches with sigma, loss hooks, capabilities


def test_named_groups_take_their_lr_multipliers():
    model = build_model("convnet_tiny", image_size=16)
    optimizer = build_optimizer(model, 1e-3, {"encoder": 0.1}, (0.9, 0.95), 0.0)
    names = [group["name"] for group in optimizer.param_groups]
    assert names == ["encoder", "decoder"]
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-4, 1e-3])
    assert lr_logs(optimizer) == pytest.approx({"lr": 1e-3, "lr_encoder": 1e-4, "lr_decoder": 1e-3})
    with pytest.raises(ValueError, match=r"groups \['head'\]"):
        build_optimizer(model, 1e-3, {"head": 2.0}, (0.9, 0.95), 0.0)
    model.parameter_groups = lambda: {"encoder": list(model.encoder.parameters())}
    with pytest.raises(ValueError, match=r"leaves out \['decoder"):
        build_optimizer(model, 1e-3, {}, (0.9, 0.95), 0.0)


def test_a_model_with_nothing_to_train_gets_an_optimizer_and_a_schedule():
    model = ToyAutoencoder(ToyConfig(variant="frozen"))
    optimizer = build_optimizer(model, 1e-3, {}, (0.9, 0.95), 0.0)
    assert [group["params"] for group in optimizer.param_groups] == [[]]
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=2, lr=1e-3, min_lr=1e-5)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert lr_logs(optimizer)["lr"] == pytest.approx(1e-3, rel=0.2)
    model.parameter_groups = lambda: {}
    assert len(build_optimizer(model, 1e-3, {}, (0.9, 0.95), 0.0).param_groups) == 1


class SigmaDataset(torch.utils.data.Dataset):
    """Wraps a dataset to yield (x, label, sigma) with a sigma that is not left-right symmetric: 0.5 + x/4 + the
    column index, so a flip applied to x but not to sigma (or the other way round) shows."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getattr__(self, name):
        return getattr(self.__dict__["dataset"], name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        x, label = self.dataset[index]
        return x, label, sigma_of(x)


def sigma_of(x: torch.Tensor) -> torch.Tensor:
    return 0.5 + x / 4 + torch.arange(x.shape[-1], dtype=x.dtype)


def test_batches_with_sigma_are_moved_and_flipped_together(toy, tmp_path, monkeypatch):
    build_dataset = training.build_dataset
    monkeypatch.setattr(training, "build_dataset", lambda *a, **k: SigmaDataset(build_dataset(*a, **k)))
    run_dir = train(*toy_flags(tmp_path / "results", "--epochs", "1"))
    batches = BUILT_LOSSES[-1].batches
    assert len(batches) == 3 and all(len(batch) == 3 for batch in batches)
    flipped = 0
    for x, _, sigma in batches:
        as_is, mirrored = sigma_of(x), sigma_of(x.flip(-1)).flip(-1)
        same = [torch.allclose(s, a) or torch.allclose(s, m) for s, a, m in zip(sigma, as_is, mirrored)]
        assert all(same), "sigma must get exactly the flips of x"
        flipped += sum(not torch.allclose(s, a) for s, a in zip(sigma, as_is))
    assert flipped > 0  # --hflip is on: some samples were flipped
    assert (run_dir / "images" / "epoch_0001_recon.png").is_file()


def test_a_model_that_cannot_sample_trains_renders_reconstructions_only(toy, tmp_path):
    run_dir = train(*toy_flags(tmp_path / "results", "--epochs", "1", "--curves"))
    assert sorted(p.name for p in (run_dir / "images").iterdir()) == ["curves.png", "epoch_0001_recon.png"]
    records = metrics_of(run_dir)
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 3 and all("mse" in r and "grad_norm" in r for r in steps)
    assert steps[0]["lr"] > 0 and "lr_all" not in steps[0]  # one group: its lr, no per-group keys
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["family"] == "toy" and config["train"]["toy_weight"] == 1.0
    assert "noise_angle" not in config["train"]  # only the flags that shaped this run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "checkpoint_latest.pth")
    assert ckpt["optimizer"]["param_groups"][0]["name"] == "all" and "loss" not in ckpt
    lr = ckpt["optimizer"]["param_groups"][0]["initial_lr"]
    assert lr == pytest.approx(2 * 1e-4 * 4 / 256)  # the family's multiplier for its group


def test_fid_during_training_needs_a_model_that_can_sample(toy, tmp_path):
    with pytest.raises(SystemExit) as caught:
        train(*toy_flags(tmp_path / "results", "--fid-every", "1"))
    message = str(caught.value.code)
    assert message.startswith("error: --fid-every needs samples, but a toy model (ToyAutoencoder) cannot draw")
    assert not (tmp_path / "results").exists()


def test_loss_state_is_saved_and_resumed_exactly(toy, tmp_path):
    straight = train(*toy_flags(tmp_path / "a", "--toy_loss", "stateful"))
    first = train(*toy_flags(tmp_path / "b", "--toy_loss", "stateful", "--stop_after_steps", "4"))
    resumed = train(*toy_flags(tmp_path / "b", "--toy_loss", "stateful"))
    assert resumed == first
    a, b = (load_checkpoint(run / "checkpoints" / "checkpoint_latest.pth") for run in (straight, resumed))
    assert a["loss"]["calls"] == b["loss"]["calls"] == 6
    for name, value in a["loss"]["critic"].items():
        assert torch.equal(value, b["loss"]["critic"][name]), name
    moments = lambda ckpt: [s["exp_avg"] for s in ckpt["loss"]["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(moments(a), moments(b)))
    assert all(torch.equal(a["model"][name], b["model"][name]) for name in a["model"])
    stripped = {key: value for key, value in b.items() if key != "loss"}
    torch.save(stripped, resumed / "checkpoints" / "checkpoint_latest.pth")
    with pytest.raises(SystemExit, match="has no loss state, which this loss keeps"):
        train(*toy_flags(tmp_path / "b", "--toy_loss", "stateful", "--epochs", "3"))


def test_a_gradient_free_stage_trains_without_backward(toy, tmp_path):
    run_dir = train(*toy_flags(tmp_path / "results", "--toy_loss", "gradient_free", model="toy_frozen"))
    ckpt = load_checkpoint(run_dir / "checkpoints" / "checkpoint_latest.pth")
    assert ckpt["step"] == 6 and ckpt["optimizer"]["param_groups"][0]["params"] == []
    initial = BUILT_LOSSES[-1].initial_bias
    assert not torch.allclose(ckpt["model"]["decoder.bias"], initial)  # fitted in the loss call
    assert torch.allclose(ckpt["ema"]["decoder.bias"], ckpt["model"]["decoder.bias"], atol=0.5)
    assert not torch.equal(ckpt["ema"]["decoder.bias"], ckpt["model"]["decoder.bias"])  # EMA still averages
    steps = [r for r in metrics_of(run_dir) if "loss" in r]
    assert len(steps) == 6 and all("grad_norm" not in r and r["lr"] > 0 for r in steps)


# ---------------------------------------------------------------------------------------------------------
# Capabilities in renders, sampling.py and evaluate.py


def demo_items(count: int, size: int = 8) -> list:
    generator = torch.Generator().manual_seed(0)
    return [(torch.rand(3, size, size, generator=generator) * 2 - 1, 0, torch.ones(3, size, size))] * count


def test_renders_sample_at_the_default_steps_each_as_its_own_run(tmp_path):
    model = ToyAutoencoder(ToyConfig(variant="sampler"))
    render_eval_images(model, demo_items(4), tmp_path, 1, 4, "cpu")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch_0001_recon.png", "epoch_0001_samples_1step.png", "epoch_0001_samples_3step.png"]
    assert model.runs == [(1, False), (3, False)]  # steps are no prefixes: no slicing of a 3-step run


def test_signals_render_as_line_plots(tmp_path):
    signals = torch.stack([torch.sin(torch.linspace(0, 6, 40)), torch.cos(torch.linspace(0, 6, 40))])[None]
    path = save_grid(torch.cat([signals, signals * 0.5]), tmp_path / "signals.png", nrow=2)
    image = Image.open(path).convert("RGB")
    assert image.size == (2 + 2 * (40 + 2), 2 + 48 + 2)
    pixels = torch.from_numpy(__import__("numpy").asarray(image).copy())
    assert (pixels[2:-2, 2:42] != 255).any()  # lines were drawn on the white panel


def test_sampling_a_model_that_cannot_sample_reconstructs_held_out_images(toy, tmp_path, capsys):
    model = perturb(ToyAutoencoder(ToyConfig(image_size=16)))
    write_run(tmp_path, "demo_20250101_000000", "demo", model)
    run = str(tmp_path / "demo_20250101_000000")
    argv = ["--checkpoint", run, "--dest_folder", str(tmp_path / "out"), "--device", "cpu", "--num_samples", "3"]
    (path,) = sampling.main(sampling.parse_args([*argv, "--steps", "1", "2"]))
    out = capsys.readouterr().out
    assert "note: a toy model (ToyAutoencoder) cannot draw samples: it is a plain autoencoder with no prior" in out
    assert "reconstructions of held-out images instead" in out
    assert path.name == "recon_heldout_seed0.png" and Image.open(path).size == (2 + 3 * 18, 2 + 3 * 18)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (20, 20), (200, 30, 30)).save(photo)
    (strip,) = sampling.main(sampling.parse_args([*argv, "--input", str(photo)]))
    assert strip.name == "recon_photo.png"
    for flags, words in [
        (["--cfg", "2"], "--cfg guides sampling, but a toy model"),
        (["--recon_noise_angle", "10"], "--recon_noise_angle does not apply to toy models"),
    ]:
        flags.append("--overwrite")
        assert words in run_exit(sampling, [*argv, *flags])


def test_sampling_runs_each_step_count_of_a_sampler_without_prefixes(toy, tmp_path):
    write_run(tmp_path, "demo_20250101_000000", "demo", perturb(ToyAutoencoder(ToyConfig(variant="sampler"))))
    run = str(tmp_path / "demo_20250101_000000")
    argv = ["--checkpoint", run, "--dest_folder", str(tmp_path / "out"), "--device", "cpu", "--num_samples", "2"]
    paths = sampling.main(sampling.parse_args([*argv, "--steps", "3", "1"]))
    assert [p.name for p in paths] == ["samples_3step_seed0.png", "samples_1step_seed0.png"]
    message = run_exit(sampling, [*argv, "--noise_angle", "30", "--overwrite"])
    assert "--noise_angle does not apply to toy models (ToyAutoencoder.sample() takes no noise_angle)" in message


def test_evaluate_skips_generation_of_a_model_that_cannot_sample(toy, tmp_path, capsys, inception_weights_file):
    write_run(tmp_path, "demo_20250101_000000", "demo", perturb(ToyAutoencoder(ToyConfig(image_size=16))))
    common = ["--checkpoint", str(tmp_path / "demo_20250101_000000"), "--device", "cpu"]
    common += ["--inception_weights", inception_weights_file, "--num_recon", "4", "--batch_size", "4"]
    message = run_exit(evaluate, common)
    assert message.startswith("error: nothing to evaluate: a toy model (ToyAutoencoder) cannot draw samples")
    assert "pass --reconstruction" in message
    records = evaluate.main(evaluate.parse_args([*common, "--reconstruction", "--steps", "1"]))
    assert "note: generation metrics skipped: a toy model" in capsys.readouterr().out
    assert {r["evaluation"] for r in records} == {"reconstruction"}
    assert {r["metric"] for r in records} == {"rfid", "psnr", "ssim", "lpips"}


# ---------------------------------------------------------------------------------------------------------
# Export and web files


def test_export_of_a_family_without_a_web_exporter_is_one_line(toy, tmp_path):
    write_run(tmp_path, "demo_20250101_000000", "demo", ToyAutoencoder(ToyConfig()))
    argv = ["--checkpoint", str(tmp_path / "demo_20250101_000000"), "--output_dir", str(tmp_path / "models" / "x")]
    assert "toy models have no web exporter yet" in run_exit(export_weights, argv)
    assert not (tmp_path / "models").exists()
    with pytest.raises(WebFormatError, match="toy models have no web exporter"):
        export_model(ToyAutoencoder(ToyConfig()), tmp_path / "m.safetensors", "fp32")


def test_web_files_carry_their_family_and_readers_name_unknown_ones(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    path = folder / "model_fp16.safetensors"
    export_model(perturb(build_model("convnet_tiny", image_size=16)), path, "fp16")
    config, _, _ = read_web_weights(path)
    assert config["family"] == "sphere"
    (entry,) = write_index(tmp_path)
    assert entry["family"] == "sphere" and entry["backbone"] == "convnet" and entry["latent_shape"] == [32, 4, 4]
    for family, words in [("flow", "a family this reader does not know"), (None, None)]:
        bad = tmp_path / f"{family}.safetensors"
        rewrite_header(path, bad, edit_config(family=family))
        if words is None:  # files written before families (no key) are sphere files
            assert read_web_weights(bad)[0].get("family") is None
            continue
        with pytest.raises(WebFormatError) as error:
            read_web_weights(bad)
        assert f"holds a '{family}' model, {words}" in str(error.value)


def test_a_known_family_without_web_support_is_named_by_the_reader(toy, tmp_path):
    path = tmp_path / "model_fp16.safetensors"
    export_model(perturb(build_model("convnet_tiny", image_size=16)), path, "fp16")
    bad = tmp_path / "toy.safetensors"
    rewrite_header(path, bad, edit_config(family="toy"))
    with pytest.raises(WebFormatError, match="holds a 'toy' model, a family this reader cannot read"):
        read_web_weights(bad)


# ---------------------------------------------------------------------------------------------------------
# The psvae family through the same scripts


@pytest.fixture(scope="module")
def psvae_run(tmp_path_factory) -> Path:
    """A 3-step psvae_tiny run on the demo images at 16 px."""
    results = tmp_path_factory.mktemp("results")
    flags = ["--model_type", "psvae_tiny", "--dataset", "demo", "--image_size", "16", "--batch_size", "8"]
    flags += ["--epochs", "1", "--steps", "3", "--num_workers", "0", "--results_dir", str(results), "--device", "cpu"]
    return train(*flags, "--eval_samples", "4", "--beta", "0.01", "--kappa_init", "5", "--log_every", "1")


def test_a_psvae_run_uses_its_familys_flags_loss_and_renders(psvae_run):
    config = json.loads((psvae_run / "config.json").read_text())
    assert config["model"]["family"] == "psvae" and config["model"]["kappa_init"] == 5
    train_flags = config["train"]
    assert train_flags["beta"] == 0.01 and "noise_angle" not in train_flags
    assert train_flags["preset"] == "quickstart" and train_flags["checkpoint_frequency"] == 5  # psvae's quickstart
    assert (train_flags["image_size"], train_flags["batch_size"]) == (16, 8)  # typed flags win over it
    steps = [r for r in metrics_of(psvae_run) if "loss" in r]
    assert len(steps) == 3 and {"recon", "kl", "kappa_mean", "kappa_max", "beta"} <= set(steps[0])
    assert steps[0]["lr_encoder"] == steps[0]["lr_decoder"] == steps[0]["lr"]  # no multiplier: one rate
    images = sorted(p.name for p in (psvae_run / "images").iterdir())
    renders = ["epoch_0001_recon.png", "epoch_0001_samples_1step.png"]  # PSVAE.default_eval_steps
    globe = ["epoch_0001_atlas.png", "epoch_0001_latent_map.png", "epoch_0001_latent_thumbnails.png"]  # z_dim 3
    assert images == sorted(["curves.png", *renders, *globe])


def test_a_psvae_checkpoint_samples_exports_and_refuses_sphere_only_flags(psvae_run, tmp_path):
    argv = ["--checkpoint", str(psvae_run), "--dest_folder", str(tmp_path / "out"), "--device", "cpu"]
    paths = sampling.main(sampling.parse_args([*argv, "--num_samples", "2", "--steps", "1", "2"]))
    assert [p.name for p in paths] == ["samples_1step_seed0.png", "samples_2step_seed0.png"]
    message = run_exit(sampling, [*argv, "--noise_angle", "30", "--overwrite"])
    assert (
        message == "error: --noise_angle does not apply to psvae models (PSVAE.sample() takes no noise_angle); drop it"
    )
    models = tmp_path / "models"
    export_weights.main(export_weights.parse_args([*argv[:2], "--output_dir", str(models / "psvae"), "--mode", "q8"]))
    (entry,) = write_index(models)
    assert entry["family"] == "psvae" and entry["z_dim"] == 3 and entry["backbone"] == "conv"
    model = load_model_from_web_weights(models / "psvae" / "model_q8.safetensors")
    assert type(model).__name__ == "PSVAE" and model.config.family == "psvae"


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (
            ["--model_type", "convnet_tiny", "--dataset", "sines", "--image_size", "128"],
            "holds signals, but convnet_tiny is a sphere model",
        ),
        (["--model_type", "psvae_tiny", "--recon", "gaussian_nll"], "--recon gaussian_nll needs per-value errors"),
        (["--model_type", "psvae_tiny", "--beta", "-1"], "--beta -1.0 is a loss weight"),
        (["--model_type", "psvae_tiny", "--beta_schedule", "cyclic"], "psvae loss: a cyclic beta needs"),
        (["--model_type", "psvae_tiny", "--kappa_init", "0.5"], "kappa_init 0.5 must be in (kappa_min, kappa_max]"),
        (
            ["--model_type", "psvae_tiny", "--sigma_max", "2"],
            "--sigma_max is a sphere-family flag; psvae_tiny is a psvae",
        ),
    ],
)
def test_family_mistakes_are_one_line_errors_before_any_folder(tmp_path, flags, words):
    argv = ["--dataset", "demo", "--image_size", "16", "--results_dir", str(tmp_path / "r"), "--device", "cpu"]
    with pytest.raises(SystemExit) as caught:
        train(*argv, "--num_workers", "0", *flags)
    message = str(caught.value.code)
    assert message.startswith("error: ") and words in message and "\n" not in message, message
    assert not (tmp_path / "r").exists()


def test_weights_of_another_family_and_a_dataset_of_another_kind_are_one_line_errors(
    psvae_run, tmp_path, inception_weights_file
):
    ckpt = psvae_run / "checkpoints" / "checkpoint_latest.pth"
    flags = ["--dataset", "demo", "--image_size", "16", "--model_type", "convnet_tiny", "--device", "cpu"]
    with pytest.raises(SystemExit) as caught:
        train(*flags, "--results_dir", str(tmp_path / "r"), "--init_from", str(ckpt), "--num_workers", "0")
    assert str(caught.value.code) == (
        f"error: --init_from '{ckpt.resolve()}' holds a psvae model, but this run trains a sphere model; "
        "pass a --model_type of its family"
    )
    signals = perturb(build_model("psvae_tiny", backbone="conv1d", image_size=128, in_channels=1))
    write_run(tmp_path, "sines_20250101_000000", "sines", signals)
    common = ["--checkpoint", str(tmp_path / "sines_20250101_000000"), "--device", "cpu"]
    common += ["--inception_weights", inception_weights_file, "--num_samples", "4", "--num_recon", "4"]
    message = run_exit(evaluate, [*common, "--dataset", "demo"])
    assert message == "error: dataset 'demo' holds images, but this model encodes signals; pass a --dataset of signals"
    images = ["--checkpoint", str(psvae_run), "--device", "cpu", "--inception_weights", inception_weights_file]
    np.savez(tmp_path / "waves.npz", signals=np.random.default_rng(0).normal(size=(4, 1, 16)))
    message = run_exit(evaluate, [*images, "--dataset", str(tmp_path / "waves.npz"), "--num_samples", "4"])
    assert message == "error: dataset 'waves' holds signals, but this model encodes images; pass a --dataset of images"
