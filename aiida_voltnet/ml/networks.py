"""torch networks: the seed's MHA-ResNet (faithful), the paper's neural baselines and our residual MLP."""
from __future__ import annotations

import functools
import os
import threading

import torch
from torch import nn

__all__ = ['Bottleneck', 'SeedResNet', 'TransformerBlock', 'MHAResNet', 'MLP', 'LSTMRegressor', 'ResidualMLP',
           'build_network', 'NETWORKS', 'attention_as_linear',
           'convolutions_as_matmul', 'fast_mha_resnet', 'cpu_linear', 'onednn_linear_available', 'linears_on_onednn',
           'cpu_products', 'cpu_vendor', 'CPU_PRODUCTS_ENV']


def _onednn_linear_op():
    """torch's oneDNN fully-connected kernel (``mkldnn::_linear_pointwise``, the one torch.compile uses for CPU
    inference), or None where this torch build lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear_op()


def onednn_linear_available() -> bool:
    return _ONEDNN_LINEAR is not None


#: Environment variable that overrides :func:`cpu_products`' choice: ``onednn`` or ``aten``.
CPU_PRODUCTS_ENV = 'VOLTNET_CPU_PRODUCTS'


def cpu_vendor() -> str:
    """The CPU's vendor string as Linux reports it (``/proc/cpuinfo``'s ``vendor_id``: ``'AuthenticAMD'``,
    ``'GenuineIntel'``), or ``''`` where it cannot be read (another OS, another architecture)."""
    try:
        with open('/proc/cpuinfo', encoding='ascii', errors='replace') as handle:
            for line in handle:
                key, _, value = line.partition(':')
                if key.strip() == 'vendor_id':
                    return value.strip()
    except OSError:
        pass
    return ''


class SettingError(ValueError):
    """An environment setting of this package (:data:`CPU_PRODUCTS_ENV`) that it cannot follow: the user's
    setting, never the model's (loading a model does not call it a malformed model)."""


def cpu_products() -> str:
    """Which library computes the float32 CPU products of our networks' training: ``'onednn'``
    (:func:`cpu_linear`) or ``'aten'`` (torch's own ``nn.functional.linear``, MKL in the x86 wheels).

    oneDNN where an AMD CPU runs AVX-512 (``torch.backends.cpu.get_cpu_capability()`` and :func:`cpu_vendor`),
    since MKL runs its AVX2 kernels on AMD's AVX-512 CPUs; torch's own products elsewhere: with AVX2 the two
    libraries' kernels are level and oneDNN's path pays for contiguous transposed copies that torch's BLAS calls
    avoid, and on Intel's AVX-512 CPUs MKL runs its AVX-512 kernels. Measured with ``benchmarks/epoch_speed.py``
    (MHA-ResNet epoch, docs/results.md): on Zen 5 (AVX-512) oneDNN 2.61x against 1.48x for torch's products, on
    Zen 4 (AVX-512) 1.91-2.05x against 1.73-1.91x, on Zen 3 (AVX2 only) 2.27x against 2.48x, on an Intel Xeon
    with AVX-512 and AMX 1.83-1.91x against 2.04-2.11x. ``VOLTNET_CPU_PRODUCTS=onednn|aten`` overrides the choice
    (both compute the same sums; only the summation order differs).
    """
    chosen = os.environ.get(CPU_PRODUCTS_ENV, '').strip().lower()
    if chosen:
        if chosen not in ('onednn', 'aten'):
            raise SettingError(f'{CPU_PRODUCTS_ENV}={os.environ[CPU_PRODUCTS_ENV]!r}: expected "onednn" or "aten"')
        if chosen == 'onednn' and _ONEDNN_LINEAR is None:
            raise SettingError(f'{CPU_PRODUCTS_ENV}=onednn, but this torch build has no oneDNN linear kernel')
        return chosen
    if (_ONEDNN_LINEAR is not None and torch.backends.cpu.get_cpu_capability().startswith('AVX512')
            and cpu_vendor() == 'AuthenticAMD'):
        return 'onednn'
    return 'aten'


def _onednn_product(a, b, bias=None):
    """``a @ b.T (+ bias)`` in float32 through oneDNN; ``b`` as (out, in), any strides. A product with a dimension
    of one (the classifier's 512 -> 1 and its gradients) goes to ``nn.functional.linear``: oneDNN took 0.45 ms
    for the 512 x 1 x 512 outer product inside an epoch (profiled), against 0.017 ms for torch's own kernel in
    a micro-benchmark (0.034 ms for oneDNN's there)."""
    if _has_unit_dimension(a, b):
        return nn.functional.linear(a, b, bias)
    return _ONEDNN_LINEAR(a, b, bias, 'none', [], '')


