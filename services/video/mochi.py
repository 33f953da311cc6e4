"""The `mochi` backend: Genmo's Mochi-1 preview (diffusers format), the CLAP pipeline's model.

Mochi-1 preview makes 480p (848×480) video at 30 fps, up to 163 frames (about 5.4 s). Its VAE
decoder needs tens of GB at full size, so VAE tiling is on by default, as diffusers recommends.
There is no Mochi image-to-video model: a segment longer than one clip is retimed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.video.diffusion import DiffusionClipGenerator
from services.video.timing_policy import NativeFormat

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline


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

        return MochiPipeline.from_pretrained(self.settings.model, dtype=dtype)

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
