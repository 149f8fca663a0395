"""ARPrior (models/ar_prior.py) and the causal / KV-cache attention of models/layers.py: tiny CPU models."""

import itertools
import math

import pytest
import torch

from models.ar_prior import (
    ARPrior,
    PriorSettings,
    beam_search_log_probs,
    filter_top_k,
    filter_top_p,
    guided_logits,
    sample_logits,
)
from models.layers import Attention, KVCache

VOCABS, LENGTHS = (5, 7), (1, 4)


def make_prior(num_classes: int = 3, vocabs=VOCABS, lengths=LENGTHS, seed: int = 0, **kwargs) -> ARPrior:
    """A tiny prior in eval mode with random (not zero) weights everywhere, so every path changes the logits."""
    torch.manual_seed(seed)
    settings = PriorSettings(vocabs, lengths, num_classes=num_classes, width=32, depth=2, heads=4, **kwargs)
    prior = ARPrior(settings).eval()
    with torch.no_grad():  # far from GPT's N(0, 0.02) start, so distributions are peaked and a wrong path shows
        for table in [*prior.token_embeds, prior.label_embed.table, *prior.heads]:
            table.weight.normal_(std=0.5)
        prior.pos_embed.normal_(std=0.5)
    return prior


def random_tokens(batch: int, vocabs=VOCABS, lengths=LENGTHS, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, v, (batch, n), generator=gen) for v, n in zip(vocabs, lengths)]