def _has_unit_dimension(a, b) -> bool:
    """Whether ``a @ b.T`` has a dimension of one (rows, inner or outer), which torch's kernel does faster."""
    return a.shape[-1] == 1 or b.shape[0] == 1 or a.numel() == a.shape[-1]


_WORKSPACE = threading.local()
#: Buffers one thread keeps (an MHA-ResNet epoch on the 3,827 rows uses 14, 15 MB in all); past this all are dropped.
_WORKSPACE_MAX_BUFFERS = 64


def _workspace(role: str, shape, like):
    """A buffer of ``shape`` that this thread reuses for every request with the same role, shape and dtype: for
    temporaries consumed within one backward call, never returned to autograd or saved. A fresh buffer each step
    pays a page fault per 4 KiB page on first touch (profiled on this VM: a 2048 x 512 transposed copy took 2 ms
    into a fresh buffer, 0.6 ms into a reused one)."""
    buffers = getattr(_WORKSPACE, 'buffers', None)
    if buffers is None:
        buffers = _WORKSPACE.buffers = {}
    key = (role, tuple(shape), like.dtype, like.device)
    buffer = buffers.get(key)
    if buffer is None:
        if len(buffers) >= _WORKSPACE_MAX_BUFFERS:  # a long-lived process training many shapes: start afresh
            buffers.clear()
        buffer = buffers[key] = torch.empty(key[1], dtype=like.dtype, device=like.device)
    return buffer


def _transposed_copy(x):
    """``x.t()`` of a 2-D tensor as a contiguous workspace buffer (:func:`_workspace`)."""
    return _workspace('transposed', (x.shape[1], x.shape[0]), x).copy_(x.t())


def _onednn_operands(x, weight):
    """``x`` contiguous and ``weight`` contiguous or a transpose: oneDNN falls back to a slow reference kernel for
    other strides (a 13x slower epoch with one weight slice ``w[:, :, 1]``), so such operands are copied first."""
    x = x.contiguous()
    if not (weight.is_contiguous() or weight.t().is_contiguous()):
        weight = weight.contiguous()
    return x, weight


def _linear_gradients(ctx, grad, x, weight):
    """The gradients of ``x W^T + b`` (those ``ctx`` needs) as oneDNN products, ``grad`` contiguous. grad_W =
    grad^T x sums over the rows, and oneDNN wants its first operand contiguous, so one operand is transposed into
    a workspace copy: grad^T (rows x out), or x^T (rows x in) for grad_W^T = x^T grad, whose transpose autograd
    then copies (in x out). The smaller copy is taken."""
    grad_2d = grad.reshape(-1, grad.shape[-1])
    grad_x = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = _onednn_product(grad, weight.t())
    if ctx.needs_input_grad[1]:
        x_2d = x.reshape(-1, x.shape[-1])
        rows, n_out, n_in = grad_2d.shape[0], grad_2d.shape[1], x_2d.shape[1]
        if rows * n_out <= (rows + n_out) * n_in:
            grad_weight = _onednn_product(_transposed_copy(grad_2d), x_2d.t())
        else:
            grad_weight = _onednn_product(_transposed_copy(x_2d), grad_2d.t()).t()
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad_2d.sum(0)
    return grad_x, grad_weight, grad_bias


class _OneDNNLinear(torch.autograd.Function):
    """``x W^T + b`` and its three gradients as float32 oneDNN products: the same multiply-adds as
    ``nn.functional.linear``, in another summation order."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x, weight = _onednn_operands(x, weight)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_product(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return _linear_gradients(ctx, grad.contiguous(), x, weight)


class _OneDNNLinearReLU(torch.autograd.Function):
    """``relu(x W^T + b)`` as one oneDNN product with the ReLU as its post-op, and its gradients: the ReLU's mask
    applied into a workspace buffer (the masked gradient never leaves this backward), then the products of
    :class:`_OneDNNLinear`. Saves the separate ReLU's pass and output buffer forward and its gradient buffer
    backward."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x, weight = _onednn_operands(x, weight)
        output = _ONEDNN_LINEAR(x, weight, bias, 'relu', [], '')
        ctx.save_for_backward(x, weight, output)
        ctx.has_bias = bias is not None
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, output = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward.grad_input(
            grad, output, 0, grad_input=_workspace('relu', output.shape, output))
        return _linear_gradients(ctx, grad, x, weight)


