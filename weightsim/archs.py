"""Architectures: ``ArchSpec`` values and ``build(spec)``.

Parameter names are part of the contract used by ``weightsim.chain``:
- ``mlp``: ``layers.{i}.weight|bias`` (hidden, ``widths[i]`` units), ``out.*``.
- ``cnn``: ``convs.{i}.*`` (Conv1d for ``(C, L)`` inputs, Conv2d for
  ``(C, H, W)``, 'same' padding), ``norms.{i}.*`` (BatchNorm, if enabled), then
  the activation, a 2× max-pool after every conv but the last (while the
  feature map allows it), global average pooling and ``out.*``.
- ``rnn`` / ``gru``: ``rnns.{i}.weight_ih_l0|weight_hh_l0|bias_ih_l0|bias_hh_l0``
  (one single-layer ``nn.RNN``/``nn.GRU`` per layer, batch first, input
  ``(T, F)``), and ``out.*`` reading the last time step of the top layer.
- ``resmlp`` (``widths = (d, h)``, ``blocks`` blocks): ``stem.*`` (input → a
  residual stream of width ``d``), ``blocks.{i}.fc1|fc2.*`` (``x + fc2(relu(fc1(x)))``,
  ``h`` hidden units), ``out.*`` reading the stream.
- ``resnet`` (``widths`` = stage widths, ``blocks`` basic blocks per stage, for
  ``(C, L)`` or ``(C, H, W)`` inputs): ``stem.weight`` + ``stem_bn.*`` + ReLU,
  then ``stages.{s}.{j}.conv1|bn1|conv2|bn2`` (``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut)``;
  the first block of every stage but the first has stride 2), the shortcut an
  identity or, where the width or stride changes, ``downsample.0`` (1×1 conv)
  + ``downsample.1`` (BatchNorm); convolutions have no bias; global average
  pooling and ``out.*``.
- ``transformer`` (``input_shape = (T, F)``: T tokens of F values; ``widths =
  (d, h)``, ``heads``, ``blocks``): ``stem.*`` (tokens → width ``d``) plus
  learned ``pos.weight`` (T, d), pre-LayerNorm blocks
  ``blocks.{i}.ln1|attn.q|attn.k|attn.v|attn.o|ln2|fc1|fc2`` (``x + o(attention(ln1(x)))``,
  then ``x + fc2(relu(fc1(ln2(x))))``), mean pooling over tokens and ``out.*``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from .arch_names import KINDS, RESIDUAL, canonical_name
from .errors import SpecError

ACTIVATIONS = ("relu", "tanh")
MAX_DEPTH = 64  # most hidden layers (and input dimensions) a spec may have
MAX_SIZE = 1 << 16  # largest width, input dimension, class count or kernel


def _whole(value) -> bool:
    """An integer (Python or numpy), not a bool and not a float that happens to be whole."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ArchSpec:
    """Complete description of a network: ``build(spec)`` needs nothing else."""

    kind: str
    input_shape: tuple[int, ...]
    widths: tuple[int, ...]
    num_classes: int
    activation: str = "relu"
    batchnorm: bool = False
    bias: bool = True
    kernel_size: int = 3
    pool: bool = True
    blocks: int = 0  # residual families: blocks (resnet: per stage)
    heads: int = 0  # transformer: attention heads

    def __post_init__(self) -> None:
        for name, high in (("input_shape", MAX_SIZE), ("widths", MAX_SIZE)):
            values = tuple(getattr(self, name)) if not isinstance(getattr(self, name), (str, bytes)) else None
            if values is None or not 1 <= len(values) <= MAX_DEPTH or not all(_whole(v) for v in values):
                raise SpecError(f"{self.kind}: {name} must be 1 to {MAX_DEPTH} whole numbers (got "
                                f"{str(getattr(self, name))[:60]})")
            if max(values) > high:
                raise SpecError(f"{self.kind}: {name} {max(values)} is over {high:,}")
            object.__setattr__(self, name, tuple(int(v) for v in values))
        if not all(_whole(getattr(self, n)) for n in ("num_classes", "kernel_size")):
            raise SpecError(f"{self.kind}: num_classes and kernel_size must be whole numbers")
        if self.num_classes > MAX_SIZE or self.kernel_size > MAX_SIZE:
            raise SpecError(f"{self.kind}: num_classes and kernel_size must be at most {MAX_SIZE:,}")
        if self.kind not in KINDS:
            raise SpecError(f"unknown arch kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.activation not in ACTIVATIONS or (self.kind == "gru" and self.activation != "tanh"):
            allowed = "tanh" if self.kind == "gru" else "relu or tanh"
            raise SpecError(f"{self.kind}: activation must be {allowed} (got {self.activation!r})")
        if not self.widths or min(self.widths) < 1 or self.num_classes < 2 or min(self.input_shape, default=0) < 1:
            raise SpecError(f"{self.kind}: need at least one positive width, positive input shape and >= 2 classes")
        wanted = {"mlp": (1,), "cnn": (2, 3), "rnn": (2,), "gru": (2,), "resmlp": (1,), "resnet": (2, 3),
                  "transformer": (2,)}[self.kind]
        if len(self.input_shape) not in wanted:
            raise SpecError(f"{self.kind}: input_shape must have {' or '.join(map(str, wanted))} dims, got {self.input_shape}")
        if self.batchnorm != (self.kind == "resnet") and self.kind != "cnn":
            raise SpecError("batchnorm is available for cnn, and resnet always has it (batchnorm=true)")
        if self.kind in RESIDUAL:
            self._check_residual()
        elif self.blocks or self.heads:
            raise SpecError(f"{self.kind}: blocks and heads exist for {', '.join(RESIDUAL)} only")
        if self.kind == "cnn" and self.activation == "tanh" and self.pool:
            raise SpecError("cnn: max-pool breaks the sign symmetry of tanh; use pool=False with tanh")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise SpecError("cnn: kernel_size must be odd and positive")

    def _check_residual(self) -> None:
        if self.activation != "relu":
            raise SpecError(f"{self.kind}: activation must be relu")
        if self.blocks < 1:
            raise SpecError(f"{self.kind}: need blocks >= 1")
        if self.kind != "resnet" and len(self.widths) != 2:
            raise SpecError(f"{self.kind}: widths must be (stream width, hidden width), got {self.widths}")
        if self.kind == "transformer" and (self.heads < 1 or self.widths[0] % self.heads):
            raise SpecError(f"transformer: heads must be >= 1 and divide the stream width {self.widths[0]}")
        if self.kind != "transformer" and self.heads:
            raise SpecError(f"{self.kind}: heads exist for transformer only")

    @property
    def depth(self) -> int:
        """Number of hidden layers (chain depths are 1..depth+1, the last being
        the output); residual families: the stem and every block."""
        if self.kind in RESIDUAL:
            return 1 + self.blocks * (len(self.widths) if self.kind == "resnet" else 1)
        return len(self.widths)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"], d["widths"] = list(self.input_shape), list(self.widths)
        for k in ("blocks", "heads"):  # absent where unused: the specs (and run ids) of older kinds are unchanged
            if not d[k]:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ArchSpec":
        try:
            return cls(**d)
        except TypeError as exc:
            raise SpecError(f"invalid arch spec {str(d)[:200]}: {exc}") from None

    def with_classes(self, num_classes: int) -> "ArchSpec":
        return replace(self, num_classes=num_classes)


def pooled_sizes(spec: ArchSpec) -> list[bool]:
    """Whether conv layer ``i`` is followed by a 2× max-pool."""
    spatial = list(spec.input_shape[1:])
    out = []
    for i in range(spec.depth):
        p = spec.pool and i < spec.depth - 1 and min(spatial) >= 2
        out.append(p)
        if p:
            spatial = [s // 2 for s in spatial]
    return out


class MLP(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        dims = (spec.input_shape[0], *spec.widths)
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=spec.bias) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], spec.num_classes, bias=spec.bias)
        self.act = torch.relu if spec.activation == "relu" else torch.tanh

    def forward(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return self.out(x)


class CNN(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        two_d = len(spec.input_shape) == 3
        conv = nn.Conv2d if two_d else nn.Conv1d
        norm = nn.BatchNorm2d if two_d else nn.BatchNorm1d
        chans = (spec.input_shape[0], *spec.widths)
        k = spec.kernel_size
        self.convs = nn.ModuleList(conv(a, b, k, padding=k // 2, bias=spec.bias) for a, b in zip(chans[:-1], chans[1:]))
        self.norms = nn.ModuleList(norm(c) for c in spec.widths) if spec.batchnorm else None
        self.pools = pooled_sizes(spec)
        self.pool_fn = nn.functional.max_pool2d if two_d else nn.functional.max_pool1d
        self.out = nn.Linear(chans[-1], spec.num_classes, bias=spec.bias)
        self.act = torch.relu if spec.activation == "relu" else torch.tanh

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = self.act(x)
            if self.pools[i]:
                x = self.pool_fn(x, 2)
        return self.out(x.flatten(2).mean(-1))


class Recurrent(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        dims = (spec.input_shape[1], *spec.widths)
        if spec.kind == "rnn":
            make = lambda a, b: nn.RNN(a, b, batch_first=True, nonlinearity=spec.activation, bias=spec.bias)  # noqa: E731
        else:
            make = lambda a, b: nn.GRU(a, b, batch_first=True, bias=spec.bias)  # noqa: E731
        self.rnns = nn.ModuleList(make(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], spec.num_classes, bias=spec.bias)

    def forward(self, x):
        for rnn in self.rnns:
            x, _ = rnn(x)
        return self.out(x[:, -1])


class ResMLP(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        d, h = spec.widths
        self.stem = nn.Linear(spec.input_shape[0], d, bias=spec.bias)
        self.blocks = nn.ModuleList(_MLPBlock(d, h, spec.bias) for _ in range(spec.blocks))
        self.out = nn.Linear(d, spec.num_classes, bias=spec.bias)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


class _MLPBlock(nn.Module):
    def __init__(self, d: int, h: int, bias: bool):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h, bias=bias), nn.Linear(h, d, bias=bias)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def resnet_strides(spec: ArchSpec) -> list[list[int]]:
    """Stride of each basic block, per stage (2 opens every stage but the first)."""
    return [[2 if s and not j else 1 for j in range(spec.blocks)] for s in range(len(spec.widths))]


class _BasicBlock(nn.Module):
    def __init__(self, two_d: bool, cin: int, cout: int, stride: int, k: int):
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if two_d else (nn.Conv1d, nn.BatchNorm1d)
        self.conv1 = conv(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = conv(cout, cout, k, padding=k // 2, bias=False)
        self.bn2 = norm(cout)
        self.downsample = (nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), norm(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        two_d = len(spec.input_shape) == 3
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if two_d else (nn.Conv1d, nn.BatchNorm1d)
        k = spec.kernel_size
        self.stem = conv(spec.input_shape[0], spec.widths[0], k, padding=k // 2, bias=False)
        self.stem_bn = norm(spec.widths[0])
        chans = (spec.widths[0], *spec.widths)
        self.stages = nn.ModuleList(
            nn.ModuleList(_BasicBlock(two_d, chans[s] if j == 0 else chans[s + 1], chans[s + 1], stride, k)
                          for j, stride in enumerate(strides))
            for s, strides in enumerate(resnet_strides(spec)))
        self.out = nn.Linear(spec.widths[-1], spec.num_classes, bias=spec.bias)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.out(x.flatten(2).mean(-1))


class Positions(nn.Module):
    """Learned position embeddings ``weight`` (T, d), added to the tokens."""

    def __init__(self, steps: int, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(steps, d))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        nn.init.normal_(self.weight, std=0.02, generator=generator)


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v, o projections (d → d,
    heads of d / heads units, rows of q/k/v and columns of o grouped by head)."""

    def __init__(self, d: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=bias) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (f(x).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))


class _TransformerBlock(nn.Module):
    def __init__(self, d: int, h: int, heads: int, bias: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, bias=bias)
        self.attn = Attention(d, heads, bias)
        self.ln2 = nn.LayerNorm(d, bias=bias)
        self.fc1, self.fc2 = nn.Linear(d, h, bias=bias), nn.Linear(h, d, bias=bias)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(torch.relu(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        (steps, feat), (d, h) = spec.input_shape, spec.widths
        self.stem = nn.Linear(feat, d, bias=spec.bias)
        self.pos = Positions(steps, d)
        self.blocks = nn.ModuleList(_TransformerBlock(d, h, spec.heads, spec.bias) for _ in range(spec.blocks))
        self.out = nn.Linear(d, spec.num_classes, bias=spec.bias)

    def forward(self, x):
        x = self.stem(x) + self.pos.weight
        for block in self.blocks:
            x = block(x)
        return self.out(x.mean(1))


@functools.lru_cache(maxsize=128)
def param_shapes(spec: ArchSpec) -> dict[str, tuple[int, ...]]:
    """State-dict keys of ``build(spec)`` and their shapes, in order (built on
    the meta device: no memory, no draw from the global RNG)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build(spec).state_dict().items()}


def build_seeded(spec: ArchSpec, seed: int) -> nn.Module:
    """The network of ``spec`` initialized from ``initial_state(spec, seed)``
    (the one initialization path: no global RNG, safe in any thread)."""
    with torch.device("meta"):
        model = build(spec)
    model.load_state_dict(initial_state(spec, seed), assign=True)
    return model


def _reset(module: nn.Module, g: torch.Generator) -> None:
    """PyTorch's default ``reset_parameters`` of ``module`` (one of the layer
    types ``build`` uses), drawing from ``g`` instead of the global RNG."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=g)
        if module.bias is not None:
            fan_in = module.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(module.bias, -bound, bound, generator=g)
    elif isinstance(module, nn.RNNBase):
        stdv = 1 / math.sqrt(module.hidden_size)
        for weight in module.parameters():
            nn.init.uniform_(weight, -stdv, stdv, generator=g)
    elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
        module.reset_parameters()  # constants, no draws
    elif isinstance(module, Positions):
        module.reset_parameters(g)
    elif any(True for _ in module.parameters(recurse=False)):
        raise SpecError(f"no seeded initialization for {type(module).__name__}")


@torch.no_grad()
def initial_state(spec: ArchSpec, seed: int) -> dict[str, torch.Tensor]:
    """PyTorch's default initialization of ``build(spec)`` (every module's
    ``reset_parameters``, in construction order), drawn from a private
    generator seeded with ``seed``: the same bits as ``build(spec)`` after
    ``torch.manual_seed(seed)``, without touching the global RNG."""
    with torch.device("meta"):
        model = build(spec)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():  # construction order = the order of build()'s draws
        _reset(module, g)
    return model.state_dict()


def finite(state: dict[str, torch.Tensor]) -> bool:
    """True when every floating-point tensor of a state dict is finite
    (CPU tensors through numpy, which is faster than ``torch.isfinite``)."""
    return all(_finite(v.detach()) for v in state.values() if v.is_floating_point())


def _finite(t: torch.Tensor) -> bool:
    if t.device.type != "cpu":
        return bool(torch.isfinite(t).all())
    return bool(np.isfinite(t.numpy() if t.dtype in (torch.float32, torch.float64) else t.float().numpy()).all())


def build(spec: ArchSpec) -> nn.Module:
    """A freshly initialized ``torch.nn.Module`` for ``spec`` (PyTorch default
    init, from the global RNG); inputs shaped ``(batch, *spec.input_shape)``."""
    return {"mlp": MLP, "cnn": CNN, "rnn": Recurrent, "gru": Recurrent, "resmlp": ResMLP, "resnet": ResNet,
            "transformer": Transformer}[spec.kind](spec)


# --- named archs and default specs per dataset -------------------------------

_PAPER_WIDTHS = {"mlp": (500, 500, 500), "cnn": (32, 64, 128, 256), "rnn": (128, 128), "gru": (128, 128),
                 "resmlp": (256, 512), "resnet": (16, 32, 64), "transformer": (128, 256)}
# residual families: (blocks, heads), small and paper-size (resnet-paper: ResNet-20's 3 blocks per stage)
_BLOCKS = {"resmlp": ((2, 0), (4, 0)), "resnet": ((1, 0), (3, 0)), "transformer": ((2, 4), (4, 4))}


def _input_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The dataset's example shape reshaped for ``kind`` (a reshape, never a transpose)."""
    n = math.prod(shape)
    if kind in ("mlp", "resmlp"):
        return (n,)
    if kind in ("cnn", "resnet"):
        return (1, *shape) if len(shape) in (1, 2) else tuple(shape)
    if kind == "transformer" and len(shape) == 1:  # a 1-D signal: one token per step (mnist1d: 40)
        return (n, 1)
    # recurrent (and transformer tokens): rows are time steps. A 1-D signal of length L is cut into
    # L/F steps of F values, F the largest divisor of L up to sqrt(L)
    # (mnist1d: 8 steps of 5): 40 steps of one value do not train with SGD
    # in the epochs the built-in presets use.
    if len(shape) == 1:
        f = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        return (n // f, f)
    return (n // shape[-1], shape[-1])


def arch_spec(name: str, data_shape: tuple[int, ...], num_classes: int) -> ArchSpec:
    """The spec behind an arch name for a dataset's example shape.

    Names: ``mlp``, ``cnn``, ``rnn``, ``gru``, ``resmlp``, ``resnet``,
    ``transformer``, optionally followed by
    ``-tanh``/``-relu`` (activation), ``-bn`` (cnn BatchNorm), ``-paper``
    (the paper-scale widths of docs/method.md §1), e.g. ``rnn-tanh`` or ``cnn-bn``.
    ``cnn-tanh`` has no max-pool (pooling would break the sign symmetry of
    tanh units): its convolutions keep the full resolution.
    """
    kind, *tokens = canonical_name(name).split("-")
    small = max(data_shape) <= 16 and math.prod(data_shape) <= 256
    widths = {"mlp": (32, 32) if small else (64, 64), "cnn": (16, 32),
              "rnn": (32,), "gru": (32,), "resmlp": (32, 64) if small else (64, 128), "resnet": (16, 32),
              "transformer": (32, 64)}[kind]
    if "paper" in tokens:
        widths = _PAPER_WIDTHS[kind]
    blocks, heads = _BLOCKS[kind]["paper" in tokens] if kind in RESIDUAL else (0, 0)
    activation = "tanh" if kind == "gru" or "tanh" in tokens else "relu"
    kernel = 3 if len(data_shape) != 1 else 5
    return ArchSpec(kind=kind, input_shape=_input_shape(kind, tuple(data_shape)), widths=widths,
                    num_classes=num_classes, activation=activation, batchnorm="bn" in tokens or kind == "resnet" or
                    ("paper" in tokens and kind == "cnn"), kernel_size=kernel, pool=activation != "tanh",
                    blocks=blocks, heads=heads)
