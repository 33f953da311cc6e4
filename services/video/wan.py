"""The `wan` backend: Wan 2.1 text-to-video (1.3B or 14B, diffusers format), the LALM pipeline's model.

Weights in bf16 except the VAE, which Wan keeps in float32 (its decoder loses detail in bf16).
The scheduler's flow shift follows the resolution as Wan recommends (3.0 at 480p, 5.0 at 720p).
With MVGEN_LONG_SEGMENT_POLICY=continue, a segment longer than one clip is continued from the
last frame by Wan 2.1's image-to-video model (14B only), which shares the text encoder and VAE
when nothing is offloaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.video.diffusion import DiffusionClipGenerator
from services.video.timing_policy import NativeFormat

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

# Wan's own negative prompt (the English of the one in Wan's repository): the artefacts it avoids.
WAN_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)
IMAGE_TO_VIDEO_MODELS = {"480p": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
                         "720p": "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"}
FLOW_SHIFTS = {"480p": 3.0, "720p": 5.0}
MAX_PROMPT_TOKENS = 512  # WanPipeline's own default


class WanGenerator(DiffusionClipGenerator):
    name = "wan"
    title = "Wan 2.1 text-to-video"
    native = NativeFormat(fps=16, frame_step=4, max_frames=81)  # 81 frames: about 5 s
    model_env = "MVGEN_WAN_MODEL"
    default_model = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    continuation_model_env = "MVGEN_WAN_I2V_MODEL"
    flow_shift_env = "MVGEN_WAN_FLOW_SHIFT"
    sizes = {"480p": (832, 480), "720p": (1280, 720)}
    size_multiple = 16  # VAE 8 × patch 2
    default_steps = 50
    default_guidance = 5.0
    default_negative_prompt = WAN_NEGATIVE_PROMPT

    @classmethod
    def default_continuation_model(cls, resolution: str) -> str:
        return IMAGE_TO_VIDEO_MODELS.get(resolution, IMAGE_TO_VIDEO_MODELS["480p"])

    @classmethod
    def default_flow_shift(cls, resolution: str) -> float | None:
        return FLOW_SHIFTS.get(resolution)

    def _load_pipeline(self, dtype: torch.dtype) -> DiffusionPipeline:
        import torch
        from diffusers import AutoencoderKLWan, WanPipeline

        vae = AutoencoderKLWan.from_pretrained(self.settings.model, subfolder="vae", dtype=torch.float32)
        pipeline = WanPipeline.from_pretrained(self.settings.model, vae=vae, dtype=dtype)
        self._set_flow_shift(pipeline)
        return pipeline

    def _load_continuation(self, dtype: torch.dtype, text_to_video: DiffusionPipeline) -> DiffusionPipeline:
        import torch
        from diffusers import AutoencoderKLWan, WanImageToVideoPipeline
        from transformers import CLIPVisionModel

        model = self.settings.continuation_model
        # No text encoder: continuations get the prompt embeddings of the text-to-video pipeline (the
        # same UMT5-XXL, ~11 GB in bf16, loaded once).
        if self.settings.offload == "none":
            vae = text_to_video.vae
        else:
            # Offload hooks belong to one pipeline: a module shared by two would lose one pipeline's hooks.
            vae = AutoencoderKLWan.from_pretrained(model, subfolder="vae", dtype=torch.float32)
        image_encoder = CLIPVisionModel.from_pretrained(model, subfolder="image_encoder", dtype=torch.float32)
        pipeline = WanImageToVideoPipeline.from_pretrained(model, vae=vae, image_encoder=image_encoder,
                                                           text_encoder=None, tokenizer=None, dtype=dtype)
        self._set_flow_shift(pipeline)
        return pipeline

    def _set_flow_shift(self, pipeline: DiffusionPipeline) -> None:
        shift = self.settings.flow_shift
        if shift is not None and "flow_shift" in pipeline.scheduler.config:
            pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config, flow_shift=shift)

    def _prompt_arguments(self, prompt: str) -> dict[str, Any]:
        # Encoded once per output clip, also for its continuations (whose pipeline has no text encoder).
        # Without autograd (WanPipeline's __call__ is under no_grad, its encode_prompt is not): embeddings
        # with a grad_fn would keep UMT5-XXL's activations alive through denoising and decoding.
        import torch

        pipeline = self.pipeline
        assert pipeline is not None  # loaded
        with torch.inference_mode():
            positive, negative = pipeline.encode_prompt(
                prompt, self.settings.negative_prompt, do_classifier_free_guidance=self.settings.guidance > 1.0,
                max_sequence_length=MAX_PROMPT_TOKENS, device=pipeline._execution_device)
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative}

    def _decode(self, pipeline: DiffusionPipeline, latents: torch.Tensor) -> torch.Tensor:
        return decode_wan_latents(pipeline.vae, latents)


def decode_wan_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """As WanPipeline decodes: undo the per-channel latent normalisation, then the VAE (float32);
    returns video (batch, channels, frames, height, width) in [-1, 1]."""
    import torch
    from diffusers.utils.torch_utils import get_module_execution_device

    latents = latents.to(get_module_execution_device(vae), vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
    std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
    return vae.decode(latents * std + mean, return_dict=False)[0]
