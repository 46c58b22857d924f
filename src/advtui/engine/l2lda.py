"""L2LDA: the paper's previous learning-to-learn baseline (Jang et al., ICCV 2019).

A convolutional generator produces the perturbation recursively. At each of T steps it sees

- the clean image x,
- the classifier's input gradient at the current point x'_t, normalized per channel,
- the perturbation accumulated so far (x'_t - x, divided by eps),
- a small latent noise vector z (drawn once per example and attack, so the attack is stochastic),

and outputs ``tanh(.)`` scaled to ``step_fraction * eps`` (0.25 eps as in the authors' code).
The step is added to the accumulated perturbation, clipped to [-eps, eps], and x'_{t+1} is
clipped to [0, 1]. The generator (phi) is trained to maximize the classifier's loss at *every*
step plus a diversity term, while the classifier is trained on x'_T: the two are co-trained,
exactly as the trainer co-trains the RNN optimizer.

The diversity term is the mode-seeking regularizer of the authors' code: for one image and two
latent codes z1, z2 it is mean|x'(z1) - x'(z2)| / mean|z1 - z2|, so different codes must give
different attacks. During training the batch is therefore run twice (once per code); the first
copy is the adversarial batch handed to the classifier.

Architecture (after the authors' U-Net generator, default width 64):
    down0 conv3x3/1 (3C + zdim -> 64), LeakyReLU
    down1 conv4x4/2 (64 + zdim -> 64), BatchNorm, LeakyReLU           H/2
    down2 conv4x4/2 (64 + zdim -> 128), LeakyReLU                     H/4
    up2   convT4x4/2 (128 -> 64), BatchNorm, ReLU, concat down1        H/2
    up1   convT4x4/2 (128 -> 64), BatchNorm, ReLU, concat down0        H
    final conv3x3 (128 -> C), tanh
The latent code passes through a two-layer MLP and is tiled over space as extra input channels
of every down layer. With width 64 and an 8-d latent this is 491,344 trainable parameters on
MNIST and 497,104 on CIFAR-10: the order of the paper's Table 2 (500,944 for L2LDA, against
120 for the RNN optimizer). The authors' class-conditional batch norm is left out (the attack
must not need the label beyond its loss), which accounts for the small difference.

Choices the authors' code leaves to the input scale: the gradient is divided by its per-channel
RMS (L2 norm over the image plane / sqrt(H W)) and the accumulated perturbation by eps, so all
three image-shaped inputs are O(1) whatever the dataset and eps.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from advtui.engine.maximizers import LearnedMaximizer, MaxResult, loss_and_grad, project
from advtui.core.errors import ConfigError

STEP_FRACTION = 0.25  # each generator step moves at most a quarter of eps per pixel
GRAD_CLIP_NORM = 1.0  # the authors clip the generator's gradient norm at 1
WEIGHT_DECAY = 1e-5


def _tile(code: torch.Tensor | None, like: torch.Tensor) -> list[torch.Tensor]:
    """The latent code as constant feature maps of ``like``'s spatial size (none if no code)."""
    if code is None:
        return []
    return [code[:, :, None, None].expand(-1, -1, like.shape[2], like.shape[3])]


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, code: torch.Tensor | None) -> torch.Tensor:
        return self.act(self.norm(self.conv(torch.cat([x, *_tile(code, x)], 1))))


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 4, 2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.act(self.norm(self.conv(x))), skip], 1)


