"""models/diffusion.py against closed forms: schedules, the forward process, targets, the DDPM and DDIM samplers with
an oracle denoiser (the true ε of a fixed x_0), per-image generators and classifier-free guidance."""

from __future__ import annotations

import math

import pytest
import torch

from models.diffusion import Schedule, ddim_sample, ddim_timesteps, ddpm_sample, guided_denoiser

SAMPLERS = {"ddim": ddim_sample, "ddpm": ddpm_sample}


def oracle(schedule: Schedule, x0: torch.Tensor, prediction: str):
    """The denoiser that knows x_0: it returns the ε (or v) that makes x_t consistent with x_0."""

    def denoise(x_t, t):
        alpha_bar = schedule.alphas_bar[t].to(x_t).view(-1, 1, 1, 1)
        eps = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        return eps if prediction == "eps" else alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0

    return denoise


def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def test_schedules_decrease_from_one_and_the_linear_one_ends_near_4e_5():
    linear = Schedule(1000, "linear", 1e-4, 0.02)
    assert len(linear) == 1000 and linear.alphas_bar.shape == (1001,)
    assert linear.betas[0] == 0 and linear.alphas_bar[0] == 1
    assert linear.alphas_bar[-1].item() == pytest.approx(4.04e-5, rel=0.01)  # DDPM's ᾱ_T
    cosine = Schedule(1000, "cosine")
    assert cosine.betas.max() <= 0.999 and cosine.alphas_bar[-1] < 1e-4
    for schedule in (linear, cosine, Schedule(10, "linear", 0.1, 0.5)):
        assert (schedule.alphas_bar.diff() < 0).all()


def test_cosine_schedule_follows_nichol_and_dhariwal():
    schedule, s = Schedule(1000, "cosine"), 0.008
    f = [math.cos((t / 1000 + s) / (1 + s) * math.pi / 2) ** 2 for t in (0, 250, 500)]
    assert schedule.alphas_bar[250].item() == pytest.approx(f[1] / f[0], rel=1e-9)
    assert schedule.alphas_bar[500].item() == pytest.approx(f[2] / f[0], rel=1e-9)


@pytest.mark.parametrize("settings", [dict(kind="sigmoid"), dict(timesteps=0), dict(beta_end=1.5)])
def test_bad_schedules_are_refused(settings):
    with pytest.raises(ValueError):
        Schedule(**settings)


def test_training_timesteps_cover_1_to_T_both_ends_included():
    schedule = Schedule(1000)
    t = schedule.training_timesteps(100_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and set(t.tolist()) == set(range(1, 1001))


def test_q_sample_moments_by_monte_carlo():
    schedule, samples = Schedule(1000), 200_000
    x0 = torch.tensor([-0.8, 0.3, 1.0], dtype=torch.float64).view(1, 3, 1, 1).expand(samples, 3, 1, 1)
    torch.manual_seed(0)
    for step in (1, 100, 500, 1000):
        t = torch.full((samples,), step)
        x_t = schedule.q_sample(x0, t, torch.randn(x0.shape, dtype=torch.float64))
        alpha_bar = schedule.alphas_bar[step].item()
        torch.testing.assert_close(x_t.mean(0), math.sqrt(alpha_bar) * x0[0], atol=0.01, rtol=0)
        torch.testing.assert_close(x_t.var(0), torch.full_like(x0[0], 1 - alpha_bar), atol=0.01, rtol=0.01)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_targets_and_predictions_invert_each_other(prediction):
    schedule, torch_gen = Schedule(1000, "cosine"), torch.Generator().manual_seed(1)
    x0, noise = torch.randn(5, 2, 3, 3, generator=torch_gen), torch.randn(5, 2, 3, 3, generator=torch_gen)
    t = torch.tensor([1, 10, 300, 700, 999])
    x_t = schedule.q_sample(x0, t, noise)
    x0_hat, eps_hat = schedule.predict_x0_eps(x_t, t, schedule.training_target(x0, noise, t, prediction), prediction)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_hat, noise, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction"):
        schedule.training_target(x0, noise, t, "x0")


def test_ddim_timesteps_are_evenly_spaced_from_T_to_0():
    assert ddim_timesteps(1000, 10) == list(range(1000, -1, -100))
    assert ddim_timesteps(1000, 1) == [1000, 0]
    assert ddim_timesteps(10, 10) == list(range(10, -1, -1))
    times = ddim_timesteps(1000, 7)
    assert len(times) == 8 and all(a > b for a, b in zip(times, times[1:]))
    for steps in (0, 1001):
        with pytest.raises(ValueError, match="steps"):
            ddim_timesteps(1000, steps)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_with_the_true_eps_recover_x0_exactly(kind, prediction, sampler):
    schedule, torch_gen = Schedule(1000, kind), torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 2, 4, 4, generator=torch_gen, dtype=torch.float64)
    x_T = torch.randn(3, 2, 4, 4, generator=torch_gen, dtype=torch.float64)
    for steps in (1, 7, 50, 1000):
        out = SAMPLERS[sampler](oracle(schedule, x0, prediction), schedule, x_T, steps, prediction=prediction)
        torch.testing.assert_close(out, x0, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_ddpm_adds_no_noise_at_the_final_step(steps):
    """The output is the posterior mean at t = 0 (x̂_0 of the last call), and only steps - 1 noise draws happen."""
    schedule, calls = Schedule(1000), []

    def denoise(x, t):
        calls.append((x, t))
        return 0.3 * x + 0.1

    generator = torch.Generator().manual_seed(3)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    out = ddpm_sample(denoise, schedule, x_T, steps, generator=generator)
    x_last, t_last = calls[-1]
    torch.testing.assert_close(out, schedule.predict_x0_eps(x_last, t_last, denoise(x_last, t_last), "eps")[0])
    reference = torch.Generator().manual_seed(3)
    for _ in range(steps - 1):
        torch.randn(2, 3, 4, 4, generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())


def test_ddim_is_deterministic_given_x_T_and_eta_draws_noise():
    schedule = Schedule(1000)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))

    def denoise(x, t):
        return torch.tanh(x) * t.view(-1, 1, 1, 1) / 1000

    def run(eta, seed):
        return ddim_sample(denoise, schedule, x_T, 10, eta=eta, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0.0, 0), run(0.0, 1))
    assert torch.equal(run(1.0, 0), run(1.0, 0)) and not torch.allclose(run(1.0, 0), run(1.0, 1))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_per_image_generators_make_an_image_independent_of_its_batch(sampler):
    schedule = Schedule(100)

    def denoise(x, t):
        return 0.5 * x  # works per image

    def run(seeds):
        gens = generators(seeds)
        x_T = torch.stack([torch.randn(3, 4, 4, generator=g) for g in gens])
        kwargs = dict(eta=1.0) if sampler == "ddim" else {}
        return SAMPLERS[sampler](denoise, schedule, x_T, 20, generator=gens, **kwargs)

    batch = run([7, 8, 9])
    torch.testing.assert_close(run([8])[0], batch[1])
    torch.testing.assert_close(run([9, 7])[1], batch[0])


