"""Save a tiny text-to-video pipeline with random weights, in the diffusers format of the real one.

    python -m tools.tiny_t2v wan OUT_DIR      # WanPipeline (Wan 2.1 text-to-video), ~0.3 MB
    python -m tools.tiny_t2v wan-i2v OUT_DIR  # WanImageToVideoPipeline, for the continuation policy
    python -m tools.tiny_t2v mochi OUT_DIR    # MochiPipeline (Mochi-1), ~3 MB

Every component is built from a small configuration and saved with `save_pretrained`, so the
video service loads it with the same `from_pretrained` call that loads the real weights, and no
model hub is asked. The output is noise: this is for tests of the loading, timing, progress and
cancellation paths, and for trying the service without a GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

KINDS = ("wan", "wan-i2v", "mochi")
TEXT_DIM = 32  # the tiny text encoder's width, which the transformers' text projections must match
# Words the tokenizer learns as whole pieces; anything else is spelled from its characters.
CORPUS = (
    "a the and of in on with at over under through across into by from as is are her his their its "
    "man woman child girl boy dog cat bird sea river city street night day light dark rain snow sun moon "
    "slow fast shot camera close wide film colour palette look lighting atmosphere style character "
    "dances runs walks stands looks turns falls flies swims sings waves storm fire smoke glass neon"
)


def build_tokenizer():
    """A T5-style tokenizer (pad, eos, unk) trained here on a few words: no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tokenizer.train_from_iterator([CORPUS, CORPUS.upper()], trainer)
    return T5TokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=512)


def build_wan(image_to_video: bool):
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    transformer_args = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, out_channels=16,
                            text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    if not image_to_video:
        transformer = WanTransformer3DModel(in_channels=16, **transformer_args)
        return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                           transformer=transformer)
    # Wan 2.1 image-to-video: the latents gain the first frame's latents and a mask (16 + 16 + 4
    # channels), and the CLIP image embedding joins the text in cross-attention.
    transformer = WanTransformer3DModel(in_channels=36, image_dim=4, **transformer_args)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=4, projection_dim=4, num_hidden_layers=2,
                                                     num_attention_heads=2, image_size=32, intermediate_size=16,
                                                     patch_size=1))
    image_processor = CLIPImageProcessor(crop_size=32, size=32, do_center_crop=True, do_normalize=True,
                                         do_resize=True, image_mean=[0.481, 0.458, 0.408],
                                         image_std=[0.269, 0.261, 0.276], resample=3)
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                   transformer=transformer, image_encoder=image_encoder,
                                   image_processor=image_processor)


def build_mochi():
    import torch
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id))
    transformer = MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                                          pooled_projection_dim=16, in_channels=12, out_channels=None,
                                          qk_norm="rms_norm", text_embed_dim=TEXT_DIM, time_embed_dim=4,
                                          activation_fn="swiglu", max_sequence_length=16)
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                             decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1))
    return MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                         tokenizer=tokenizer, transformer=transformer)


def save_tiny_pipeline(kind: str, out_dir: Path) -> Path:
    """Build the tiny `kind` pipeline and save it to `out_dir` (created); returns `out_dir`."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    pipeline = build_mochi() if kind == "mochi" else build_wan(image_to_video=kind == "wan-i2v")
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    out = save_tiny_pipeline(args.kind, args.out_dir)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"saved a tiny {args.kind} pipeline with random weights to {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
