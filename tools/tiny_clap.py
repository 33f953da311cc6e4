"""Build an msclap (CLAP 2023) checkpoint with random weights, offline: for tests, benchmarks and trying the pipeline.

The checkpoint has the real structure: msclap's own `CLAP` module with HTSAT at its real size (the
audio encoder's size is fixed by msclap's code: 31 M parameters, ~128 MB), the real projection
sizes, and a GPT-2 text encoder made tiny (2 layers, width 32) with a byte-level BPE tokenizer
trained here on the label vocabulary. It loads through the same path as the real weights:

    python -m tools.tiny_clap OUT_DIR
    MVGEN_CLAP_WEIGHTS=OUT_DIR mvgen generate song.wav --analysis clap

OUT_DIR gets `clap_weights.pth` (msclap's format: {"model": state_dict}), `config.yml` (msclap's
2023 config with the tiny text encoder) and `gpt2-text-encoder/` (the text model and tokenizer;
msclap picks its GPT-2 code path because the folder's path contains "gpt").

The weights are random: the labels it produces are meaningless. It exercises loading, windowing,
batching, scoring and labels.json, not musical judgement.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2Model, GPT2Tokenizer  # transformers 5: the fast tokenizer

from services.analysis.msclap_compat import import_msclap, msclap_text_family, packaged_config
from services.common.vocabulary import LABELS_DIR, load_vocabulary

WEIGHTS_FILE = "clap_weights.pth"
CONFIG_FILE = "config.yml"
TEXT_MODEL_DIR = "gpt2-text-encoder"
END_OF_TEXT = "<|endoftext|>"  # msclap appends it to every text and embeds the hidden state there
PAD = "!"  # msclap pads GPT-2 input with '!' and counts real tokens as ids != 0: '!' must be id 0
TEXT_WIDTH = 32
TEXT_LAYERS = 2
TEXT_HEADS = 2
VOCAB_SIZE = 400  # 256 byte symbols and ~140 merges: enough for the label texts to tokenise into words


@dataclass(frozen=True)
class TinyClap:
    folder: Path
    weights: Path
    config: Path
    text_model: Path


def build_tiny_clap(folder: Path, seed: int = 0) -> TinyClap:
    """Write a random-weight msclap checkpoint, its config and its text model into `folder`."""
    folder = folder.resolve()
    text_model = folder / TEXT_MODEL_DIR
    if msclap_text_family(str(text_model)) != "gpt":
        raise ValueError(f"{text_model}: msclap would not take its GPT-2 path for this folder (its path must "
                         "contain 'gpt' and none of 'clip', 'roberta', 'bert' before it): choose another folder")
    text_model.mkdir(parents=True, exist_ok=True)
    import_msclap()  # msclap's modules import torchaudio: see services/analysis/msclap_compat.py
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)

    tokenizer = _train_tokenizer()
    tokenizer.save_pretrained(text_model)
    gpt2 = GPT2Model(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=TEXT_WIDTH,
                                n_layer=TEXT_LAYERS, n_head=TEXT_HEADS, bos_token_id=tokenizer.eos_token_id,
                                eos_token_id=tokenizer.eos_token_id))
    gpt2.save_pretrained(text_model)

    config = yaml.safe_load(packaged_config("2023").read_text())
    config.update(text_model=TEXT_MODEL_DIR, transformer_embed_dim=TEXT_WIDTH)
    config_path = folder / CONFIG_FILE
    config_path.write_text(
        "# msclap's 2023 config with a tiny random GPT-2 text encoder (tools/tiny_clap.py); text_model is\n"
        "# relative to this file's folder.\n" + yaml.safe_dump(config, sort_keys=False))

    # msclap's own CLAP module: HTSAT, the projections and the text encoder, as the real checkpoint has them.
    from msclap.models.clap import CLAP

    clap = CLAP(audioenc_name=config["audioenc_name"], sample_rate=config["sampling_rate"],
                window_size=config["window_size"], hop_size=config["hop_size"], mel_bins=config["mel_bins"],
                fmin=config["fmin"], fmax=config["fmax"], classes_num=config["num_classes"],
                out_emb=config["out_emb"], text_model=str(text_model),
                transformer_embed_dim=config["transformer_embed_dim"], d_proj=config["d_proj"])
    weights = folder / WEIGHTS_FILE
    torch.save({"model": clap.state_dict()}, weights)
    return TinyClap(folder, weights, config_path, text_model)


def _train_tokenizer() -> GPT2Tokenizer:
    """A byte-level BPE tokenizer trained on the label vocabulary, laid out as msclap expects of GPT-2's."""
    corpus = [prompt for label_set in load_vocabulary(LABELS_DIR).values() for prompt in label_set.prompts()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # No special tokens while training, so that the byte alphabet comes first and '!' (the first
    # printable byte) gets id 0; the end-of-text token is added after.
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tokenizer = GPT2Tokenizer(tokenizer_object=bpe, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                  unk_token=END_OF_TEXT, model_max_length=128)
    if tokenizer.convert_tokens_to_ids(PAD) != 0:
        raise RuntimeError(f"the trained tokenizer gives {PAD!r} the id {tokenizer.convert_tokens_to_ids(PAD)}, "
                           "not 0 as msclap needs")
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="where to write the checkpoint, config and text model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    built = build_tiny_clap(args.folder, args.seed)
    size_mb = built.weights.stat().st_size / 1e6
    print(f"wrote {built.weights} ({size_mb:.0f} MB, random weights), {built.config}, {built.text_model}/")
    print(f"use it with: MVGEN_CLAP_WEIGHTS={built.folder} mvgen generate SONG --analysis clap")


if __name__ == "__main__":
    main()
