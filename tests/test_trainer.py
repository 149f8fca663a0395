"""The trainer's GPU recipe, checked on the CPU: logs summed without a host sync, the EMA's on-device skip, data
stacked on the device, the compile fallback, channels_last inputs, and which settings CUDA turns on."""

import json
import subprocess
import sys

import pytest
import torch

import training
from engine.distributed import DistInfo
from engine.optim import EMA, build_optimizer, load_optimizer_state
from engine.setup import train_settings
from engine.trainer import LogSums, epoch_summary, prefers_channels_last
from models import build_model
from tests.test_training import REPO, run_training, state_of, tiny_flags

CUDA = torch.device("cuda")  # a device object only: nothing here runs on it


def test_log_sums_average_tensors_and_floats_and_keep_maxima():
    sums = LogSums()
    sums.add({"loss": torch.tensor(1.0), "kappa_max": torch.tensor(3.0), "grad_norm": 0.5})
    sums.add({"loss": torch.tensor(3.0, requires_grad=True), "kappa_max": 2.0, "grad_norm": torch.tensor(1.5)})
    sums.add({"loss": torch.tensor(2.0), "d_loss": torch.tensor(4.0)})  # a term that starts late
    assert sums.means() == {"loss": 2.0, "kappa_max": 3.0, "grad_norm": 1.0, "d_loss": 4.0}
    assert epoch_summary(sums.means()) == "loss 2 | kappa_max 3 | grad_norm 1 | d_loss 4"
    assert LogSums().means() == {}