def _onednn_eligible(x, weight) -> bool:
    return (_ONEDNN_LINEAR is not None and x.device.type == 'cpu' and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not torch.is_autocast_enabled('cpu'))


def cpu_linear_relu(x, weight, bias=None):
    """``relu(nn.functional.linear(x, weight, bias))``, on float32 CPU tensors as one oneDNN product with a ReLU
    post-op (:class:`_OneDNNLinearReLU`); anything else as the two torch operations."""
    if not _onednn_eligible(x, weight) or _has_unit_dimension(x, weight):
        return torch.relu(nn.functional.linear(x, weight, bias))
    return _OneDNNLinearReLU.apply(x, weight, bias)


def cpu_linear(x, weight, bias=None):
    """``nn.functional.linear`` with float32 CPU products (forward and backward) computed by oneDNN instead of
    the BLAS torch calls for ``aten::mm`` (MKL in torch's x86 wheels).

    Same arithmetic: float32 multiply-adds of the same operands, only the summation order differs (relative
    differences ~1e-6). Why: on AMD CPUs MKL runs its AVX2 kernels even where the CPU has AVX-512, and oneDNN
    does not; measured on an AMD EPYC Zen 5 core (torch 2.13, one thread, a 512 x 512 x 2048 product): MKL
    90 GFLOP/s, oneDNN 205 GFLOP/s; with oneDNN held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``) the two are level
    (98 against 90). Anything else (CUDA, other dtypes, autocast, a torch without the kernel) goes to
    ``nn.functional.linear`` unchanged.
    """
    if not _onednn_eligible(x, weight):
        return nn.functional.linear(x, weight, bias)
    return _OneDNNLinear.apply(x, weight, bias)


def _linear_forward(module: nn.Linear, x):
    return cpu_linear(x, module.weight, module.bias)


def linears_on_onednn(model: nn.Module) -> nn.Module:
    """Route every ``nn.Linear`` of ``model`` through :func:`cpu_linear` (in place; same parameters, same
    state dict; on CUDA nothing changes)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.forward = functools.partial(_linear_forward, module)
    return model


class Bottleneck(nn.Module):
    """The seed's bottleneck block: 1x1 conv, BN, ReLU; 3x1 conv, BN, ReLU; 1x1 conv, BN, ReLU; plus a 1x1-conv
    projection shortcut when the channel count changes. Note the ReLU *after* the last BN and before the sum,
    unlike He et al.: kept, since it is the seed's."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, downsample: bool = False):
        super().__init__()
        stride = 2 if downsample else 1
        self.layer = nn.Sequential(
            nn.Conv1d(in_channels, mid_channels, 1, stride),
            nn.BatchNorm1d(mid_channels),
            nn.ReLU(),
            nn.Conv1d(mid_channels, mid_channels, 3, padding=1),
            nn.BatchNorm1d(mid_channels),
            nn.ReLU(),
            nn.Conv1d(mid_channels, out_channels, 1),
            nn.BatchNorm1d(out_channels),
            nn.ReLU(),
        )
        self.res_layer = nn.Conv1d(in_channels, out_channels, 1, stride) if in_channels != out_channels else None

    def forward(self, x):
        residual = self.res_layer(x) if self.res_layer is not None else x
        return self.layer(x) + residual


