"""training.py's failures: one `error: ...` line, no traceback, nothing half-written, no stray run folders."""

import errno
import json
import os
import stat

import pytest
import torch
from PIL import Image

import training
from engine.checkpoint import atomic_write
from engine.setup import ConfigError, validate_args
from tests.test_training import run_training, state_of, tiny_flags

BAD_FLAGS = [
    (["--noise_angle", "95"], "--noise_angle 95.0 must be in (0, 90)"),
    (["--noise_angle", "0"], "--noise_angle 0.0 must be in (0, 90)"),
    (["--sigma_max", "-1"], "--sigma_max -1.0 must be > 0"),
    (["--num_workers", "-1"], "--num_workers -1 must be >= 0"),
    (["--lr", "1e40"], "--lr 1e+40 must be in (0, 1]"),
    (["--lr", "0"], "--lr 0.0 must be in (0, 1]"),
    (["--lr", "nan"], "--lr nan must be in (0, 1]"),
    (["--min_lr=-1e-6"], "--min_lr -1e-06 must be in [0, 1]"),
    (["--min_lr", "0.5"], "--min_lr 0.5 is above --lr"),
    (["--warmup_steps", "-5"], "--warmup_steps -5 must be >= 0"),
    (["--ema_decay", "1"], "--ema_decay 1.0 must be in [0, 1)"),
    (["--ema_decay", "-0.1"], "--ema_decay -0.1 must be in [0, 1)"),
    (["--grad_clip", "0"], "--grad_clip 0.0 must be > 0"),
    (["--eval_samples", "100000"], "--eval_samples 100000 must be in [1, 256]"),
    (["--hard_case_prob", "1.5"], "--hard_case_prob 1.5 is a probability"),
    (["--label_dropout", "-0.1"], "--label_dropout -0.1 is a probability"),
    (["--small_noise_ratio", "0"], "--small_noise_ratio 0.0 must be in (0, 1]"),
    (["--latent_weight", "-1"], "--latent_weight -1.0 is a loss weight"),
    (["--convnext_weight", "-1"], "--convnext_weight -1.0 is a loss weight"),
    (
        ["--recon_perc_weight", "1", "--convnext_weight", "0.1", "--convnext_weights", "missing.pth"],
        "ConvNeXt-S weights file 'missing.pth' does not exist; pass --convnext_weights PATH",
    ),
    (["--beta2", "1"], "--beta2 1.0 must be in [0, 1)"),
    (["--fid-every", "-1"], "--fid-every -1 must be >= 0"),
    (["--seed", "-3"], "--seed -3 must be >= 0"),
    (["--device", "gpu"], "--device gpu is not a device"),
    pytest.param(
        ["--device", "cuda"],
        "--device cuda was requested but no CUDA device is available",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
    ),
    (["--dataset", "no/such/folder"], "dataset 'no/such/folder' does not exist"),
    (["--image_size", "15"], "image_size 15 is not a multiple"),
    (["--conditional", "--dataset", "{unlabelled}"], "--conditional needs class labels"),
]


def bad_run(tmp_path, capsys, flags: list[str]) -> str:
    """Run training with `flags`; the SystemExit message, checked to be one line with nothing written."""
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as caught:
        run_training(*tiny_flags(results, *flags))
    message = str(caught.value.code)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in capsys.readouterr().err
    assert not results.exists(), "a start that fails validation must not create anything"
    return message


@pytest.fixture
def unlabelled_folder(tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "one.png")
    return folder


@pytest.mark.parametrize("flags, expected", BAD_FLAGS)
def test_bad_flag_is_one_line_error_before_any_folder(tmp_path, capsys, unlabelled_folder, flags, expected):
    flags = [flag.format(unlabelled=unlabelled_folder) for flag in flags]
    assert expected in bad_run(tmp_path, capsys, flags)