def generators(n: int, base: int = 10) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def test_forward_shapes_loss_and_gradients():
    prior = make_prior().train()
    tokens, labels = random_tokens(4), torch.tensor([0, 1, 2, 3])  # 3 = the null class
    logits = prior(tokens, labels)
    assert [tuple(x.shape) for x in logits] == [(4, 1, 5), (4, 4, 7)]
    loss, logs = prior.loss(tokens, labels)
    assert torch.isfinite(loss) and set(logs) == {"loss", "nll_seg0", "nll_seg1"}
    assert logs["loss"] == pytest.approx((logs["nll_seg0"] * 1 + logs["nll_seg1"] * 4) / 5, rel=1e-5)
    loss.backward()
    missing = [name for name, p in prior.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


def test_token_nll_matches_loss_and_tensor_input():
    prior = make_prior()
    tokens, labels = random_tokens(3), torch.tensor([2, 0, 1])
    nll = prior.token_nll(tokens, labels)
    assert nll.shape == (3,)
    assert nll.mean().item() == pytest.approx(prior.loss(tokens, labels)[0].item(), rel=1e-5)
    torch.testing.assert_close(prior.token_nll(torch.cat(tokens, dim=1), labels), nll)


def test_causal_logits_do_not_see_later_tokens():
    prior = make_prior()
    tokens = torch.cat(random_tokens(2), dim=1)  # (2, 5)
    changed = tokens.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % 7  # tokens 3, 4 (fine segment)
    logits_a = prior(tokens, torch.tensor([0, 1]))
    logits_b = prior(changed, torch.tensor([0, 1]))
    # input position p predicts token p from tokens < p: targets 0..3 see tokens 0..2 only
    torch.testing.assert_close(logits_a[0], logits_b[0])
    torch.testing.assert_close(logits_a[1][:, :3], logits_b[1][:, :3])
    assert not torch.allclose(logits_a[1][:, 3], logits_b[1][:, 3])


def test_labels_condition_and_are_validated():
    prior = make_prior()
    tokens = random_tokens(2)
    assert not torch.allclose(prior(tokens, torch.tensor([0, 0]))[1], prior(tokens, torch.tensor([1, 1]))[1])
    torch.testing.assert_close(prior(tokens, None)[1], prior(tokens, torch.tensor([3, 3]))[1])  # None = null
    with pytest.raises(ValueError, match="unconditional"):
        make_prior(num_classes=0)(tokens, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="labels"):
        prior(tokens, torch.tensor([0, 4]))


def test_tokens_are_validated_per_segment():
    prior = make_prior()
    tokens = random_tokens(2)
    tokens[0][0, 0] = 5  # the coarse vocabulary has 5 codes
    with pytest.raises(ValueError, match="segment 0"):
        prior(tokens, None)
    with pytest.raises(ValueError, match="do not fit"):
        prior([random_tokens(2)[0]], None)  # a full sequence is required for teacher forcing


def test_label_dropout_only_in_training():
    prior = make_prior(label_dropout=1.0)
    tokens, labels = random_tokens(3), torch.tensor([0, 1, 2])
    conditional = prior.loss(tokens, labels)[0]
    assert not torch.allclose(conditional, prior.loss(tokens, None)[0])  # eval: labels kept
    prior.train()
    torch.testing.assert_close(prior.loss(tokens, labels)[0], prior.loss(tokens, None)[0])  # all dropped


def test_cached_step_logits_equal_full_recomputation():
    prior = make_prior()
    seq, labels = torch.cat(random_tokens(3), dim=1), torch.tensor([0, 2, 3])
    full = prior(seq, labels)
    decoder, prefix = prior._start(3, labels, 1.0, [seq[:, :1]], use_cache=True)
    stepped = [decoder.start(prefix)]  # logits of token 1
    for position in range(1, seq.shape[1] - 1):
        stepped.append(decoder.step(seq[:, position], None))
    for offset, logits in enumerate(stepped):
        torch.testing.assert_close(logits, full[1][:, offset], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_generate_with_cache_equals_recomputation(cfg):
    prior = make_prior()
    labels = torch.tensor([0, 1, 2])
    cached = prior.generate(3, labels=labels, cfg=cfg, generator=generators(3), use_cache=True)
    recomputed = prior.generate(3, labels=labels, cfg=cfg, generator=generators(3), use_cache=False)
    for a, b in zip(cached, recomputed):
        assert torch.equal(a, b)
    assert [tuple(x.shape) for x in cached] == [(3, 1), (3, 4)]
    assert all(x.min() >= 0 and x.max() < v for x, v in zip(cached, VOCABS))


def test_attention_chunk_after_cache_equals_full_causal():
    torch.manual_seed(0)
    attention = Attention(16, 2).eval()
    x = torch.randn(2, 5, 16)
    full = attention(x, None, None, causal=True)
    cache = KVCache()
    first = attention(x[:, :2], None, None, causal=True, cache=cache)
    chunk = attention(x[:, 2:4], None, None, causal=True, cache=cache)  # two new queries after two cached keys
    last = attention(x[:, 4:], None, None, causal=True, cache=cache)
    torch.testing.assert_close(torch.cat([first, chunk, last], dim=1), full, atol=1e-6, rtol=1e-5)
    assert cache.length == 5


def test_per_image_generators_are_batch_independent():
    prior = make_prior()
    labels = torch.tensor([2, 0, 1])
    batch = prior.generate(3, labels=labels, cfg=2.0, top_p=0.9, generator=generators(3))
    for index in range(3):
        alone = prior.generate(
            1, labels=labels[index : index + 1], cfg=2.0, top_p=0.9, generator=generators(3)[index : index + 1]
        )
        for seg in range(2):
            assert torch.equal(batch[seg][index : index + 1], alone[seg])
    other = prior.generate(3, labels=labels, cfg=2.0, top_p=0.9, generator=generators(3, base=50))
    assert not all(torch.equal(a, b) for a, b in zip(batch, other))


def test_generate_keeps_prefix_and_one_generator_is_reproducible():
    prior = make_prior()
    coarse = torch.tensor([[4], [1]])
    out = prior.generate(2, prefix=[coarse], generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[0], coarse) and out[1].shape == (2, 4)
    again = prior.generate(2, prefix=[coarse], generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[1], again[1])
    full = prior.generate(2, prefix=out)
    assert all(torch.equal(a, b) for a, b in zip(full, out))  # nothing left to generate
    with pytest.raises(ValueError, match="rows"):
        prior.generate(3, prefix=[coarse])


def test_top_k_one_is_greedy():
    prior = make_prior()
    greedy = prior.generate(4, labels=torch.tensor([0, 1, 2, 0]), temperature=0.0)
    top1 = prior.generate(4, labels=torch.tensor([0, 1, 2, 0]), top_k=1, generator=generators(4))
    assert all(torch.equal(a, b) for a, b in zip(greedy, top1))
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9]])
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [[True, False, True, False]]


