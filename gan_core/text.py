"""Text conditioning for text-to-image families: a caption encoder trained with the GAN, StackGAN's
conditioning augmentation, and the per-step choice of one caption per image.

No pretrained char-CNN-RNN (StackGAN's) is available here, so the encoder is small and trained from
scratch, end to end, by the loss of the network that owns it: G's encoder by G's adversarial + KL
loss, each D's encoder by D's matching-aware loss (real image with mismatched text is fake). There is
no separate matching/pretraining loss: a D that must reject (real image, wrong caption) pairs can
only do so by reading colour/shape/size/position words, which is what its encoder learns.

Ids follow gan_core.captions: 0 pads, 1 is UNK; the vocabulary is sorted by falling count, so ids >=
`vocab` (the encoder's capacity) are the vocabulary's rarest words and are read as UNK.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_core.captions import PAD, UNK


class TextEncoder(nn.Module):
    """(B, L) int64 ids -> (B, dim): word embeddings, a width-3 conv over the sequence (neighbouring
    words: "top left"), ReLU, mean over the real (non-pad) positions, linear. Pads are masked out of
    both the conv's input (their embedding is zero) and the mean, so padding length never matters."""

    def __init__(self, vocab: int, dim: int, width: int = 64):
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, width, padding_idx=PAD)
        self.conv = nn.Conv1d(width, width, 3, padding=1)
        self.out = nn.Linear(width, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = torch.where(tokens >= self.vocab, torch.full_like(tokens, UNK), tokens)
        mask = (tokens != PAD).unsqueeze(1).float()  # (B, 1, L)
        h = F.relu(self.conv(self.embed(tokens).transpose(1, 2))) * mask
        pooled = h.sum(2) / mask.sum(2).clamp_min(1.0)
        return self.out(pooled)


class Conditioning(nn.Module):
    """StackGAN's conditioning augmentation: embedding -> (mu, log sigma^2) -> c = mu + sigma * eps in
    training (a smooth conditioning manifold from few captions), c = mu in eval mode, so an exported
    generator is a function of (tokens, z) alone. KL(N(mu, sigma) || N(0, I)) is returned for the loss."""

    def __init__(self, dim: int, c_dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, 2 * c_dim)

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.fc(e).chunk(2, dim=1)
        # averaged over the code's dimensions too, as the official StackGAN code (torch.mean): summed over
        # them, weight 2 silenced the text (measured: KL 0.05-0.5 nats, alignment at chance after 800 steps)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        if not self.training:
            return mu, kl
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu), kl


def pick_captions(captions: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B, K, L) ids and (B,) real-caption counts -> (B, L): one of each image's real captions, drawn
    with the device's global generator (checkpointed, so a resume draws the same), without a host sync."""
    u = torch.rand(counts.shape[0], device=captions.device)
    k = (u * counts.clamp_min(1).to(u.dtype)).long().clamp_max(captions.shape[1] - 1)
    return captions[torch.arange(captions.shape[0], device=captions.device), k]


def attach_vocabulary(state, vocabulary) -> None:
    """A text-conditioned G (and its EMA copy) carries the vocabulary of the data it is trained on;
    a no-op for other generators and data without one."""
    from gan_core.phases import unwrap

    if vocabulary is None:
        return
    for G in (unwrap(state.G), state.G_ema):
        if hasattr(G, "vocabulary"):
            G.vocabulary = vocabulary.to_dict()


@torch.no_grad()
def draw_text(G, meta: dict | None, text: str | None, n: int, seed: int, batch_size: int = 256
              ) -> tuple[torch.Tensor, list[str]]:
    """n images of one caption from a text-to-image generator (a module or its exported program):
    the caption tokenised with the model's own vocabulary (`meta`: what it was exported with), z from
    the seed's own stream. Returns the images and the caption's words the vocabulary does not know
    (read as UNK). ValueError (CaptionError) names what is wrong with the model or the text."""
    from gan_core.captions import CaptionError, Vocabulary, words
    from gan_core.inference import set_mode

    meta = meta or {}
    if meta.get("conditioning") != "text":
        raise CaptionError("--text needs a text-to-image model (model.arch=stackgan); this one takes no text")
    if text is None:
        raise CaptionError("this model draws images of a caption: give --text \"a large blue square\"")
    if not meta.get("vocabulary"):
        raise CaptionError("this model carries no vocabulary (trained outside the pipeline?): cannot tokenise --text")
    vocab = Vocabulary.from_dict(meta["vocabulary"], "the model's vocabulary")
    try:
        ids = torch.from_numpy(vocab.encode(text))
    except CaptionError as e:  # the caption came from the command line: say which option
        raise CaptionError(f"--text: {e}") from None
    known = set(vocab.tokens)
    unknown = [w for w in words(text) if w not in known]
    z = torch.randn(n, G.latent.z_dim, generator=torch.Generator().manual_seed(seed))
    set_mode(G, False)
    out = [G(ids.expand(len(part), -1).contiguous(), part).float().cpu() for part in z.split(batch_size)]
    return torch.cat(out).clamp(-1, 1), unknown