def test_results_dir_that_cannot_be_a_folder(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    for results, expected in [(a_file, "is a file, not a folder"), (a_file / "sub", "cannot be created")]:
        with pytest.raises(SystemExit) as caught:
            run_training(*tiny_flags(results))
        assert f"error: --results_dir '{results}' {expected}" in str(caught.value.code)
    assert a_file.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [a_file]


def test_batch_smaller_than_world_size_is_refused():
    args = training.parse_args(["--batch_size", "1"])
    with pytest.raises(ConfigError, match="--batch_size 1 .* does not split over the 2 processes"):
        validate_args(args, world_size=2)


@pytest.mark.parametrize("builder", ["build_dataset", "build_loss"])
def test_ctrl_c_during_start_up_is_one_line_and_status_130(tmp_path, capsys, monkeypatch, builder):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, builder, interrupted)
    with pytest.raises(SystemExit) as caught:
        run_training(*tiny_flags(tmp_path / "results"))
    assert caught.value.code == 130
    assert capsys.readouterr().err.strip() == f"error: {training.INTERRUPTED}"
    assert not (tmp_path / "results").exists()


def test_ctrl_c_while_importing_is_one_line(capsys):
    """The script's excepthook (installed before its slow imports) turns a KeyboardInterrupt into one line."""
    training.quiet_interrupt_hook(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert capsys.readouterr().err == f"error: {training.INTERRUPTED}\n"


def finite(ckpt: dict) -> bool:
    return all(torch.isfinite(t).all() for key in ("model", "ema") for t in ckpt[key].values() if t.is_floating_point())


def copy_state(module: torch.nn.Module) -> dict:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


@pytest.fixture
def fits(monkeypatch) -> list:
    """(trainer, model weights, EMA weights at the start of fit()) of each run_training call."""
    from engine.trainer import Trainer

    kept, fit = [], Trainer.fit
    monkeypatch.setattr(
        Trainer,
        "fit",
        lambda self: kept.append((self, copy_state(self.model), copy_state(self.ema.model))) or fit(self),
    )
    return kept


def poison_loss(monkeypatch, at_step: int, poison) -> None:
    """From step `at_step` on, the loss goes through poison(loss, model) (a NaN, or a NaN gradient)."""
    from losses import SphereLoss

    call = SphereLoss.__call__

    def poisoned(self, model, batch, step):
        loss, logs = call(self, model, batch, step)
        return (poison(loss, model) if step + 1 >= at_step else loss), logs

    monkeypatch.setattr(SphereLoss, "__call__", poisoned)


def nan_loss(loss, model):
    return loss * float("nan")


def nan_gradient(loss, model):
    """A finite loss whose gradient is NaN: d/dw sqrt(w - w) = inf * 0."""
    weight = next(model.parameters()).flatten()[0]
    return loss + torch.sqrt(weight - weight)


def states_before_each_step(monkeypatch) -> dict:
    """Step number (1-based) -> copies of (model, EMA, the optimizer's exp_avg) taken just before that step."""
    from engine.trainer import Trainer

    kept, step = {}, Trainer.train_step

    def recording(self, batch):
        exp_avg = [state["exp_avg"].clone() for state in self.optimizer.state.values()]
        kept[self.state.step + 1] = (copy_state(self.model), copy_state(self.ema.model), exp_avg)
        return step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", recording)
    return kept


def equal_states(a: dict | list, b: dict | list) -> bool:
    pairs = zip(a.values(), b.values()) if isinstance(a, dict) else zip(a, b)
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in pairs)