def test_top_p_keeps_smallest_set_with_mass_at_least_p():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(filter_top_p(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.6) == [False, True, False, True]  # 0.5 + 0.25
    assert kept(0.75) == [False, True, False, True]  # exactly 0.75 reached
    assert kept(0.8) == [False, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    draws = sample_logits(logits.expand(500, 4), top_p=0.6, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 3}


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.1, 0.5, 0.15, 0.25])
    draws = sample_logits(probs.log().expand(8000, 4), generator=torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(frequencies, probs, atol=0.02, rtol=0)
    hot = sample_logits(probs.log().expand(8000, 4), temperature=0.5, generator=torch.Generator().manual_seed(0))
    sharpened = probs**2 / (probs**2).sum()  # softmax(log p / T) at T = 0.5
    torch.testing.assert_close(torch.bincount(hot, minlength=4).float() / 8000, sharpened, atol=0.02, rtol=0)


def test_cfg_weight_one_is_conditional_and_zero_is_unconditional():
    prior = make_prior()
    labels = torch.tensor([0, 2])
    cond, null = torch.randn(2, 7), torch.randn(2, 7)
    torch.testing.assert_close(guided_logits(cond, null, 1.0), cond)
    for cfg, expect_labels in [(1.0, labels), (0.0, None)]:
        guided, prefix = prior._start(2, labels, cfg, [torch.tensor([[1], [3]])], use_cache=True)
        guided.guided = True  # force the doubled batch even at w = 1
        guided.labels = torch.cat([labels, torch.full_like(labels, 3)])
        plain, _ = prior._start(2, expect_labels, 1.0, [torch.tensor([[1], [3]])], use_cache=True)
        torch.testing.assert_close(guided.start(prefix), plain.start(prefix), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(guided.step(torch.tensor([0, 6]), None), plain.step(torch.tensor([0, 6]), None))


def toy_next_log_probs(sequences, parents):
    """Hand-made 2-step distribution: greedy takes token 0 (p 0.6) then at best 0.5 (0.30 in all), while the
    argmax sequence is (1, 1): 0.4 * 0.9 = 0.36."""
    if sequences is None:
        return torch.tensor([[0.6, 0.4]]).log()
    table = {0: [0.5, 0.5], 1: [0.1, 0.9]}
    return torch.tensor([table[int(seq[0])] for seq in sequences]).log()


def test_beam_search_finds_argmax_sequence_greedy_does_not():
    greedy, greedy_logp = beam_search_log_probs(toy_next_log_probs, 1, 2, beam=1)
    assert greedy.tolist() == [[0, 0]] and greedy_logp.item() == pytest.approx(math.log(0.3))
    best, best_logp = beam_search_log_probs(toy_next_log_probs, 1, 2, beam=2)
    assert best.tolist() == [[1, 1]] and best_logp.item() == pytest.approx(math.log(0.36))


def test_beam_search_log_space_does_not_underflow():
    def next_log_probs(sequences, parents):
        rows = 2 if sequences is None else len(sequences)  # n = 2 images at the first step
        return torch.full((rows, 1000), -math.log(1000.0))  # uniform over 1000 codes

    _, log_prob = beam_search_log_probs(next_log_probs, 2, 200, beam=3)  # product would be 1e-600 = 0 in fp64
    torch.testing.assert_close(log_prob, torch.full((2,), -200 * math.log(1000.0)))


def exhaustive_log_probs(prior: ARPrior, everything: torch.Tensor, label: int | None, cfg: float) -> torch.Tensor:
    """log p(sequence) of every sequence under the guided logits l_null + w (l_cond - l_null), by teacher forcing."""
    null = prior(everything, None)
    cond = null if label is None else prior(everything, torch.full((len(everything),), label))
    total = torch.zeros(len(everything))
    for c, u, target in zip(cond, null, prior.split(everything)):
        log_probs = guided_logits(c, u, cfg).log_softmax(dim=-1)
        total += log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(dim=1)
    return total


@pytest.mark.parametrize("labels, cfg", [(None, 1.0), (torch.tensor([1, 0]), 1.0), (torch.tensor([1, 0]), 2.0)])
def test_model_beam_search_with_full_beam_is_exact(labels, cfg):
    # seed 15: image 0's greedy sequence is not its most likely one (unconditional and class 1), so the beams'
    # KV-cache rows must follow their parents for the search to find it
    prior = make_prior(vocabs=(3, 3), lengths=(1, 2), seed=15)
    everything = torch.tensor(list(itertools.product(range(3), repeat=3)))  # all 27 sequences
    tokens, log_prob = prior.beam_search(2, beam=9, labels=labels, cfg=cfg)  # 9 = every 2-token prefix kept
    greedy, _ = prior.beam_search(2, beam=1, labels=labels, cfg=cfg)
    for index in range(2):
        log_probs = exhaustive_log_probs(prior, everything, None if labels is None else int(labels[index]), cfg)
        assert torch.equal(torch.cat(tokens, dim=1)[index], everything[log_probs.argmax()])
        assert log_prob[index].item() == pytest.approx(log_probs.max().item(), abs=1e-4)
    if cfg == 1.0:
        assert not torch.equal(torch.cat(greedy, dim=1)[0], torch.cat(tokens, dim=1)[0])
    sampled_greedy = prior.generate(2, labels=labels, cfg=cfg, temperature=0.0)
    assert all(torch.equal(a, b) for a, b in zip(greedy, sampled_greedy))


def test_beam_search_with_prefix_and_cfg_runs():
    prior = make_prior()
    coarse = torch.tensor([[0], [4]])
    tokens, log_prob = prior.beam_search(2, beam=3, labels=torch.tensor([1, 2]), cfg=3.0, prefix=[coarse])
    assert torch.equal(tokens[0], coarse) and tokens[1].shape == (2, 4)
    assert log_prob.shape == (2,) and bool((log_prob < 0).all())


def test_state_dict_round_trip():
    prior, other = make_prior(seed=0), make_prior(seed=5)
    tokens, labels = random_tokens(2), torch.tensor([0, 1])
    assert not torch.allclose(prior(tokens, labels)[1], other(tokens, labels)[1])
    other.load_state_dict(prior.state_dict())
    torch.testing.assert_close(prior(tokens, labels)[1], other(tokens, labels)[1])


def test_training_learns_a_toy_sequence_distribution():
    prior = make_prior(num_classes=2).train()
    optimizer = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    labels = torch.tensor([0, 1] * 8)
    coarse = labels.unsqueeze(1) * 2  # class 0 -> code 0, class 1 -> code 2
    fine = (torch.arange(4).unsqueeze(0) + labels.unsqueeze(1) * 3) % 7  # a fixed ramp per class
    for _ in range(60):
        loss, _ = prior.loss([coarse, fine], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prior.eval()
    assert prior.token_nll([coarse, fine], labels).mean().item() < 0.3 * math.log(7)
    sample = prior.generate(2, labels=torch.tensor([0, 1]), temperature=0.0)
    assert torch.equal(sample[0], coarse[:2]) and torch.equal(sample[1], fine[:2])


def test_loss_from_logits_equals_loss():
    prior = make_prior()
    tokens, labels = random_tokens(3), torch.tensor([0, 1, 2])
    loss, logs = prior.loss(tokens, labels)
    loss_b, logs_b = prior.loss_from_logits(prior(tokens, labels), tokens)
    torch.testing.assert_close(loss, loss_b)
    assert logs == logs_b
