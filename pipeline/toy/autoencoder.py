"""The toy autoencoder: a small conv net between 32x32 RGB images and a ``(C, G, G)`` latent
(default 8 channels on an 8x8 grid), the toy world's stand-in for Z-Image's FLUX VAE.

Why it exists: a pixel-space toy teacher learns size, colour and position but hardly reads
the shape word (shape accuracy near chance; docs/toy-world.md). In a latent whose first three
channels are a per-shape *layout* map (the shape's coverage pooled to the grid, in the
channel of its shape), shape is an explicit, large feature, and the same transformer recipe
learns it (``research/toy_latent_teacher_probe.py`` found the recipe).

Training losses (:class:`AutoencoderTrainConfig`):

- L1 + MSE reconstruction plus ``grad_loss`` x L1 of the image gradients (sharp edges);
- ``latent_noise``: the decoder sees ``z + n std(z) N(0, 1)``, so sampled latents that are
  slightly off the data manifold still decode to clean shapes;
- ``aux``: attribute classifiers (1x1 conv + spatial max) on the noised latent, training-only;
- ``layout``: the first 3 channels regress the per-shape coverage map.

The latent the teacher sees is normalised per channel with the statistics of the teacher's
training pool (``latent_mean``/``latent_std`` buffers, saved with the weights):
``encode(images) = (E(images) - mean) / std`` and ``decode(z) = D(z std + mean)``.

Files: ``autoencoder/config.json`` (:class:`AutoencoderConfig`) and
``autoencoder/model.safetensors`` (fp32, about 0.7 MB), beside the teacher's ``transformer/``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.config import one_line_problems
from pipeline.errors import ArtifactError
from pipeline.toy.prompts import BACKGROUNDS, COLORS
from schemas.base import StrictModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LAYOUT_CHANNELS = 3  # one per shape, in SHAPES order


class AutoencoderConfig(StrictModel):
    """Architecture: ``grid`` (latent side, 4 or 8), ``channels`` (>= 4 with a layout),
    ``width`` (conv width). Frozen: it is the shape of a built model."""

    model_config = ConfigDict(frozen=True)

    grid: int = Field(8, description="Latent side: 4 or 8.")
    channels: int = Field(8, description=f"Latent channels, the first {LAYOUT_CHANNELS} the "
                          "per-shape layout map (so more than that).")
    width: int = Field(96, description="Conv width (at least 8).")

    @model_validator(mode="after")
    def _check(self) -> AutoencoderConfig:
        if self.grid not in (4, 8):
            raise ValueError(f"autoencoder grid {self.grid}: must be 4 or 8")
        if self.channels <= LAYOUT_CHANNELS or self.width < 8:
            raise ValueError(f"autoencoder channels {self.channels} / width {self.width}: need "
                             f"more than {LAYOUT_CHANNELS} channels and a width of at least 8")
        return self


class AutoencoderTrainConfig(StrictModel):
    """Training of both phases (see :func:`train_autoencoder` and :func:`refine_decoder`)."""

    samples: int = Field(25_000, ge=8, description="Training renders.")
    epochs: int = Field(8, ge=1, description="Phase 1 (encoder and decoder) epochs.")
    batch: int = Field(128, ge=1, description="Batch size of both phases.")
    lr: float = Field(2e-3, gt=0, description="Phase 1 peak learning rate (one-cycle).")
    grad_loss: float = Field(1.0, ge=0, description="Weight of the L1 loss on image "
                             "gradients (sharp edges).")
    latent_noise: float = Field(0.2, ge=0, description="Phase 1 latent noise (x std) the "
                                "decoder sees.")
    aux: float = Field(0.3, ge=0, description="Weight of the attribute probes on the latent "
                       "(0: none).")
    layout: float = Field(30.0, ge=0, description="Weight of the layout-channel regression "
                          "(0: none).")
    seed: int = Field(0, description="Seed of the renders, the initialisation and the noise.")
    eval_renders: int = Field(2000, ge=1, description="Held-out renders for the "
                              "reconstruction report.")
    # Phase 2: the decoder alone, on the frozen encoder (so the latent space does not move),
    # at a lower latent noise: sharper small shapes (see refine_decoder).
    decoder_epochs: int = Field(3, ge=0, description="Phase 2 (decoder alone, frozen encoder) "
                                "epochs (0: no phase 2).")
    decoder_lr: float = Field(1e-3, gt=0, description="Phase 2 peak learning rate.")
    decoder_latent_noise: float = Field(0.0, ge=0, description="Phase 2 latent noise (x std).")


class ToyAutoencoder(nn.Module):
    """Images ``(N, 3, 32, 32)`` in [-1, 1] <-> normalised latents ``(N, C, G, G)``."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        halvings = {8: 2, 4: 3}[config.grid]
        width = config.width
        enc: list[nn.Module] = [nn.Conv2d(3, 32, 4, stride=2, padding=1), nn.SiLU()]
        c = 32
        for _ in range(halvings - 1):
            enc += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.SiLU()]
            c = width
        enc.append(nn.Conv2d(c, config.channels, 1))
        dec: list[nn.Module] = [nn.Conv2d(config.channels, width, 3, padding=1), nn.SiLU()]
        c = width
        for i in range(halvings):
            out = 32 if i == halvings - 1 else width
            dec += [nn.Upsample(scale_factor=2), nn.Conv2d(c, out, 3, padding=1), nn.SiLU()]
            c = out
        dec += [nn.Conv2d(32, 3, 3, padding=1), nn.Tanh()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_mean", torch.zeros(1, config.channels, 1, 1))
        self.register_buffer("latent_std", torch.ones(1, config.channels, 1, 1))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.channels, self.config.grid, self.config.grid)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 32, 32)`` in [-1, 1] -> normalised latents ``(N, C, G, G)``."""
        return (self.encoder(images) - self.latent_mean) / self.latent_std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``(N, C, G, G)`` -> images ``(N, 3, 32, 32)`` in [-1, 1]."""
        return self.decoder(latents * self.latent_std + self.latent_mean)

    @torch.no_grad()
    def fit_latent_statistics(self, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        """Set the per-channel mean and std from the raw latents of ``images`` (the teacher's
        pool) and return those latents normalised, ``(N, C, G, G)``: one encoder pass."""
        raw = torch.cat([self.encoder(images[i:i + batch]) for i in range(0, len(images), batch)])
        self.latent_mean.copy_(raw.mean(dim=(0, 2, 3), keepdim=True))
        self.latent_std.copy_(raw.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-6))
        return (raw - self.latent_mean) / self.latent_std

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        config = json.dumps(self.config.model_dump(mode="json"), indent=2)
        (folder / CONFIG_FILE).write_text(config + "\n")

    @classmethod
    def load(cls, folder: Path) -> ToyAutoencoder:
        """Load ``folder`` (``config.json`` + ``model.safetensors``); :class:`ArtifactError`
        naming the file and what is wrong otherwise."""
        config_path = folder / CONFIG_FILE
        try:
            config = AutoencoderConfig.model_validate(
                json.loads(config_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ArtifactError(f"{config_path}: missing (not a toy autoencoder folder)") from None
        except ValidationError as exc:
            raise ArtifactError(f"{config_path}: not a toy autoencoder config "
                                f"({one_line_problems(exc)})") from None
        except ValueError as exc:  # not JSON, not UTF-8
            raise ArtifactError(f"{config_path}: not a toy autoencoder config ({exc})") from None
        model = cls(config)
        weights = folder / WEIGHTS_FILE
        try:
            state = load_file(str(weights))
        except FileNotFoundError:
            raise ArtifactError(f"{weights}: missing") from None
        except (SafetensorError, OSError) as exc:
            raise ArtifactError(f"{weights}: not a readable safetensors file ({exc})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ArtifactError(f"{weights}: does not match {config_path} ({first})") from None
        return model.eval()


def layout_target(images: torch.Tensor, color: torch.Tensor, background: torch.Tensor,
                  shape: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, 3, G, G)``: each render's shape coverage, pooled to the grid, in the channel of
    its shape (x2). Coverage is read back from the anti-aliased render, exact for one shape on
    a flat background: ``((x - bg) . (fg - bg)) / |fg - bg|^2``. ``color``, ``background``,
    ``shape``: ``(B,)`` class indices in ``HEADS`` order."""
    from pipeline.toy.features import HEADS

    fg = (torch.tensor([COLORS[c] for c in HEADS["color"]]) / 127.5 - 1)[color]
    bg = (torch.tensor([BACKGROUNDS[b] for b in HEADS["background"]]) / 127.5 - 1)[background]
    d = (fg - bg).view(-1, 3, 1, 1)
    coverage = ((images - bg.view(-1, 3, 1, 1)) * d).sum(1, keepdim=True) / d.pow(2).sum(
        1, keepdim=True)
    pooled = F.avg_pool2d(coverage.clamp(0, 1), 32 // grid)
    onehot = F.one_hot(shape, LAYOUT_CHANNELS).float().view(-1, LAYOUT_CHANNELS, 1, 1)
    return 2.0 * pooled * onehot


def reconstruction_loss(y: torch.Tensor, x: torch.Tensor, grad_loss: float) -> torch.Tensor:
    """L1 + MSE between reconstructions ``y`` and images ``x`` ``(B, 3, 32, 32)``, plus
    ``grad_loss`` x L1 of their horizontal and vertical differences (sharp edges)."""
    loss = (y - x).abs().mean() + (y - x).pow(2).mean()
    for dim in (2, 3):
        loss = loss + grad_loss * (y.diff(dim=dim) - x.diff(dim=dim)).abs().mean()
    return loss


class TrainingTooSlow(Exception):
    """Training would not end by its deadline at the pace measured so far."""

    def __init__(self, projected_seconds: float, measured: str) -> None:
        super().__init__(f"projected to take {projected_seconds:.0f} s ({measured})")
        self.projected_seconds = projected_seconds
        self.measured = measured


# A decoder-only epoch (frozen encoder, no probes) costs about half a phase-1 epoch: 45 s
# against 89 s on 2 CPUs at the defaults (2026-12-07).
DECODER_EPOCH_COST = 0.5


def train_autoencoder(config: AutoencoderConfig, cfg: AutoencoderTrainConfig,
                      log: Callable[[str], None] = print, deadline: float | None = None,
                      ) -> tuple[ToyAutoencoder, dict[str, object]]:
    """Phase 1: encoder and decoder on ``cfg.samples`` fresh renders (seeded); phase 2:
    :func:`refine_decoder`. Each phase is followed by :func:`reconstruction_report`. Latent
    statistics are left at 0/1: the caller sets them from its own data with
    :meth:`ToyAutoencoder.fit_latent_statistics`.

    ``deadline`` (a ``time.perf_counter()`` value): after each phase-1 epoch, raise
    :class:`TrainingTooSlow` if the epochs left, at the pace so far, would end after it, so
    that a budget too small for the autoencoder fails after one epoch, not after all of them."""
    from pipeline.toy.features import HEADS, render_set

    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    model = ToyAutoencoder(config)
    probes = nn.ModuleDict({k: nn.Conv2d(config.channels, len(v), 1)
                            for k, v in HEADS.items() if k != "position"})
    data = render_set(cfg.samples, seed=cfg.seed + 11)
    epochs_start = time.perf_counter()  # the pace of an epoch, without the renders
    opt = torch.optim.Adam([*model.parameters(), *probes.parameters()], lr=cfg.lr)
    steps_per_epoch = math.ceil(cfg.samples / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr,
                                                total_steps=cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    labels = data.labels
    for epoch in range(cfg.epochs):
        order = torch.randperm(cfg.samples, generator=gen)
        for b in range(0, cfg.samples, cfg.batch):
            idx = order[b:b + cfg.batch]
            x = data.images[idx]
            z = model.encoder(x)
            zn = z + cfg.latent_noise * z.detach().std() * torch.randn(z.shape, generator=gen)
            y = model.decoder(zn)
            loss = reconstruction_loss(y, x, cfg.grad_loss) + 1e-4 * z.pow(2).mean()
            if cfg.aux:
                loss = loss + cfg.aux * sum(
                    (1.0 if k == "shape" else 0.3)
                    * F.cross_entropy(probe(zn).amax(dim=(2, 3)), labels[k][idx])
                    for k, probe in probes.items())
            if cfg.layout:
                target = layout_target(x, labels["color"][idx], labels["background"][idx],
                                       labels["shape"][idx], config.grid)
                loss = loss + cfg.layout * (z[:, :LAYOUT_CHANNELS] - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        now = time.perf_counter()
        log(f"autoencoder epoch {epoch + 1}/{cfg.epochs}: loss {loss.item():.4f} "
            f"({now - start:.0f} s)")
        if deadline is not None:
            pace = (now - epochs_start) / (epoch + 1)
            left = (cfg.epochs - epoch - 1 + DECODER_EPOCH_COST * cfg.decoder_epochs) * pace
            if now + left > deadline:
                decoder = f"{cfg.decoder_epochs} decoder epoch" + "s" * (cfg.decoder_epochs != 1)
                raise TrainingTooSlow(now - start + left, f"{epoch + 1} of {cfg.epochs} epochs "
                                      f"took {now - start:.0f} s, then {decoder}")
    info: dict[str, object] = {"architecture": config.model_dump(mode="json"),
                               "training": cfg.model_dump(mode="json"),
                               "phase_1": reconstruction_report(model, cfg, log)}
    if cfg.decoder_epochs:
        info["phase_2"] = refine_decoder(model, cfg, log, data=data)
    info["seconds"] = round(time.perf_counter() - start, 1)
    return model.eval(), info


def reconstruction_report(model: ToyAutoencoder, cfg: AutoencoderTrainConfig,
                          log: Callable[[str], None] = print) -> dict[str, object]:
    """On ``cfg.eval_renders`` held-out renders: how often reconstructions keep each attribute
    (feature network) and how often the layout channels name the right shape."""
    from pipeline.toy.features import RenderSet, accuracy, load_feature_net, render_set

    model.eval()
    test = render_set(cfg.eval_renders, seed=cfg.seed + 12)
    with torch.no_grad():
        z = model.encoder(test.images)
        recon = accuracy(load_feature_net(), RenderSet(model.decoder(z), test.labels))
        named = z[:, :LAYOUT_CHANNELS].clamp(min=0).sum(dim=(2, 3)).argmax(dim=1)
        layout = float((named == test.labels["shape"]).float().mean())
    report = {"reconstruction_accuracy": {k: round(v, 4) for k, v in recon.items()},
              "layout_channels_name_shape": round(layout, 4)}
    log(f"autoencoder: reconstructions keep {report['reconstruction_accuracy']}; layout "
        f"channels name the shape on {layout:.1%} of held-out renders")
    return report


def refine_decoder(model: ToyAutoencoder, cfg: AutoencoderTrainConfig,
                   log: Callable[[str], None] = print, data=None) -> dict[str, object]:
    """Phase 2: train the decoder alone for ``cfg.decoder_epochs`` on the frozen encoder's
    latents of ``cfg.samples`` renders (``data``, or fresh ones from ``cfg.seed``), at latent
    noise ``cfg.decoder_latent_noise``, reconstruction + edge loss, one-cycle lr.

    Why: phase 1's latent noise makes the decoder hedge on small shapes (it drew 17% of
    squares round, mostly small ones, although the layout channels named 99% of all shapes
    right). The
    encoder, and with it the latent space and its statistics, does not change, so a teacher
    trained on this latent stays valid. Returns the reconstruction report after it."""
    from pipeline.toy.features import render_set

    start = time.perf_counter()
    data = data if data is not None else render_set(cfg.samples, seed=cfg.seed + 11)
    model.encoder.requires_grad_(False)
    model.decoder.requires_grad_(True)  # a teacher's autoencoder is loaded frozen
    model.train()
    opt = torch.optim.Adam(model.decoder.parameters(), lr=cfg.decoder_lr)
    n = len(data.images)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.decoder_lr, total_steps=cfg.decoder_epochs * math.ceil(n / cfg.batch),
        pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    for epoch in range(cfg.decoder_epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(0, n, cfg.batch):
            x = data.images[order[b:b + cfg.batch]]
            with torch.no_grad():
                z = model.encoder(x)
            if cfg.decoder_latent_noise:
                z = z + cfg.decoder_latent_noise * z.std() * torch.randn(z.shape, generator=gen)
            loss = reconstruction_loss(model.decoder(z), x, cfg.grad_loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(f"decoder epoch {epoch + 1}/{cfg.decoder_epochs}: loss {loss.item():.4f} "
            f"({time.perf_counter() - start:.0f} s)")
    model.encoder.requires_grad_(True)
    report = reconstruction_report(model, cfg, log)
    return {**report, "seconds": round(time.perf_counter() - start, 1)}
