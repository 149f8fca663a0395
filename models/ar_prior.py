"""Autoregressive prior over token sequences (somar family, stage 3): a decoder-only causal transformer.

The sequence is [class token (or the null class), segment 0 tokens, segment 1 tokens, ...]; input position p
(0 = class) predicts token p, so the last token is never an input. Each segment (a codebook level: coarse -> fine)
has its own embedding table and output head, so a token can only be one of its level's codes (no END token, no
shared vocabulary to mask). Generation decodes one token per forward with a KV cache; beam search keeps the best
partial sequences by summed log-probabilities (FAMILIES.md §3.3 bugs 3-5, 8, 11 are what this replaces).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import KVCache, LabelEmbedding, TransformerBlock

# next_log_probs(sequences (M, t), parents (M,)) -> (M, V_t) log-probabilities of token t; at t = 0 both are None, M = n
NextLogProbs = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class PriorSettings:
    """Architecture of an ARPrior; the owning family's config fills it."""

    vocab_sizes: tuple[int, ...]  # one vocabulary per segment, e.g. (K_coarse, K_fine)
    segment_lengths: tuple[int, ...]  # tokens per segment, e.g. (1, 16); the sequence is their concatenation
    num_classes: int = 0  # 0 = unconditional; else labels 0..num_classes-1 and a null class num_classes for CFG
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0  # on the input embeddings
    label_dropout: float = 0.1  # training: fraction of labels replaced by the null class, so CFG has an uncond model

    def __post_init__(self):
        self.vocab_sizes, self.segment_lengths = tuple(self.vocab_sizes), tuple(self.segment_lengths)
        if len(self.vocab_sizes) != len(self.segment_lengths) or not self.vocab_sizes:
            raise ValueError(f"vocab_sizes {self.vocab_sizes} and segment_lengths {self.segment_lengths} must pair up")
        if min(self.vocab_sizes) < 1 or min(self.segment_lengths) < 1:
            raise ValueError("every segment needs a vocabulary of at least 1 and at least 1 token")

    @property
    def length(self) -> int:
        """Tokens in a full sequence (the class token not counted)."""
        return sum(self.segment_lengths)

    def segment_of(self) -> list[int]:
        """Segment index of each token position 0..length-1."""
        return [seg for seg, count in enumerate(self.segment_lengths) for _ in range(count)]