def test_ema_skip_keeps_the_average_and_its_buffers():
    model = build_model("convnet_tiny", image_size=16, norm="batch")
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        for tensor in [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]:
            tensor.add_(1.0)
    kept = {name: t.clone() for name, t in ema.model.state_dict().items()}
    ema.update(model, skip=torch.ones(()))
    assert all(torch.equal(kept[name], t) for name, t in ema.model.state_dict().items())
    plain = EMA(model, decay=0.9)
    plain.model.load_state_dict(kept)
    ema.updates = plain.updates = 0
    ema.update(model, skip=torch.zeros(()))
    plain.update(model)
    for (name, a), b in zip(ema.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    changed = {name for name, t in ema.model.state_dict().items() if not torch.equal(kept[name], t)}
    assert any(name.endswith("weight") for name in changed) and any("running_mean" in name for name in changed)


def test_channels_last_is_for_conv_models_on_cuda():
    conv, vit = (build_model(name, image_size=16) for name in ("convnet_tiny", "vit_tiny"))
    assert prefers_channels_last(conv, CUDA) and not prefers_channels_last(vit, CUDA)
    assert not prefers_channels_last(conv, torch.device("cpu"))


def test_tf32_is_set_the_way_inductor_can_read_it():
    """enable_tf32 (in a fresh process: it is global) leaves torch.get_float32_matmul_precision() readable, which
    inductor calls while compiling, and CPU matmuls in full fp32."""
    code = (
        "import torch; from engine.trainer import enable_tf32; enable_tf32(); "
        "print(torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.fp32_precision, "
        "torch.backends.cudnn.conv.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["high", "tf32", "tf32", "none"]


def test_compile_is_on_by_default_on_cuda_only(tmp_path):
    args = training.parse_args(tiny_flags(tmp_path))
    assert args.compile is None
    on = lambda device: train_settings(args, None, DistInfo(device=device)).compile  # noqa: E731
    assert on(CUDA) and not on(torch.device("cpu"))
    args.compile = False
    assert not on(CUDA)


def flat_state(run_dir) -> dict:
    ckpt = state_of(run_dir)
    return {f"{key}.{name}": t for key in ("model", "ema") for name, t in ckpt[key].items()}


class BrokenCompile(torch.nn.Module):
    """What torch.compile returns when compiling fails: the failure shows at the first call."""

    def __init__(self, module):
        super().__init__()
        self.module = module  # the losses reach the real model through .module, as through DDP

    def forward(self, *args, **kwargs):
        raise RuntimeError("backend 'inductor' failed: no C++ compiler\nsecond line")


def test_device_data_and_compile_fallback_train_the_same_weights(tmp_path, monkeypatch):
    """Batches indexed on the device equal the DataLoader's; a compilation that fails at the first step logs one
    line and the run continues uncompiled from the same random state: all three runs end with equal weights."""
    flags = ("--epochs", "1", "--model_type", "convnet_tiny")
    loader = run_training(*tiny_flags(tmp_path / "loader", *flags, "--no-data_on_device"))
    stacked = run_training(*tiny_flags(tmp_path / "stacked", *flags, "--data_on_device"))
    monkeypatch.setattr("engine.trainer.torch.compile", BrokenCompile)
    compiled = run_training(*tiny_flags(tmp_path / "compiled", *flags, "--compile"))
    assert "stacked on cpu" in (stacked / "log.txt").read_text()
    assert "stacked on" not in (loader / "log.txt").read_text()
    failures = [line for line in (compiled / "log.txt").read_text().splitlines() if "torch.compile failed" in line]
    assert len(failures) == 1 and "no C++ compiler second line" in failures[0] and "--no-compile" in failures[0]
    reference = flat_state(loader)
    for run in (stacked, compiled):
        assert all(torch.equal(reference[name], t) for name, t in flat_state(run).items()), run
    config = json.loads((compiled / "config.json").read_text())
    assert config["train"]["compile"] is True  # recorded, but never taken over by a resume (per invocation)


def test_channels_last_inputs_reach_the_loss(tmp_path, monkeypatch):
    from losses import SphereLoss

    seen, call = [], SphereLoss.__call__

    def recording(self, model, batch, step):
        seen.append(batch[0].is_contiguous(memory_format=torch.channels_last))
        return call(self, model, batch, step)

    monkeypatch.setattr(SphereLoss, "__call__", recording)
    monkeypatch.setattr("engine.trainer.prefers_channels_last", lambda model, device: True)
    monkeypatch.setattr(training, "prefers_channels_last", lambda model, device: True)
    run_dir = run_training(*tiny_flags(tmp_path, "--epochs", "1", "--model_type", "convnet_tiny"))
    assert seen == [True] * 3 and state_of(run_dir)["step"] == 3


def step_records(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if "loss" in record]


def test_metrics_hold_the_mean_of_each_window(tmp_path):
    """Logging every 2 steps writes the mean of the 2 steps' terms (logging never changes the training)."""
    flags = ("--epochs", "1", "--steps", "4", "--log_every")
    every_step = step_records(run_training(*tiny_flags(tmp_path / "a", *flags, "1")))
    every_two = step_records(run_training(*tiny_flags(tmp_path / "b", *flags, "2")))
    assert [r["step"] for r in every_two] == [2, 4]
    for record, pair in zip(every_two, (every_step[:2], every_step[2:])):
        for name in ("loss", "grad_norm", "recon_dist"):
            assert isinstance(record[name], float)
            assert record[name] == pytest.approx((pair[0][name] + pair[1][name]) / 2, rel=1e-5), name


def test_threads_flag_sets_torch_threads_and_the_log_says_so(tmp_path):
    before = torch.get_num_threads()
    try:
        run_dir = run_training(*tiny_flags(tmp_path, "--epochs", "1", "--steps", "1", "--threads", "2"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert "| cpu | 2 threads" in (run_dir / "log.txt").read_text()
    assert json.loads((run_dir / "config.json").read_text())["train"]["threads"] == 2


def test_a_checkpoint_of_an_unfused_optimizer_resumes_fused():
    """Older CPU runs saved unfused AdamW groups; loading them keeps this optimizer fused, so found_inf still
    skips a step (an unfused AdamW refuses found_inf)."""
    model = build_model("vit_tiny", image_size=16)
    args = (1e-3, {}, (0.9, 0.95), 0.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("engine.optim.FUSED_DEVICES", set())
        unfused = build_optimizer(model, *args)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    unfused.step()
    fused = build_optimizer(model, *args)
    load_optimizer_state(fused, unfused.state_dict())
    assert fused.defaults["fused"] and all(group["fused"] for group in fused.param_groups)
    fused.found_inf = torch.ones(())
    kept = [param.detach().clone() for param in model.parameters()]
    fused.step()
    assert all(torch.equal(a, b) for a, b in zip(kept, model.parameters()))
    fused.found_inf = torch.zeros(())
    fused.step()
    assert not torch.equal(kept[0], next(model.parameters()))