@pytest.mark.parametrize("poison, what", [(nan_loss, "the loss is nan"), (nan_gradient, "the gradient norm is nan")])
@pytest.mark.parametrize("log_every", ["1", "4"])
def test_non_finite_step_stops_before_the_update(tmp_path, monkeypatch, fits, poison, what, log_every):
    """The check runs on the device: step 5 and every later one skip their update, and the loop stops at its next
    sync (step 5 when it logs every step; the end of epoch 2, step 6, when it logs every 4)."""
    poison_loss(monkeypatch, at_step=5, poison=poison)
    before = states_before_each_step(monkeypatch)
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as caught:
        run_training(*tiny_flags(results, "--log_every", log_every))
    (run_dir,) = results.iterdir()
    latest = run_dir / "checkpoints" / "checkpoint_latest.pth"
    message = str(caught.value.code)
    assert message.startswith(f"error: {what} at step 5 (epoch 2)") and "\n" not in message
    assert f"the last good checkpoint is {latest} (step 3)" in message and "were not saved" in message
    ckpt = state_of(run_dir)
    assert ckpt["step"] == 3 and finite(ckpt)
    trainer = fits[0][0]
    assert max(before) == (5 if log_every == "1" else 6)
    model, ema, exp_avg = before[5]  # the weights, EMA and moments before step 5 are those at the stop
    assert equal_states(copy_state(trainer.model), model) and equal_states(copy_state(trainer.ema.model), ema)
    assert equal_states([state["exp_avg"] for state in trainer.optimizer.state.values()], exp_avg)
    assert not equal_states(before[4][0], model)  # step 4 did update: the comparison can fail


def test_without_a_fused_optimizer_the_check_runs_every_step(tmp_path, monkeypatch, fits):
    """An optimizer that cannot read found_inf (no fused kernels on the device): the flag is read on the host at
    once, so the run stops inside step 5 even when it logs every 4 steps."""
    monkeypatch.setattr("engine.optim.FUSED_DEVICES", set())
    poison_loss(monkeypatch, at_step=5, poison=nan_loss)
    before = states_before_each_step(monkeypatch)
    with pytest.raises(SystemExit, match=r"error: the loss is nan at step 5 \(epoch 2\)"):
        run_training(*tiny_flags(tmp_path / "results", "--log_every", "4"))
    trainer = fits[0][0]
    assert not trainer.optimizer.defaults["fused"] and max(before) == 5
    assert equal_states(copy_state(trainer.model), before[5][0])


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch):
    from engine.trainer import Trainer

    step = Trainer.train_step

    def corrupting_step(self, batch):
        logs = step(self, batch)
        if self.state.step == 1:  # the counter is bumped after the call: this is step 2
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return logs

    monkeypatch.setattr(Trainer, "train_step", corrupting_step)
    results = tmp_path / "results"
    with pytest.raises(
        SystemExit, match=r"error: weight 0\.\S+ holds NaN/Inf after step 2; .*no checkpoint was written"
    ):
        run_training(*tiny_flags(results, "--stop_after_steps", "2"))
    assert not list(results.rglob("*.pth"))


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from engine import trainer as trainer_module

    results = tmp_path / "results"
    run_dir = run_training(*tiny_flags(results, "--epochs", "1"))
    latest = run_dir / "checkpoints" / "checkpoint_latest.pth"
    before = latest.read_bytes()

    def disk_full(obj, path):
        def write(file):
            file.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        atomic_write(path, write)

    monkeypatch.setattr(trainer_module, "atomic_save", disk_full)
    with pytest.raises(SystemExit) as caught:
        run_training(*tiny_flags(results, "--epochs", "2"))
    message = str(caught.value.code)
    assert message.startswith(f"error: disk full while writing {latest}; free space") and "\n" not in message
    assert "the previous checkpoint is kept" in message
    assert latest.read_bytes() == before and not list(run_dir.rglob("*.tmp"))