class SeedResNet(nn.Module):
    """The seed notebook's 1-D ResNet trunk (``features``), ending in a 512-wide global average pool."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, 64, kernel_size=7, stride=2, padding=3),
            nn.MaxPool1d(3, 2, 1),
            Bottleneck(64, 64, 256, False),
            Bottleneck(256, 64, 256, False),
            Bottleneck(256, 64, 256, False),
            Bottleneck(256, 128, 512, True),
            Bottleneck(512, 128, 512, False),
            Bottleneck(512, 128, 512, False),
            Bottleneck(512, 128, 512, False),
            nn.AdaptiveAvgPool1d(1),
        )
        # The seed's ResNet also defines a head that MHA-ResNet never calls. Its 513 parameters are part of the
        # seed's model (and of Adam's state), so the faithful model keeps it.
        self.classifer = nn.Sequential(nn.Linear(512, 1))


class TransformerBlock(nn.Module):
    """Post-norm transformer block: 8-head self-attention, FFN 2048, dropout 0.1 (the seed's)."""

    def __init__(self, embed_dim: int = 512, num_heads: int = 8, ff_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.att = nn.MultiheadAttention(embed_dim, num_heads)
        self.ffn = nn.Sequential(nn.Linear(embed_dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, embed_dim))
        self.layernorm1 = nn.LayerNorm(embed_dim)
        self.layernorm2 = nn.LayerNorm(embed_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def attention(self, x):
        # As the seed calls it: ``att_output, _ = self.att(x, x, x)``, so need_weights keeps its default (True) and
        # the head-averaged attention weights are computed and dropped.
        return self.att(x, x, x)[0]

    def forward(self, x):
        out1 = self.layernorm1(x + self.dropout1(self.attention(x)))
        return self.layernorm2(out1 + self.dropout2(self.ffn(out1)))


class MHAResNet(nn.Module):
    """The seed's MHA-ResNet: features as a 1-channel sequence -> ResNet trunk -> 512 -> one post-norm
    transformer block -> linear to the voltage.

    ``x.unsqueeze(0)`` with a sequence-first ``nn.MultiheadAttention`` makes a sequence of length one per row:
    softmax over a single key is 1, so the attention is exactly ``out_proj(v_proj(x))``, a linear map. The
    faithful model keeps the full ``nn.MultiheadAttention`` (its Q and K weights exist and are trained to no
    effect); :func:`attention_as_linear` gives the same numbers without computing Q, K and the softmax.
    """

    def __init__(self, n_features: int, embed_dim: int = 512, num_heads: int = 8, ff_dim: int = 2048,
                 num_transformer_blocks: int = 1, dropout: float = 0.1):
        super().__init__()
        self.n_features = n_features
        self.embed_dim = embed_dim
        self.resnet = SeedResNet(1)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(embed_dim, num_heads, ff_dim, dropout) for _ in range(num_transformer_blocks)])
        self.classifier = nn.Sequential(nn.Linear(embed_dim, 1))

    def forward(self, x):
        x = x.reshape(-1, 1, x.shape[1])
        x = self.resnet.features(x)
        return self.from_embedding(x.view(-1, self.embed_dim))

    def from_embedding(self, x):
        """The transformer blocks and the classifier on the trunk's ``(batch, embed_dim)`` output."""
        x = x.unsqueeze(0)
        for block in self.transformer_blocks:
            x = block(x)
        x = x.squeeze(0)
        return self.classifier(x).squeeze(-1)


def _ffn_onednn(block: TransformerBlock, x):
    """``block.ffn`` (Linear, ReLU, Linear) with the first product and the ReLU fused (:func:`cpu_linear_relu`)."""
    first, _, second = block.ffn
    return cpu_linear(cpu_linear_relu(x, first.weight, first.bias), second.weight, second.bias)


def _single_token_attention(block: TransformerBlock, x, linear=nn.functional.linear):
    """Self-attention over a length-one sequence: softmax(q k^T / sqrt(d)) = 1, so the output is W_o (W_v x + b_v)
    + b_o exactly. Same parameters, same gradients for V and O; Q and K get none (as in the full module)."""
    att = block.att
    embed = att.embed_dim
    value = linear(x, att.in_proj_weight[2 * embed:], att.in_proj_bias[2 * embed:])
    return linear(value, att.out_proj.weight, att.out_proj.bias)


def attention_as_linear(model: MHAResNet, linear=nn.functional.linear) -> MHAResNet:
    """Switch every transformer block of ``model`` to the exact single-token form of its attention (in place),
    its two products computed by ``linear`` (``nn.functional.linear`` or :func:`cpu_linear`)."""
    for block in model.transformer_blocks:
        block.attention = functools.partial(_single_token_attention, block, linear=linear)
    return model


#: Longest input sequence that :func:`_conv1d_as_matmul` computes as a matrix product; longer ones go to the native
#: convolution. Measured on CPU (torch 2.13, oneDNN 3.12, one thread, MHA-ResNet epochs): the seed's 7 PCA
#: features (lengths 7, 4, 2, 1) are a little faster as products, the 325 leak-free features (lengths 325 down
#: to 41) 1.6x slower, the unfolded windows' copies and their backward dominating there.
MATMUL_CONV_MAX_LENGTH = 16


def _conv1d_as_matmul(conv: nn.Conv1d, x, linear=nn.functional.linear):
    """The same convolution as matrix products (:func:`_conv_channels_last` on the transposed input), for short
    sequences.

    oneDNN's Conv1d kernels have a high fixed cost for the seed's tiny sequence lengths (7 PCA features shrink to
    lengths 4, 2 and 1); a GEMM over the (batch x length) rows computes the same sums with the same weights.
    Inputs longer than :data:`MATMUL_CONV_MAX_LENGTH` use the native convolution.
    """
    if x.shape[-1] > MATMUL_CONV_MAX_LENGTH:
        return nn.Conv1d.forward(conv, x)
    return _conv_channels_last(conv, x.transpose(1, 2), linear).transpose(1, 2)


def convolutions_as_matmul(model: nn.Module, linear=nn.functional.linear) -> nn.Module:
    """Route every Conv1d of ``model`` through :func:`_conv1d_as_matmul` (in place; same parameters), its
    products computed by ``linear``."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d) and module.groups == 1 and module.dilation == (1,) \
                and module.padding_mode == 'zeros':
            module.forward = functools.partial(_conv1d_as_matmul, module, linear=linear)
    return model


def _conv_channels_last(conv: nn.Conv1d, x, linear=nn.functional.linear):
    """``conv`` applied to a channels-last ``(batch, length, channels)`` tensor, as matrix products over its rows;
    returns ``(batch, length_out, out_channels)``, the same sums as ``conv`` on ``x.transpose(1, 2)``.

    1x1 convolutions are one product over the ``batch * length`` rows; a length-one input meets the kernel at tap
    ``padding`` only, and a length-two input under a 3-wide, padding-1 kernel is one product over the
    concatenated positions with the block matrix ``[[W1, W2], [W0, W1]]``: both drop the zero-padding terms, not
    a real one. Anything else: one product over unfolded windows (a copy).
    """
    (k,), (stride,), (padding,) = conv.kernel_size, conv.stride, conv.padding
    batch, length, channels = x.shape
    weight = conv.weight
    length_out = (length + 2 * padding - k) // stride + 1
    if k == 1 and padding == 0:
        return linear(x[:, ::stride] if stride > 1 else x, weight[:, :, 0], conv.bias)
    if length == 1 and length_out == 1 and padding < k:
        return linear(x, weight[:, :, padding], conv.bias)
    if length == 2 and k == 3 and padding == 1 and stride == 1:
        # out_0 = W1 x_0 + W2 x_1 and out_1 = W0 x_0 + W1 x_1 (x_-1 and x_2 are the zero padding)
        block = torch.cat([torch.cat([weight[:, :, 1], weight[:, :, 2]], 1),
                           torch.cat([weight[:, :, 0], weight[:, :, 1]], 1)], 0)
        bias = None if conv.bias is None else conv.bias.repeat(2)
        return linear(x.reshape(batch, 2 * channels), block, bias).reshape(batch, 2, -1)
    windows = nn.functional.pad(x, (0, 0, padding, padding)).unfold(1, k, stride)  # (batch, length_out, C, k)
    return linear(windows.reshape(batch, length_out, channels * k), weight.reshape(weight.shape[0], -1), conv.bias)


def _batch_norm_relu_channels_last(norm: nn.BatchNorm1d, x):
    """``relu(norm(x))`` for a channels-last ``(batch, length, channels)`` tensor: BatchNorm1d over its
    ``batch * length`` rows (the same statistics as over the batch and length of ``(batch, channels, length)``),
    the ReLU in place on the normalized copy. (One autograd node for both, the ReLU's mask applied in a reused
    buffer, was tried: no gain beyond noise, 2026-12-02.)"""
    batch, length, channels = x.shape
    return norm(x.reshape(batch * length, channels)).relu_().reshape(batch, length, channels)


def _bottleneck_channels_last(block: Bottleneck, x, linear):
    conv1, norm1, _, conv2, norm2, _, conv3, norm3, _ = block.layer
    h = _batch_norm_relu_channels_last(norm1, _conv_channels_last(conv1, x, linear))
    h = _batch_norm_relu_channels_last(norm2, _conv_channels_last(conv2, h, linear))
    h = _batch_norm_relu_channels_last(norm3, _conv_channels_last(conv3, h, linear))
    return h + (_conv_channels_last(block.res_layer, x, linear) if block.res_layer is not None else x)


def _trunk_channels_last(features: nn.Sequential, x, linear):
    """The seed's trunk on ``(batch, n_features)`` rows, activations kept channels-last ``(batch, length,
    channels)`` so that every product, batch norm and ReLU runs over contiguous rows (the seed's
    ``(batch, channels, length)`` layout with lengths 4, 2 and 1 makes them strided)."""
    h = x.unsqueeze(-1)
    for layer in features:
        if isinstance(layer, Bottleneck):
            h = _bottleneck_channels_last(layer, h, linear)
        elif isinstance(layer, nn.Conv1d):
            h = _conv_channels_last(layer, h, linear)
        elif isinstance(layer, nn.MaxPool1d):
            h = layer(h.transpose(1, 2)).transpose(1, 2).contiguous()
        elif isinstance(layer, nn.AdaptiveAvgPool1d) and layer.output_size in (1, (1,)):
            h = h.mean(1, keepdim=True)
        else:
            raise TypeError(f'no channels-last form for trunk layer {layer!r}')
    return h.reshape(h.shape[0], -1)


def _fast_forward(model: MHAResNet, x, linear=nn.functional.linear):
    """MHAResNet.forward with the trunk channels-last (inputs up to :data:`MATMUL_CONV_MAX_LENGTH` features;
    longer ones take the module path, its convolutions native)."""
    if x.shape[1] > MATMUL_CONV_MAX_LENGTH:
        return MHAResNet.forward(model, x)
    return model.from_embedding(_trunk_channels_last(model.resnet.features, x, linear))


def _dropout(module: nn.Dropout, x):
    """``module``'s dropout with its mask drawn as ``uniform >= p`` (``torch.rand``) instead of ``bernoulli_``: the
    same distribution (each element kept with probability 1 - p, to float32's 2**-24, and scaled by 1 / (1 - p)),
    other random numbers, half the time on CPU (torch's ``bernoulli_`` costs twice its ``rand``)."""
    if not module.training or module.p == 0:
        return x
    if module.p == 1:
        return x * 0
    return x * torch.rand_like(x).ge_(module.p).mul_(1 / (1 - module.p))


def fast_mha_resnet(model: MHAResNet, onednn: bool | None = None) -> MHAResNet:
    """Same network, same parameters, same outputs (up to float summation order): single-token attention as
    a linear map, the trunk channels-last with its convolutions as matrix products (short inputs; long ones
    keep native convolutions), dropout masks from ``torch.rand`` (:func:`_dropout`: the same distribution, other
    draws) and (``onednn``; None: as :func:`cpu_products` chooses for this CPU) every float32 CPU product
    through oneDNN (:func:`cpu_linear`).
    Used by our training loop; the faithful module is kept. In place; the state dict is unchanged."""
    if onednn is None:
        onednn = cpu_products() == 'onednn'
    linear = cpu_linear if onednn else nn.functional.linear
    attention_as_linear(model, linear)
    convolutions_as_matmul(model, linear)  # the module path, for inputs too long for the channels-last trunk
    if onednn:
        linears_on_onednn(model)
        for block in model.transformer_blocks:
            block.ffn.forward = functools.partial(_ffn_onednn, block)
    for module in model.modules():
        if isinstance(module, nn.Dropout) and not module.inplace:
            module.forward = functools.partial(_dropout, module)
    model.forward = functools.partial(_fast_forward, model, linear=linear)
    return model


class MLP(nn.Module):
    """Plain multilayer perceptron (the paper's MLP/DNN baselines)."""

    def __init__(self, n_features: int, hidden: tuple[int, ...] = (256, 128), dropout: float = 0.0):
        super().__init__()
        layers, width = [], n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).squeeze(-1)


class LSTMRegressor(nn.Module):
    """LSTM baseline: the feature vector read as a sequence of scalars, last hidden state to the voltage."""

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        output, _ = self.lstm(x.unsqueeze(-1))
        return self.head(output[:, -1]).squeeze(-1)


class ResidualMLP(nn.Module):
    """Our leak-free network: pre-norm residual MLP blocks (LayerNorm, SiLU, dropout)."""

    def __init__(self, n_features: int, width: int = 384, blocks: int = 3, dropout: float = 0.1):
        super().__init__()
        self.inp = nn.Linear(n_features, width)
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width * 2), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(width * 2, width)) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).squeeze(-1)


NETWORKS = {'mha_resnet': MHAResNet, 'mlp': MLP, 'lstm': LSTMRegressor, 'residual_mlp': ResidualMLP}


def build_network(architecture: str, n_features: int, **hyper) -> nn.Module:
    try:
        cls = NETWORKS[architecture]
    except KeyError:
        raise ValueError(f'unknown network {architecture!r}; choose one of {", ".join(NETWORKS)}') from None
    if 'hidden' in hyper:
        hyper['hidden'] = tuple(hyper['hidden']) if isinstance(hyper['hidden'], (list, tuple)) else hyper['hidden']
    return cls(n_features, **hyper)