class PerturbationGenerator(nn.Module):
    """The U-Net that maps (image, normalized gradient, perturbation so far, z) to a step in
    [-1, 1]^(C x H x W). Spatial sides must be multiples of 4 (MNIST 28, CIFAR-10 32)."""

    def __init__(self, image_channels: int, latent: int = 8, width: int = 64):
        super().__init__()
        self.image_channels, self.latent = image_channels, latent
        inputs = 3 * image_channels
        self.latent_encoder = (
            nn.Sequential(nn.Linear(latent, latent), nn.ReLU(), nn.Linear(latent, latent), nn.ReLU())
            if latent > 0 else None
        )
        self.down0 = _Down(inputs + latent, width, kernel=3, stride=1, norm=False)
        self.down1 = _Down(width + latent, width, kernel=4, stride=2, norm=True)
        self.down2 = _Down(width + latent, 2 * width, kernel=4, stride=2, norm=False)
        self.up2 = _Up(2 * width, width)
        self.up1 = _Up(2 * width, width)
        self.final = nn.Conv2d(2 * width, image_channels, 3, 1, padding=1, bias=False)
        self.apply(_init_weights)

    def forward(self, inputs: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        code = self.latent_encoder(z) if self.latent_encoder is not None else None
        d0 = self.down0(inputs, code)
        d1 = self.down1(d0, code)
        d2 = self.down2(d1, code)
        return torch.tanh(self.final(self.up1(self.up2(d2, d1), d0)))


def _init_weights(module: nn.Module) -> None:
    """DCGAN-style initialization, as in the authors' code."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


@contextlib.contextmanager
def _running_stats_kept(net: nn.Module):
    """While activation checkpointing recomputes a generator step for the backward pass, the
    batch norms normalize with the same batch statistics as in the forward pass (train mode)
    but must not fold that batch into their running statistics a second time."""
    norms = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, _, _ in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, momentum, tracked in norms:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def normalize_per_channel(grad: torch.Tensor) -> torch.Tensor:
    """The gradient divided by its RMS over each image plane (per example and channel)."""
    rms = grad.pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
    return grad / (rms + 1e-12)


def diversity(x_a: torch.Tensor, x_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Mode-seeking term per example: mean|x_a - x_b| / mean|z_a - z_b|."""
    spread = (x_a - x_b).abs().flatten(1).mean(1)
    codes = (z_a - z_b).abs().mean(1)
    return spread / (codes + 1e-8)


class L2LDAGenerator(LearnedMaximizer):
    """The L2LDA inner maximizer: a recurrent, stochastic CNN generator of perturbations."""

    name = "l2lda"
    grad_clip = GRAD_CLIP_NORM
    # Training backpropagates through all T generator steps (the authors' code does too), which
    # kept every U-Net activation of 2 x batch x T images alive: 4.9 GiB above the process's own
    # at batch 128, T = 10 on MNIST. With checkpointing each step keeps only its inputs and is
    # recomputed during phi's backward pass: the same numbers in 1.4 GiB, for about 30% more time
    # per generator step (bench/l2lda_memory.py). None: checkpoint on the CPU, where the memory
    # is the machine's own; on a GPU keep the faster full graph. True / False force either.
    checkpoint_steps: bool | None = None

    def __init__(self, image_channels: int = 1, latent: int = 8, diversity_weight: float = 0.1,
                 lr: float = 1e-4, width: int = 64, step_fraction: float = STEP_FRACTION,
                 device: torch.device | str = "cpu"):
        if latent < 0:
            raise ConfigError(f"l2lda-latent must be 0 or more, got {latent}")
        if diversity_weight < 0:
            raise ConfigError(f"l2lda-diversity must be 0 or more, got {diversity_weight}")
        self.net = PerturbationGenerator(image_channels, latent, width).to(device)
        self.latent, self.diversity_weight, self.step_fraction = latent, diversity_weight, step_fraction
        # Adam with the authors' GAN betas; plain SGD at the small learning rate of the config
        # barely moves a generator of this size within a short run.
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.5, 0.999),
                                          weight_decay=WEIGHT_DECAY)

    @classmethod
    def from_config(cls, config, device: torch.device | str) -> "L2LDAGenerator":
        from advtui.engine.data import DATASET_SHAPES

        channels = DATASET_SHAPES[config.dataset][0]
        return cls(channels, latent=config.l2lda_latent, diversity_weight=config.l2lda_diversity,
                   lr=config.l2lda_lr, width=getattr(config, "l2lda_width", 64), device=device)

    def _latent(self, n: int, like: torch.Tensor) -> torch.Tensor | None:
        if self.latent == 0:
            return None
        return torch.randn(n, self.latent, device=like.device, dtype=like.dtype)

    def maximize(self, model, loss_fn, x, target, eps, steps, record=True, learn_graph: bool = False):
        """``learn_graph`` keeps the unrolled graph from every x'_t back to the generator and
        returns the objective to ascend in ``info["phi_objective"]``:
        sum_t mean L(x'_t) + diversity_weight * sum_t mean diversity_t, t = 1..T."""
        self._check_inputs(x)
        batch = x.shape[0]
        paired = learn_graph and self.diversity_weight > 0 and self.latent > 0
        if paired:  # one image, two latent codes: what the diversity term compares
            x, target = torch.cat([x, x]), torch.cat([target, target])
        z = self._latent(x.shape[0], x)
        was_training = self.net.training
        self.net.train(learn_graph)
        x = x.detach()
        perturbation = torch.zeros_like(x)
        x_adv = x
        losses, objective = [], x.new_zeros(())
        try:
            with torch.set_grad_enabled(learn_graph):
                loss, grad = loss_and_grad(model, loss_fn, x_adv, target)  # x'_0 = x
                losses.append(loss[:batch].mean())
                for t in range(1, steps + 1):
                    inputs = torch.cat([x, normalize_per_channel(grad), perturbation / eps], 1)
                    step = self._step(inputs, z, learn_graph)
                    perturbation = (perturbation + self.step_fraction * eps * step).clamp(-eps, eps)
                    x_adv = project(x + perturbation, x, eps)
                    if learn_graph:
                        loss = loss_fn(model(x_adv), target)
                        objective = objective + loss.mean()
                        if paired:
                            spread = diversity(x_adv[:batch], x_adv[batch:], z[:batch], z[batch:])
                            objective = objective + self.diversity_weight * spread.mean()
                        if t < steps:  # g_t is an input, not a path for phi's gradient
                            (grad,) = torch.autograd.grad(loss.sum(), x_adv, retain_graph=True)
                            grad = grad.detach()
                        loss = loss.detach()
                    elif t < steps:
                        loss, grad = loss_and_grad(model, loss_fn, x_adv, target)
                    elif record:
                        with torch.no_grad():
                            loss = loss_fn(model(x_adv), target)
                    if record or learn_graph:
                        losses.append(loss[:batch].mean())
        finally:
            self.net.train(was_training)
        trajectory = torch.stack(losses).detach() if (record or learn_graph) else None
        info = {"phi_objective": objective} if learn_graph else {}
        return MaxResult(x_adv[:batch].detach(), trajectory, info)

    def _step(self, inputs: torch.Tensor, z: torch.Tensor | None, learn_graph: bool) -> torch.Tensor:
        wanted = self.checkpoint_steps if self.checkpoint_steps is not None else inputs.device.type == "cpu"
        if not (learn_graph and wanted):
            return self.net(inputs, z)
        return checkpoint(self.net, inputs, z, use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(), _running_stats_kept(self.net)))

    def _check_inputs(self, x: torch.Tensor) -> None:
        """The generator is convolutional over one image shape: refuse others in one line."""
        channels = self.net.image_channels
        if x.dim() != 4 or x.shape[1] != channels or x.shape[2] % 4 or x.shape[3] % 4:
            raise ConfigError(
                f"this L2LDA generator attacks {channels}-channel images with sides divisible by 4, got inputs of "
                f"shape {tuple(x.shape[1:])}: use an l2lda run trained on the same dataset as the attacked model")


def parameter_count(dataset: str, latent: int = 8, width: int = 64) -> int:
    """Trainable parameters of the generator for ``dataset`` (the paper's Table 2 column)."""
    from advtui.engine.data import DATASET_SHAPES

    net = PerturbationGenerator(DATASET_SHAPES[dataset][0], latent, width)
    return sum(p.numel() for p in net.parameters())


__all__ = ["L2LDAGenerator", "PerturbationGenerator", "normalize_per_channel", "diversity",
           "parameter_count", "STEP_FRACTION"]
