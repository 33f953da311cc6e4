"""The musicnn network (Pons and Serra, 2019) in torch: an exact port of upstream's `build_musicnn`
(musicnn/models.py, TensorFlow 1 layers), loaded from the trained checkpoints that ship in the
`musicnn` wheel, read by checkpoint.py without TensorFlow.

Layout: upstream works in NHWC with H = time and W = mel bands; here the timbral and temporal
convolutions run on (batch, 1, time, mels) and the mid-end on (batch, channels, time). Where the
two frameworks differ, the port follows TensorFlow:
- batch normalisation is TF v1 `layers.batch_normalization` at inference: epsilon 1e-3, moving statistics;
- 'same' padding of the temporal convolutions puts total // 2 frames before and the rest after;
- every front-end block is conv -> relu -> batch norm (in that order), then max over the mel axis
  (computed in an equivalent, cheaper order: see _relu_norm_max_over_mels);
- the back-end flattens (features, [max, mean]) row-major, so max and mean pools interleave.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from services.analysis.musicnn.frontend import N_MELS
from services.common.errors import StageFailedError

TF_BATCH_NORM_EPSILON = 1e-3
FRONTEND_FILTERS = 1.6  # upstream's num_filt: 204 timbral filters (1.6 * 128) and 51 temporal ones (1.6 * 32)
TIMBRAL_KERNELS = ((7, int(0.4 * N_MELS)), (7, int(0.7 * N_MELS)))  # (time, mels): 7x38 and 7x67
TEMPORAL_KERNELS = (128, 64, 32)  # frames; one mel band wide
MIDEND_KERNEL = 7
# Checkpoint variables that are the optimiser's state, not the network's: Adam's moments and powers.
OPTIMIZER_SUFFIXES = ("/Adam", "/Adam_1")
OPTIMIZER_NAMES = ("beta1_power", "beta2_power", "global_step")


class MusicnnNetwork(nn.Module):
    """Log-mel patches (batch, frames, 96) -> tag probabilities (batch, tags)."""

    def __init__(self, num_tags: int = 50, midend_filters: int = 64, backend_units: int = 200) -> None:
        super().__init__()
        timbral_filters = int(FRONTEND_FILTERS * 128)
        temporal_filters = int(FRONTEND_FILTERS * 32)
        self.input_norm = _batch_norm(nn.BatchNorm2d, 1)
        self.timbral = nn.ModuleList(nn.Conv2d(1, timbral_filters, k) for k in TIMBRAL_KERNELS)
        self.timbral_norm = nn.ModuleList(_batch_norm(nn.BatchNorm2d, timbral_filters) for _ in TIMBRAL_KERNELS)
        self.temporal = nn.ModuleList(nn.Conv2d(1, temporal_filters, (k, 1)) for k in TEMPORAL_KERNELS)
        self.temporal_norm = nn.ModuleList(_batch_norm(nn.BatchNorm2d, temporal_filters) for _ in TEMPORAL_KERNELS)
        frontend_channels = len(TIMBRAL_KERNELS) * timbral_filters + len(TEMPORAL_KERNELS) * temporal_filters
        self.midend = nn.ModuleList([nn.Conv1d(frontend_channels, midend_filters, MIDEND_KERNEL),
                                     nn.Conv1d(midend_filters, midend_filters, MIDEND_KERNEL),
                                     nn.Conv1d(midend_filters, midend_filters, MIDEND_KERNEL)])
        self.midend_norm = nn.ModuleList(_batch_norm(nn.BatchNorm1d, midend_filters) for _ in range(3))
        pooled = 2 * (frontend_channels + 3 * midend_filters)  # max and mean of every front- and mid-end feature
        self.pool_norm = _batch_norm(nn.BatchNorm1d, pooled)
        self.dense = nn.Linear(pooled, backend_units)
        self.dense_norm = _batch_norm(nn.BatchNorm1d, backend_units)
        self.output = nn.Linear(backend_units, num_tags)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(patches.unsqueeze(1))  # (batch, 1, time, mels)
        padded = F.pad(x, (0, 0, 3, 3))  # time only: 'same' in time for the 7-frame timbral kernels
        features = [_relu_norm_max_over_mels(conv(padded), norm) for conv, norm in zip(self.timbral, self.timbral_norm)]
        for conv, norm, k in zip(self.temporal, self.temporal_norm, TEMPORAL_KERNELS):
            same = F.pad(x, (0, 0, (k - 1) // 2, (k - 1) - (k - 1) // 2))  # TF 'same': the extra frame after
            features.append(_relu_norm_max_over_mels(conv(same), norm))
        frontend = torch.cat(features, dim=1)  # (batch, 561, time)

        pad = MIDEND_KERNEL // 2
        cnn1 = self.midend_norm[0](F.relu(self.midend[0](F.pad(frontend, (pad, pad)))))
        cnn2 = self.midend_norm[1](F.relu(self.midend[1](F.pad(cnn1, (pad, pad))))) + cnn1
        cnn3 = self.midend_norm[2](F.relu(self.midend[2](F.pad(cnn2, (pad, pad))))) + cnn2
        stacked = torch.cat([frontend, cnn1, cnn2, cnn3], dim=1)  # (batch, 753, time)

        pooled = torch.stack([stacked.amax(dim=2), stacked.mean(dim=2)], dim=2).flatten(1)
        hidden = self.dense_norm(F.relu(self.dense(self.pool_norm(pooled))))
        return torch.sigmoid(self.output(hidden))


def _batch_norm(kind: type[nn.modules.batchnorm._BatchNorm], channels: int) -> nn.Module:
    return kind(channels, eps=TF_BATCH_NORM_EPSILON)


def _relu_norm_max_over_mels(conv: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """max over mels of norm(relu(conv)), (batch, channels, time, mels) -> (batch, channels, time), without
    normalising every cell: batch norm at inference is a per-channel affine map, increasing where gamma
    >= 0 and decreasing where gamma < 0, and relu is increasing, so that max is norm(relu(max over mels))
    or norm(relu(min over mels)) per channel. The same numbers as upstream's order, in about 2/3 of the
    time (relu and batch norm over the full maps took 35% of a forward pass)."""
    assert isinstance(norm, nn.modules.batchnorm._BatchNorm)  # a ModuleList's items are typed as Module
    # amax and amin separately: torch.aminmax over the last axis took 2.5 times as long as the two.
    extreme = torch.where((norm.weight >= 0)[None, :, None], conv.amax(dim=3), conv.amin(dim=3))
    return F.batch_norm(F.relu(extreme), norm.running_mean, norm.running_var, norm.weight, norm.bias,
                        training=False, eps=norm.eps)


def is_optimizer_state(name: str) -> bool:
    return name in OPTIMIZER_NAMES or name.endswith(OPTIMIZER_SUFFIXES)


def checkpoint_names(network: MusicnnNetwork) -> dict[str, str]:
    """torch parameter/buffer name -> TF variable name, in the order upstream creates its layers (the
    auto-numbered names conv2d, conv2d_1, ..., batch_normalization_1, ... follow creation order)."""
    convs = ([f"timbral.{i}" for i in range(2)] + [f"temporal.{i}" for i in range(3)]
             + [f"midend.{i}" for i in range(3)])
    norms = (["input_norm"] + [f"timbral_norm.{i}" for i in range(2)] + [f"temporal_norm.{i}" for i in range(3)]
             + [f"midend_norm.{i}" for i in range(3)] + ["pool_norm", "dense_norm"])
    names: dict[str, str] = {}
    for i, module in enumerate(convs):
        tf = "conv2d" + (f"_{i}" if i else "")
        names[f"{module}.weight"], names[f"{module}.bias"] = f"{tf}/kernel", f"{tf}/bias"
    for i, module in enumerate(norms):
        tf = "batch_normalization" + (f"_{i}" if i else "")
        for torch_name, tf_name in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                    ("running_var", "moving_variance")):
            names[f"{module}.{torch_name}"] = f"{tf}/{tf_name}"
    for module, tf in (("dense", "dense"), ("output", "dense_1")):
        names[f"{module}.weight"], names[f"{module}.bias"] = f"{tf}/kernel", f"{tf}/bias"
    expected = {n for n, _ in network.named_parameters()} | {n for n, _ in network.named_buffers()
                                                             if not n.endswith("num_batches_tracked")}
    if set(names) != expected:  # a programming error in this table, not a bad checkpoint
        raise AssertionError(f"checkpoint name table out of step with the network: {sorted(set(names) ^ expected)}")
    return names


def _to_torch_layout(tf_value: np.ndarray, torch_shape: torch.Size) -> np.ndarray:
    """A TF kernel in torch's layout: conv2d HWIO -> OIHW, the mid-end's (7, C, 1, O) -> conv1d (O, C, 7),
    dense (in, out) -> (out, in); vectors as they are."""
    if tf_value.ndim == 4 and len(torch_shape) == 4:
        return tf_value.transpose(3, 2, 0, 1)
    if tf_value.ndim == 4 and len(torch_shape) == 3:
        return tf_value[:, :, 0, :].transpose(2, 1, 0)
    if tf_value.ndim == 2:
        return tf_value.T
    return tf_value


def load_network(variables: Mapping[str, np.ndarray], where: str) -> tuple[MusicnnNetwork, list[str]]:
    """The network with every parameter and statistic from the checkpoint's `variables`; also returns the
    checkpoint variables it did not use (the optimiser's state). Raises StageFailedError, naming
    `where`, if a variable is missing, has another shape, or is neither the network's nor the optimiser's."""
    num_tags = variables["dense_1/bias"].shape[0] if "dense_1/bias" in variables else 50
    network = MusicnnNetwork(num_tags=num_tags)
    names = checkpoint_names(network)
    state = network.state_dict()
    missing = [tf for tf in names.values() if tf not in variables]
    if missing:
        raise StageFailedError(f"{where}: not a musicnn checkpoint: it lacks {len(missing)} of the network's "
                               f"variables, e.g. {', '.join(missing[:3])}")
    for torch_name, tf_name in names.items():
        value = _to_torch_layout(variables[tf_name], state[torch_name].shape)
        if tuple(value.shape) != tuple(state[torch_name].shape):
            raise StageFailedError(f"{where}: {tf_name} has shape {variables[tf_name].shape}; the musicnn network "
                                   f"needs {tuple(state[torch_name].shape)} for {torch_name}")
        state[torch_name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    network.load_state_dict(state, strict=True)
    used = set(names.values())
    unused = sorted(n for n in variables if n not in used)
    foreign = [n for n in unused if not is_optimizer_state(n)]
    if foreign:
        raise StageFailedError(f"{where}: holds variables the musicnn network does not have, e.g. "
                               f"{', '.join(foreign[:3])}: another architecture (a vgg model?)")
    return network.eval(), unused