def test_checkpoint_without_optimizer_state_says_what_is_missing(tmp_path):
    results = tmp_path / "results"
    run_dir = run_training(*tiny_flags(results, "--epochs", "1"))
    latest = run_dir / "checkpoints" / "checkpoint_latest.pth"
    ckpt = torch.load(latest, weights_only=True)
    torch.save({key: value for key, value in ckpt.items() if key not in ("optimizer", "scheduler")}, latest)
    with pytest.raises(SystemExit) as caught:
        run_training(*tiny_flags(results, "--epochs", "2"))
    assert str(caught.value.code) == (
        f"error: checkpoint '{latest}' cannot be resumed: it has no optimizer, scheduler state; to fine-tune its "
        f"weights in a new run pass --init_from {latest} (fresh optimizer and schedule), or pass --no-resume"
    )


def test_init_from_starts_a_new_run_from_weights_only(tmp_path, fits):
    results = tmp_path / "results"
    source = run_training(*tiny_flags(results, "--epochs", "1"))
    ckpt = state_of(source)
    weights = tmp_path / "weights_only.pth"
    torch.save({"model": ckpt["model"], "ema": ckpt["ema"], "config": ckpt["config"]}, weights)  # stripped
    run_dir = run_training(*tiny_flags(results, "--epochs", "1", "--init_from", str(weights)))
    assert run_dir != source
    _, model_at_start, ema_at_start = fits[1]
    assert all(torch.equal(model_at_start[name], ckpt["model"][name]) for name in ckpt["model"])
    assert all(torch.equal(ema_at_start[name], ckpt["ema"][name]) for name in ckpt["ema"])
    new = state_of(run_dir)
    assert new["step"] == 3 and new["config"]["train"]["init_from"] == str(weights.resolve())
    assert new["optimizer"]["state"][0]["step"] == 3  # fresh AdamW moments and schedule, not continued ones
    assert new["scheduler"]["last_epoch"] == 3
    again = run_training(*tiny_flags(results, "--epochs", "2", "--init_from", str(weights)))
    assert again == run_dir and state_of(run_dir)["step"] == 6  # the same command resumes that run


def test_init_from_a_bare_state_dict_and_bad_files(tmp_path, fits):
    results = tmp_path / "results"
    source = run_training(*tiny_flags(results, "--epochs", "1"))
    bare = tmp_path / "bare.pth"
    torch.save(state_of(source)["model"], bare)
    run_training(*tiny_flags(results, "--epochs", "1", "--no-resume", "--init_from", str(bare), "--steps", "1"))
    _, model_at_start, ema_at_start = fits[1]
    assert all(torch.equal(model_at_start[name], ema_at_start[name]) for name in model_at_start)  # EMA = weights
    assert all(torch.equal(model_at_start[name], value) for name, value in state_of(source)["model"].items())
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": [1, 2]}, foreign)
    with pytest.raises(SystemExit, match="holds no model weights"):
        run_training(*tiny_flags(results, "--init_from", str(foreign)))
    with pytest.raises(SystemExit, match=r"does not match this model .*settings that differ: latent_dim: 512 -> 256"):
        run_training(
            *tiny_flags(
                results, "--init_from", str(source / "checkpoints" / "checkpoint_latest.pth"), "--latent_dim", "256"
            )
        )
    with pytest.raises(SystemExit, match="is not a file"):
        run_training(*tiny_flags(results, "--init_from", str(tmp_path / "missing.pth")))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_write_uses_the_umask_mode(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "web.bin", lambda file: file.write(b"data"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "web.bin").stat().st_mode) == 0o666 & ~umask


def test_one_parameter_group_logs_its_lr(tmp_path, monkeypatch):
    """A model with a single optimizer group (no "decoder" group) still logs its lr."""
    build = training.build_optimizer

    def one_group(model, lr, *args):
        optimizer = build(model, lr, *args)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return torch.optim.AdamW(params, lr=lr, betas=optimizer.defaults["betas"])

    monkeypatch.setattr(training, "build_optimizer", one_group)
    run_dir = run_training(*tiny_flags(tmp_path / "results", "--epochs", "1"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [record["lr"] for record in records if "loss" in record]
    assert len(lrs) == 3 and all(lr > 0 for lr in lrs)
