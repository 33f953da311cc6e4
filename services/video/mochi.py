"""The `mochi` backend: Genmo's Mochi-1 preview (diffusers format), the CLAP pipeline's model.

Mochi-1 preview makes 480p (848×480) video at 30 fps, up to 163 frames (about 5.4 s). Its VAE
decoder needs tens of GB at full size, so VAE tiling is on by default, as diffusers recommends.
There is no Mochi image-to-video model: a segment longer than one clip is retimed.

Genmo publishes the weights twice, float32 and a `bf16` variant (`*.bf16.safetensors`, half the
download and the reading). The variant is loaded where it is there to load: from the hub unless
the dtype is float32, from a local folder that holds it (diffusers 0.42.1 refuses `variant=` for a
local folder with no variant files at all, so a folder without them loads without).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from services.video.diffusion import DiffusionClipGenerator
from services.video.timing_policy import NativeFormat

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

log = logging.getLogger(__name__)

WEIGHTS_VARIANT = "bf16"
# diffusers' weight file names for a variant: model.bf16.safetensors, or shards model.bf16-00001-of-00002.safetensors
_VARIANT_FILE = re.compile(rf"\.{WEIGHTS_VARIANT}(-\d+-of-\d+)?\.safetensors$")


class MochiGenerator(DiffusionClipGenerator):
    name = "mochi"
    title = "Mochi-1 preview text-to-video"
    native = NativeFormat(fps=30, frame_step=6, max_frames=163)  # 163 frames: about 5.4 s
    model_env = "MVGEN_MOCHI_MODEL"
    default_model = "genmo/mochi-1-preview"
    sizes = {"480p": (848, 480)}
    size_multiple = 16  # VAE 8 × patch 2
    default_steps = 64
    default_guidance = 4.5
    default_negative_prompt = ""  # as Genmo's reference sampler
    default_vae_tiling = True

    def _load_pipeline(self, dtype: torch.dtype) -> DiffusionPipeline:
        from diffusers import MochiPipeline

        variant = weights_variant(self.settings.model, self.settings.dtype)
        log.info("mochi: loading %s weights from %s", f"the {variant} variant's" if variant else "the plain",
                 self.settings.model)
        return MochiPipeline.from_pretrained(self.settings.model, dtype=dtype, variant=variant)

    def _decode(self, pipeline: DiffusionPipeline, latents: torch.Tensor) -> torch.Tensor:
        # As MochiPipeline decodes: undo the latent normalisation (mean/std when the VAE has them), then the VAE.
        import torch
        from diffusers.utils.torch_utils import get_module_execution_device

        vae = pipeline.vae
        config = vae.config
        latents = latents.to(get_module_execution_device(vae), vae.dtype)
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            shape = (1, config.latent_channels, 1, 1, 1)
            mean = torch.tensor(config.latents_mean).view(shape).to(latents)
            std = torch.tensor(config.latents_std).view(shape).to(latents)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        return vae.decode(latents, return_dict=False)[0]


def weights_variant(model: str, dtype: str) -> str | None:
    """`bf16` where the weights have that variant and it serves the dtype, else None (the plain weights).

    A hub id (genmo/mochi-1-preview publishes the variant): bf16 unless the dtype is float32, which
    the plain float32 weights serve better. A local folder: bf16 where its component folders hold
    variant files, unless the dtype is float32 and plain weights are there too.
    """
    folder = Path(model)
    if not folder.is_dir():
        return None if dtype == "float32" else WEIGHTS_VARIANT
    weights = [f.name for f in folder.glob("*/*.safetensors")]
    variant = [name for name in weights if _VARIANT_FILE.search(name)]
    if not variant:
        return None
    plain = len(variant) < len(weights)
    return None if dtype == "float32" and plain else WEIGHTS_VARIANT