def per_image_uniform(n: int, generator, device: torch.device | str) -> torch.Tensor:
    """U[0, 1) draws (n,); `generator` None, one torch.Generator, or a list of n (one per image, batch-independent)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for {n} images")
        return torch.cat([torch.rand(1, generator=g, device=g.device).to(device) for g in generator])
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


def filter_top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Keeps the top_k largest logits of each row (others -inf); None or >= V keeps all."""
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (M, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: float | None) -> torch.Tensor:
    """Nucleus filter: keeps the smallest set of most likely tokens whose probability mass is >= top_p."""
    if top_p is None or top_p >= 1.0:
        return logits
    if top_p <= 0.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)
    mass_before = probs.cumsum(dim=-1) - probs  # a token is kept while the mass above it is still < top_p
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, generator=None
) -> torch.Tensor:
    """One token per row of logits (M, V) by inverse-CDF sampling of softmax(logits / T) after top-k / top-p;
    temperature 0 = greedy. One uniform per row, so per-image generators give batch-independent tokens."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = filter_top_p(filter_top_k(logits.float() / temperature, top_k), top_p)
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)  # (M, V)
    u = per_image_uniform(len(logits), generator, logits.device).unsqueeze(1) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max(logits.shape[-1] - 1)


def beam_search_log_probs(
    next_log_probs: NextLogProbs, n: int, length: int, beam: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search over `length` tokens for n independent sequences: keeps the `beam` partial sequences with the
    largest summed log-probability (log space: no underflow on long sequences). Returns the best full sequence
    (n, length) and its log-probability (n,). beam = 1 is greedy decoding."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    sequences, scores, parents = None, None, None
    for _ in range(length):
        log_probs = next_log_probs(sequences, parents)  # (n * live, V)
        vocab = log_probs.shape[-1]
        live = 1 if scores is None else scores.shape[1]
        previous = 0.0 if scores is None else scores.unsqueeze(-1)
        total = (previous + log_probs.float().view(n, live, vocab)).view(n, live * vocab)
        scores, flat = total.topk(min(beam, live * vocab), dim=-1)  # (n, beam), best first
        parents = (flat // vocab + live * torch.arange(n, device=flat.device).unsqueeze(1)).view(-1)
        tokens = (flat % vocab).view(-1, 1)
        sequences = tokens if sequences is None else torch.cat([sequences[parents], tokens], dim=1)
    return sequences.view(n, -1, length)[:, 0], scores[:, 0]


class ARPrior(nn.Module):
    """Decoder-only causal transformer over [class, seg0, seg1, ...] with learned 1-D positions; position i
    predicts token i; one embedding table and output head per segment; the null class (index num_classes)
    serves unconditional modelling and classifier-free guidance."""

    def __init__(self, settings: PriorSettings):
        super().__init__()
        self.settings = s = settings
        self.segments = s.segment_of()  # segment of each token position
        self.label_embed = LabelEmbedding(s.num_classes, s.width)
        self.token_embeds = nn.ModuleList(nn.Embedding(vocab, s.width) for vocab in s.vocab_sizes)
        self.pos_embed = nn.Parameter(torch.zeros(1, s.length, s.width))  # input positions 0 (class) .. L-1
        self.drop = nn.Dropout(s.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(s.width, s.heads, s.mlp_ratio) for _ in range(s.depth))
        self.norm = nn.RMSNorm(s.width, eps=1e-6)
        self.heads = nn.ModuleList(nn.Linear(s.width, vocab) for vocab in s.vocab_sizes)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 style N(0, 0.02) embeddings, positions and heads (zero head biases)."""
        for table in [*self.token_embeds, self.label_embed.table]:
            nn.init.normal_(table.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    @property
    def null_label(self) -> int:
        return self.settings.num_classes

    def sequence(self, tokens: list[torch.Tensor] | torch.Tensor, full: bool = True) -> torch.Tensor:
        """Concatenates per-segment tokens [(B, L_s), ...] (leading segments only when not full) into (B, N),
        checking shapes and that each token is a code of its segment; a tensor is taken as already concatenated."""
        seq = torch.cat(list(tokens), dim=1) if isinstance(tokens, (list, tuple)) else tokens
        if seq.ndim != 2 or seq.shape[1] > self.settings.length or (full and seq.shape[1] != self.settings.length):
            raise ValueError(f"tokens of shape {tuple(seq.shape)} do not fit segments {self.settings.segment_lengths}")
        for seg, (start, stop) in enumerate(self._bounds(0, seq.shape[1])):
            part = seq[:, start:stop]
            if part.numel() and (part.min() < 0 or part.max() >= self.settings.vocab_sizes[seg]):
                raise ValueError(f"segment {seg} tokens must be in [0, {self.settings.vocab_sizes[seg]})")
        return seq.long()

    def split(self, seq: torch.Tensor, first: int = 0) -> list[torch.Tensor]:
        """(B, N, ...) over token positions first.. -> one tensor per segment it touches."""
        return [seq[:, start - first : stop - first] for start, stop in self._bounds(first, first + seq.shape[1])]

    def _bounds(self, first: int, stop: int) -> list[tuple[int, int]]:
        """Per segment, the [start, stop) token positions it covers inside [first, stop) (empty ones dropped after
        the last touched segment; leading ones kept empty so list index = segment index)."""
        bounds, offset = [], 0
        for count in self.settings.segment_lengths:
            start, end = max(offset, first), min(offset + count, stop)
            if start >= stop:
                break
            bounds.append((start, max(start, end)))
            offset += count
        return bounds

    def labels_or_null(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """(B,) labels; None = the null class (unconditional)."""
        if labels is None:
            return torch.full((batch,), self.null_label, dtype=torch.long, device=device)
        if self.settings.num_classes == 0:
            raise ValueError("this prior is unconditional (num_classes=0); do not pass class labels")
        if labels.shape != (batch,) or labels.min() < 0 or labels.max() > self.null_label:
            raise ValueError(f"labels must be (B,) = ({batch},) in [0, {self.null_label}] (the last is null)")
        return labels.to(device=device, dtype=torch.long)

    def embed_tokens(self, tokens: torch.Tensor, first: int) -> torch.Tensor:
        """Tokens (B, n) at token positions first..first+n-1 -> embeddings (B, n, W), each by its segment's table."""
        parts = self.split(tokens, first)
        embedded = [self.token_embeds[seg](part) for seg, part in enumerate(parts) if part.shape[1]]
        if not embedded:
            return tokens.new_zeros((tokens.shape[0], 0, self.settings.width), dtype=self.pos_embed.dtype)
        return torch.cat(embedded, dim=1)

    def hidden(self, x: torch.Tensor, start: int, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Inputs x (B, n, W) at input positions start..start+n-1 (after any cached ones) -> normed hidden."""
        x = self.drop(x + self.pos_embed[:, start : start + x.shape[1]])
        for index, block in enumerate(self.blocks):
            x = block(x, None, None, causal=True, cache=None if caches is None else caches[index])
        return self.norm(x)

    def head(self, h: torch.Tensor, position: int) -> torch.Tensor:
        """Hidden (M, W) of input position `position` -> logits (M, V_s) of token `position`."""
        return self.heads[self.segments[position]](h)

    def forward(self, tokens: list[torch.Tensor] | torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        """Teacher forcing: one logits tensor (B, L_s, V_s) per segment for every target token."""
        seq = self.sequence(tokens)  # (B, L)
        labels = self.labels_or_null(labels, len(seq), seq.device)
        x = torch.cat([self.label_embed(labels).unsqueeze(1), self.embed_tokens(seq[:, :-1], 0)], dim=1)  # (B, L, W)
        h = self.hidden(x, 0)
        return [head(part) for head, part in zip(self.heads, self.split(h, 0))]

    def per_token_nll(self, logits: list[torch.Tensor], tokens) -> list[torch.Tensor]:
        """Cross-entropy (B, L_s) in nats per segment of forward's logits against the tokens they predict."""
        targets = self.split(self.sequence(tokens), 0)
        return [
            F.cross_entropy(lg.float().transpose(1, 2), target, reduction="none") for lg, target in zip(logits, targets)
        ]

    def drop_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """In training, replaces a `label_dropout` fraction of labels by the null class (CFG's unconditional model)."""
        if labels is None or not self.training or self.settings.label_dropout <= 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < self.settings.label_dropout
        return torch.where(drop, torch.full_like(labels, self.null_label), labels)

    def loss(self, tokens, labels) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy over all target tokens; logs the NLL (nats/token) overall and per segment."""
        return self.loss_from_logits(self.forward(tokens, self.drop_labels(labels)), tokens)

    def loss_from_logits(self, logits: list[torch.Tensor], tokens) -> tuple[torch.Tensor, dict]:
        """loss() from forward's logits, for callers that must run forward through a wrapper (DDP, compile)."""
        nll = self.per_token_nll(logits, tokens)
        loss = torch.cat([part.flatten() for part in nll]).mean()
        values = torch.stack([loss.detach(), *(part.detach().mean() for part in nll)]).tolist()  # one sync
        return loss, dict(zip(["loss", *(f"nll_seg{seg}" for seg in range(len(nll)))], values))

    def token_nll(self, tokens, labels) -> torch.Tensor:
        """(B,) mean NLL per token in nats (log K for a uniform prior over K codes)."""
        return torch.cat(self.per_token_nll(self.forward(tokens, labels), tokens), dim=1).mean(dim=1)

    def _start(self, n: int, labels, cfg: float, prefix, use_cache: bool) -> tuple[_Decoder, torch.Tensor]:
        """The decoding state after the class token and prefix, and the prefix (n, P)."""
        device = self.pos_embed.device
        labels = None if labels is None else labels.to(device)
        seq = self.sequence(prefix, full=False) if prefix else torch.zeros((n, 0), dtype=torch.long, device=device)
        if len(seq) != n:
            raise ValueError(f"prefix has {len(seq)} rows for {n} images")
        decoder = _Decoder(self, self.labels_or_null(labels, n, device), labels is not None and cfg != 1.0, cfg)
        decoder.caches = [KVCache() for _ in self.blocks] if use_cache else None
        return decoder, seq.to(device)

    @torch.no_grad()
    def generate(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        cfg: float = 1.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator=None,
        prefix: list[torch.Tensor] | None = None,
        use_cache: bool = True,
    ) -> list[torch.Tensor]:
        """n sequences, one (n, L_s) tensor per segment (prefix segments included as given). labels None =
        unconditional (null class, cfg unused); cfg w: l_null + w (l_cond - l_null) on logits; temperature 0 = greedy;
        generator None, one, or a list of n; use_cache False recomputes the whole sequence each token (tests)."""
        decoder, seq = self._start(n, labels, cfg, prefix, use_cache)
        if seq.shape[1] == self.settings.length:
            return self.split(seq, 0)
        token = sample_logits(decoder.start(seq), temperature, top_k, top_p, generator)  # (n,)
        for _ in range(seq.shape[1] + 1, self.settings.length):
            token = sample_logits(decoder.step(token, None), temperature, top_k, top_p, generator)
        return self.split(torch.cat([decoder.tokens[:n], token.unsqueeze(1)], dim=1), 0)

    @torch.no_grad()
    def beam_search(
        self, n: int, beam: int, labels: torch.Tensor | None = None, cfg: float = 1.0, prefix=None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The most likely continuation of each image's prefix by beam search (summed log-probabilities of the
        guided logits); returns its tokens, one (n, L_s) per segment, and its log-probability (n,)."""
        decoder, seq = self._start(n, labels, cfg, prefix, use_cache=True)

        def next_log_probs(sequences: torch.Tensor | None, parents: torch.Tensor | None) -> torch.Tensor:
            if sequences is None:
                return decoder.start(seq).float().log_softmax(dim=-1)
            return decoder.step(sequences[:, -1], parents).float().log_softmax(dim=-1)

        length = self.settings.length - seq.shape[1]
        if length == 0:
            return self.split(seq, 0), torch.zeros(n, device=seq.device)
        tokens, log_prob = beam_search_log_probs(next_log_probs, n, length, beam)
        return self.split(torch.cat([seq, tokens], dim=1), 0), log_prob


class _Decoder:
    """Incremental decoding state: the tokens fed so far, a KV cache per block (None = recompute everything each
    token), the labels, and CFG (the batch doubled as [conditional rows, null rows])."""

    def __init__(self, prior: ARPrior, labels: torch.Tensor, guided: bool, cfg: float):
        self.prior, self.guided, self.cfg = prior, guided, cfg
        self.labels = torch.cat([labels, torch.full_like(labels, prior.null_label)]) if guided else labels
        self.caches: list[KVCache] | None = None
        self.tokens = torch.zeros((len(self.labels), 0), dtype=torch.long, device=labels.device)

    def start(self, prefix: torch.Tensor) -> torch.Tensor:
        """Feeds the class token and the prefix (n, P); returns the (guided) logits (n, V) of token P."""
        self.tokens = torch.cat([prefix, prefix]) if self.guided else prefix
        return self._logits(self.prior.hidden(self._inputs(), 0, self.caches)[:, -1], prefix.shape[1])

    def step(self, token: torch.Tensor, parents: torch.Tensor | None) -> torch.Tensor:
        """Keeps rows `parents` (beam search; None = all, in order), appends token (M,); returns logits of the next."""
        if parents is not None:
            self._reorder(parents)
        position = self.tokens.shape[1]  # token position of `token`
        token = torch.cat([token, token]) if self.guided else token
        self.tokens = torch.cat([self.tokens, token.unsqueeze(1)], dim=1)
        if self.caches is None:  # full recomputation: the reference the cache must equal
            return self._logits(self.prior.hidden(self._inputs(), 0)[:, -1], position + 1)
        x = self.prior.embed_tokens(token.unsqueeze(1), position)  # input position position + 1
        return self._logits(self.prior.hidden(x, position + 1, self.caches)[:, -1], position + 1)

    def _inputs(self) -> torch.Tensor:
        """Input embeddings (M, 1 + t, W) of the class token and every token fed so far."""
        label = self.prior.label_embed(self.labels).unsqueeze(1)
        return torch.cat([label, self.prior.embed_tokens(self.tokens, 0)], dim=1)

    def _reorder(self, parents: torch.Tensor) -> None:
        rows = len(self.labels) // 2 if self.guided else len(self.labels)
        index = torch.cat([parents, parents + rows]) if self.guided else parents
        self.labels, self.tokens = self.labels[index], self.tokens[index]
        for cache in self.caches or []:
            cache.reorder(index)

    def _logits(self, h: torch.Tensor, position: int) -> torch.Tensor:
        logits = self.prior.head(h, position).float()  # (M or 2M, V)
        if not self.guided:
            return logits
        cond, null = logits.chunk(2)
        return guided_logits(cond, null, self.cfg)


def guided_logits(cond: torch.Tensor, null: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance on logits: l_null + w (l_cond - l_null); w = 1 is the conditional logits."""
    return null + cfg * (cond - null)