def test_return_all_lists_x0_predictions_ending_with_the_sample():
    schedule = Schedule(1000)
    x_T = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(6))

    def denoise(x, t):
        return 0.2 * x

    outputs = ddim_sample(denoise, schedule, x_T, 5, return_all=True)
    assert len(outputs) == 5 and torch.equal(outputs[-1], ddim_sample(denoise, schedule, x_T, 5))


def test_classifier_free_guidance_combines_conditional_and_null_outputs():
    def model(x, t, labels):  # the output depends on the label, so guidance is visible
        return x * (1 + labels.view(-1, 1, 1, 1).float()) + t.view(-1, 1, 1, 1)

    x, t, labels, null = torch.randn(3, 2, 2, 2), torch.tensor([5, 6, 7]), torch.tensor([0, 1, 2]), 10
    cond, uncond = model(x, t, labels), model(x, t, torch.full_like(labels, null))
    torch.testing.assert_close(guided_denoiser(model, labels, null, 1.0)(x, t), cond)
    torch.testing.assert_close(guided_denoiser(model, labels, null, 0.0)(x, t), uncond)
    torch.testing.assert_close(guided_denoiser(model, labels, null, 3.0)(x, t), uncond + 3.0 * (cond - uncond))
    torch.testing.assert_close(guided_denoiser(model, labels, null, 1.0 + 1e-12)(x, t), cond)  # the two-pass path


# ---------------------------------------------------------------------------------------------------------
# Dev-only cross-check against diffusers' schedulers (skipped where diffusers is not installed; never a dependency)

DIFFUSERS_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
DIFFUSERS_PREDICTIONS = {"eps": "epsilon", "v": "v_prediction"}


def diffusers_scheduler(name: str, kind: str, prediction: str, steps: int):
    """diffusers' DDPM/DDIM scheduler set up as ours: T = 1000, trailing spacing, ᾱ = 1 after the last step."""
    diffusers = pytest.importorskip("diffusers")
    settings = dict(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule=DIFFUSERS_SCHEDULES[kind],
        prediction_type=DIFFUSERS_PREDICTIONS[prediction], clip_sample=False, timestep_spacing="trailing",
    )  # fmt: skip
    if name == "ddim":
        scheduler = diffusers.DDIMScheduler(**settings, set_alpha_to_one=True)
    else:
        scheduler = diffusers.DDPMScheduler(**settings, variance_type="fixed_small")
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedules_match_diffusers(kind):
    scheduler = diffusers_scheduler("ddpm", kind, "eps", 10)
    ours = Schedule(1000, kind).alphas_bar[1:].float()  # our t = k + 1 is diffusers' timestep k
    torch.testing.assert_close(ours, scheduler.alphas_cumprod, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_sampling_loops_match_diffusers(sampler, prediction, kind):
    """The same toy denoiser, x_T and noise sequence through our loop and diffusers' step(): the same x_0."""
    steps, eta = 10, 0.7
    scheduler = diffusers_scheduler(sampler, kind, prediction, steps)
    assert [int(t) + 1 for t in scheduler.timesteps] == ddim_timesteps(1000, steps)[:-1]

    def denoise(x, t):  # our t (1..T)
        return torch.tanh(x) * (0.5 + t.view(-1, 1, 1, 1) / 2000)

    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(11))  # float32: our noise dtype
    generator = torch.Generator().manual_seed(12)
    kwargs = dict(eta=eta) if sampler == "ddim" else {}
    ours = SAMPLERS[sampler](
        denoise, Schedule(1000, kind), x_T, steps, prediction=prediction, generator=generator, **kwargs
    )
    generator, x = torch.Generator().manual_seed(12), x_T
    for t in scheduler.timesteps:
        output = denoise(x, torch.full((len(x),), int(t) + 1))
        if sampler == "ddim":
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) if t > scheduler.timesteps[-1] else None
            x = scheduler.step(output, t, x, eta=eta, variance_noise=noise).prev_sample
        else:
            x = scheduler.step(output, t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
