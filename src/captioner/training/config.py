"""Every setting of a training run, defined once: TrainConfig's fields give the defaults, ranges and help that
`captioner train` (and `data stats` and `extract`, for the dataset and encoder options) build their flags
from, and the checks that refuse a wrong setting before any work."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from captioner.data.concepts import DEFAULT_NUM_CONCEPTS
from captioner.data.formats import DATASET_TYPES
from captioner.data.visual_genome import DEFAULT_MIN_REGION_AREA
from captioner.errors import CaptionerError
from captioner.features.encoders import ENCODERS
from captioner.models.concept_input import CONCEPT_INPUTS
from captioner.models.decoders import DECODER_TYPES
from captioner.models.sentence_encoder import model_folder
from captioner.options import check, option, specs
from captioner.training.presets import PRESETS
from captioner.training.schedulers import ScheduleSettings

DATASET, ENCODER, IMAGES = "dataset", "encoder and feature cache", "training on images instead of the feature cache"
MODEL, OPTIMISATION, RUN = "model", "optimisation", "run"


@dataclass
class TrainConfig:
    """Every setting of a run; saved as run_config.json and in every checkpoint."""

    dataset_type: str = option("shapes", "caption format / dataset (default: shapes, the synthetic set drawn on the "
                                         "fly)", choices=DATASET_TYPES, group=DATASET)
    data_dir: str | None = option(None, "dataset folder (for shapes: where to draw it; default a cache folder)",
                                  path=True, group=DATASET)
    captions_file: str | None = option(None, "caption file to use instead of the one found in --data_dir",
                                       path=True, group=DATASET)
    max_images: int | None = option(None, "use about this many images: the same share of every split, at least one "
                                          "image of each", low=1, group=DATASET)
    subset_fraction: float | None = option(None, "use only this share (0-1] of every split", above=0, high=1,
                                           group=DATASET)
    seed: int = option(42, "seed for subsets, splits and training (default 42)", group=DATASET)
    freq_threshold: int = option(5, "keep words seen at least this often (default 5)", low=1, group=DATASET)
    max_vocab: int | None = option(None, "cap the vocabulary at this many words, specials included", low=1,
                                   group=DATASET)
    min_region_area: float = option(DEFAULT_MIN_REGION_AREA, "visual_genome: keep the region descriptions covering at least this share "
                                         "of their image (default 0.3: those read like captions of the whole image)",
                                    low=0, high=1, group=DATASET)
    encoder: str = option("efficientnet_lite0", "CNN encoder", choices=tuple(ENCODERS), group=ENCODER)
    encoder_weights: str | None = option(None, "local .pth weights for torchvision encoders", path=True,
                                         group=ENCODER)
    image_size: int | None = option(None, "input side in pixels (default: the encoder's own, 224 for lite0)", low=1,
                                    group=ENCODER)
    cache_dir: str | None = option(None, "feature cache folder (default: one per dataset and settings under "
                                         "~/.cache/captioner/features or $CAPTIONER_CACHE)", path=True, group=ENCODER)
    augment_flip: bool = option(False, "also cache features of horizontally flipped images", group=ENCODER)
    tune_encoder_epochs: int = option(0, "before the captions, tune the encoder's last blocks for this many epochs to "
                                         "tell each training photo's concepts, on a cache of the grid below them "
                                         "(EfficientNet-Lite; about a minute an epoch for lite2 on 2 cores)", low=0,
                                      group=ENCODER)
    tune_encoder_blocks: int = option(4, "--tune_encoder_epochs: how many of the encoder's last blocks (and the head "
                                         "after them) are tuned", low=1, group=ENCODER)
    tune_encoder_lr: float = option(2e-4, "--tune_encoder_epochs: peak learning rate of the tuned blocks", above=0,
                                    group=ENCODER)
    num_workers: int | None = option(None, "image-decoding worker processes (default: 0 on a CPU with 2 cores, where "
                                           "inline decoding is faster; more with CUDA)", low=0, group=ENCODER)
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda when present)", group=ENCODER)
    fine_tune_encoder: bool = option(False, "train the encoder too (batch norm stays frozen)", group=IMAGES)
    augment: bool = option(False, "random crop, flip and colour jitter of each image", group=IMAGES)
    encoder_lr: float = option(1e-4, "learning rate of a fine-tuned encoder", above=0, group=IMAGES)
    decoder: str = option("attention", "default: attention", choices=DECODER_TYPES, group=MODEL)
    embed_size: int = option(512, low=1, group=MODEL)
    hidden_size: int = option(512, low=1, group=MODEL)
    attention_dim: int = option(512, low=1, group=MODEL)
    num_layers: int | None = option(None, "layers of lstm/gru (default 1) and transformer (default 3) decoders", low=1,
                                    group=MODEL)
    num_heads: int = option(8, "transformer: attention heads per layer; --hidden_size must be a multiple of it",
                            low=1, group=MODEL)
    drop_prob: float | None = option(None, "dropout (default 0.5; transformer 0.1)", low=0, below=1, group=MODEL)
    image_init: str = option("input", "lstm/gru: the image is the first input (default) or the initial state",
                             choices=("input", "state"), group=MODEL)
    deep_output: bool = option(False, "attention: read each word from h, the attended context and the previous word "
                                      "(Xu et al.)", group=MODEL)
    embed_dropout: float = option(0.0, "attention: dropout on the word embeddings", low=0, below=1, group=MODEL)
    alpha_c: float = option(1.0, "attention: doubly stochastic regularisation weight", low=0, group=MODEL)
    num_concepts: int = option(DEFAULT_NUM_CONCEPTS, "concepts a head learns to tag images with: the most frequent "
                                                     "content words of the training captions, lemmatized (0: no head)",
                               low=0, group=MODEL)
    concept_weight: float = option(1.0, "weight of the concept head's loss beside the captions' cross-entropy", low=0,
                                   group=MODEL)
    concept_epochs: int = option(0, "train the concept head alone for this many epochs before the captions (seconds "
                                    "each)", low=0, group=MODEL)
    concept_lr: float = option(1e-3, "learning rate of --concept_epochs", above=0, group=MODEL)
    use_concepts: bool = option(False, "the captions read the concepts the head predicts (see --concept_input)",
                                group=MODEL)
    concept_input: str = option("project", "with --use_concepts: project the probabilities into the initial state, "
                                           "gates and output (default) or attend to the likeliest concepts",
                                choices=CONCEPT_INPUTS, group=MODEL)
    concept_top_k: int = option(20, "--concept_input attend: the likeliest concepts attended to", low=1, group=MODEL)
    embedding_epochs: int = option(0, "after the captions, train the text-image embedding `captioner search` ranks "
                                      "a library with for this many epochs (seconds each; 0: none)", low=0,
                                   group=MODEL)
    embedding_lr: float = option(2e-3, "peak learning rate of --embedding_epochs", above=0, group=MODEL)
    embedding_text: str = option("words", "what the embedding reads of a sentence: its words, through a GRU of its "
                                          "own, or the vector a pretrained sentence encoder (all-MiniLM-L6-v2) "
                                          "gives it",
                                 choices=("words", "sentence"), group=MODEL)
    embedding_dropout: float = option(0.1, "dropout on the embedding's inputs in training", low=0, below=1,
                                      group=MODEL)
    embedding_members: int = option(1, "embeddings trained alike from different seeds, searched as one (each "
                                       "costs --embedding_epochs more epochs)", low=1, group=MODEL)
    epochs: int = option(10, low=0, group=OPTIMISATION)
    batch_size: int = option(64, low=1, group=OPTIMISATION)
    learning_rate: float = option(4e-4, above=0, group=OPTIMISATION)
    clip_norm: float = option(5.0, "gradient clipping norm (0: off)", low=0, group=OPTIMISATION)
    weight_decay: float = option(0.0, low=0, group=OPTIMISATION)
    label_smoothing: float = option(0.0, low=0, below=1, group=OPTIMISATION)
    max_length: int = option(30, "longest caption in words (training and decoding)", low=1, group=OPTIMISATION)
    amp: bool = option(True, "train in fp32 even where bf16 is fast", flag="--no_amp", group=OPTIMISATION)
    use_scheduler: bool = option(False, group="learning-rate schedule")
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings, metadata={"cli": False})
    early_stopping_patience: int | None = option(None, "stop after this many epochs without a better --best_metric",
                                                 low=1, group=RUN)
    best_metric: str = option("val_loss", "dev measure that picks best.pt and drives early stopping (BLEU-4/CIDEr: "
                                          "of the dev captions, see --dev_decoding)",
                              choices=("val_loss", "BLEU-4", "CIDEr"), group=RUN)
    dev_decoding: str = option("recommended", "how the dev images are captioned for BLEU-4/CIDEr: as the preset "
                                              "recommends (default; greedy without a preset) or greedily",
                               choices=("recommended", "greedy"), group=RUN)
    scst_epochs: int = option(0, "after --epochs of cross-entropy, this many epochs of self-critical training on "
                                 "CIDEr-D", low=0, group=RUN)
    scst_lr: float = option(2e-5, "learning rate of self-critical training", above=0, group=RUN)
    scst_lr_decay: float = option(1.0, "multiply the self-critical learning rate by this after each self-critical "
                                       "epoch", above=0, group=RUN)
    # each sample's baseline is the mean of its siblings'
    scst_encoder_lr: float = option(0.0, "with a tuned encoder (--tune_encoder_epochs): its tuned blocks go on "
                                         "learning in the self-critical epochs at this rate (x --scst_lr_decay per "
                                         "epoch); 0: they stay as tuned", low=0, group=RUN)
    xe_encoder_lr: float = option(0.0, "with a tuned encoder (--tune_encoder_epochs): its tuned blocks learn in the "
                                       "cross-entropy epochs too, from --xe_encoder_from on, at this rate x the "
                                       "schedule's share of --learning_rate; 0: they stay as tuned", low=0, group=RUN)
    xe_encoder_from: int = option(1, "--xe_encoder_lr: the first cross-entropy epoch in which the blocks learn", low=1,
                                  group=RUN)
    learning_blocks: int | None = option(None, "--xe_encoder_lr, --scst_encoder_lr: how many of the tuned blocks (the "
                                               "last ones) learn; the grid after the others is cached once, so a step "
                                               "costs less (default: all of them)", low=1, group=RUN)
    scst_from: str = option("best", "the cross-entropy epoch self-critical training starts from: the best by "
                                    "--best_metric (default), or the last, where the schedule ends",
                            choices=("best", "last"), group=RUN)
    scst_samples: int = option(5, "captions sampled per image in self-critical training", low=2, group=RUN)
    scst_xe_weight: float = option(0.0, "add this x the cross-entropy of the references to the self-critical loss "
                                        "(0: off)", low=0, group=RUN)
    scst_xe_references: int | None = option(None, "with --scst_xe_weight: this many randomly drawn references per "
                                                  "image (default: all; 1 is faster)", low=1, group=RUN)
    scst_bleu_weight: float = option(0.0, "self-critical reward: CIDEr-D + this x the sampled caption's BLEU-4 (0: "
                                          "CIDEr-D alone)", low=0, group=RUN)
    keep_checkpoints: int = option(2, "keep the last N model_epoch_N.pt (best.pt always)", low=1, group=RUN)
    output_dir: str = option("runs", path=True, group=RUN)
    bleu_images: int = option(1000, "dev images decoded greedily each epoch for BLEU", low=0, cli=False)
    show_samples: int = option(0, "at the end, caption N held-out test images", low=0, group=RUN)
    save_attention_viz: bool = option(False, "attention: write attention_viz_sample_K.png for fixed dev images at "
                                             "each new best and at the end", group=RUN)
    attention_viz_samples: int = option(3, "how many dev images to draw (default 3)", low=0, group=RUN)
    advanced_attention_viz: bool = option(False, "also write advanced_attention_viz_sample_K.png (probabilities, "
                                                 "entropy, overall focus)", group=RUN)
    resume: str | None = option(None, "checkpoint to continue from, up to --epochs in all", path=True, group=RUN)
    # --model_path: more epochs were asked for, so early stopping counts afresh
    restart_patience: bool = option(False, cli=False)
    preset: str | None = option(None, "a named recipe (see the README's results table); options given explicitly "
                                      "override it", choices=tuple(sorted(PRESETS)), group=RUN)
    # how the preset's models caption best (decoding.recommended), kept by continued runs: what `captioner
    # caption/evaluate --recommended`, Captioner.recommended_decoding and the web page use
    decoding: dict | None = option(None, cli=False)

    @classmethod
    def from_namespace(cls, args: object) -> TrainConfig:
        names = {spec.name for spec in specs(cls)} - {"schedule"}
        values = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
        values = {name: str(value) if isinstance(value, Path) else value for name, value in values.items()}
        schedule = {f.name: getattr(args, f.name) for f in fields(ScheduleSettings)
                    if getattr(args, f.name, None) is not None}
        return cls(**values, schedule=ScheduleSettings(**schedule))

    def run_name(self) -> str:
        schedule = self.schedule.scheduler_type if self.use_scheduler else "const"
        scst = f"_scst{self.scst_epochs}" if self.scst_epochs else ""
        return (f"{self.dataset_type}_{self.decoder}_ep{self.epochs}_bs{self.batch_size}_lr{self.learning_rate:.0e}"
                f"_{schedule}{scst}").replace("e-0", "e-")


# Model settings that shape the weights; a checkpoint continues only with the same ones (dropout may change).
STRUCTURE = ("decoder", "vocab_size", "feature_dim", "embed_size", "hidden_size", "attention_dim", "num_layers",
             "image_init", "num_concepts", "concept_input", "concept_top_k", "num_heads")


def layers_and_dropout(config: TrainConfig) -> tuple[int, float]:
    """--num_layers and --drop_prob, where not given, by decoder: 3 and 0.1 for the transformer, 1 and 0.5 for the
    recurrent decoders."""
    transformer = config.decoder == "transformer"
    layers = config.num_layers or (3 if transformer else 1)
    return layers, config.drop_prob if config.drop_prob is not None else (0.1 if transformer else 0.5)


def check_options(config: TrainConfig) -> None:
    """Settings that are wrong on their own, whatever the data: refused before any work."""
    try:
        check(config, prefix="--")
        check(config.schedule, prefix="--")
    except ValueError as error:
        raise CaptionerError(str(error)) from None
    if config.epochs + config.scst_epochs + config.embedding_epochs < 1:
        raise CaptionerError("--epochs, --scst_epochs and --embedding_epochs are all 0: nothing to train")
    if config.use_concepts and not config.num_concepts:
        raise CaptionerError("--use_concepts reads the concept head's predictions; --num_concepts 0 leaves no head")
    if config.concept_epochs and not (config.num_concepts and config.concept_weight):
        raise CaptionerError("--concept_epochs trains the concept head, and --num_concepts 0 or --concept_weight 0 "
                             "leaves it none to train or no loss to train it with")
    if config.tune_encoder_epochs:
        if config.fine_tune_encoder or config.augment:
            raise CaptionerError("--tune_encoder_epochs tunes the encoder's last blocks on cached features before the "
                                 "captions; --fine_tune_encoder and --augment train on the images instead: choose one")
        if not config.encoder.startswith("efficientnet_lite"):
            raise CaptionerError(f"--tune_encoder_epochs tunes EfficientNet-Lite's last blocks; --encoder "
                                 f"{config.encoder} cannot be split into them")
        if not config.num_concepts:
            raise CaptionerError("--tune_encoder_epochs tunes the encoder to tell the captions' concepts; "
                                 "--num_concepts 0 leaves none")
    if config.learning_blocks and config.learning_blocks > config.tune_encoder_blocks:
        raise CaptionerError(f"--learning_blocks {config.learning_blocks}: only the {config.tune_encoder_blocks} "
                             "tuned blocks (--tune_encoder_blocks) can learn")
    if config.xe_encoder_lr and config.use_scheduler and config.schedule.scheduler_type == "one_cycle":
        raise CaptionerError("--xe_encoder_lr follows the decoder's schedule epoch by epoch; --scheduler_type "
                             "one_cycle changes the rate at every batch: choose another schedule")
    if config.embedding_epochs and config.embedding_text == "sentence":
        model_folder()  # the sentence encoder is installed: said now, not after the captions' hours
    if config.decoder == "transformer" and config.hidden_size % config.num_heads:
        raise CaptionerError(f"--hidden_size {config.hidden_size} is the transformer's width, which its "
                             f"--num_heads {config.num_heads} heads share: it must be a multiple of them")
    if (config.save_attention_viz or config.advanced_attention_viz) and config.decoder not in ATTENDING:
        given = "--save_attention_viz" if config.save_attention_viz else "--advanced_attention_viz"
        raise CaptionerError(f"{given} needs --decoder attention or transformer; the {config.decoder} decoder has no "
                             "attention to draw")


# options that only some decoders read
ATTENDING = ("attention", "transformer")  # the decoders with attention over the grid to draw
DECODER_ONLY_OPTIONS = {"attention_dim": ("attention",), "deep_output": ("attention",), "embed_dropout": ("attention",),
                        "alpha_c": ("attention",), "attention_viz_samples": ATTENDING,
                        "embed_size": ("lstm", "gru", "attention"), "num_layers": ("lstm", "gru", "transformer"),
                        "image_init": ("lstm", "gru"), "num_heads": ("transformer",)}


def ignored_options(config: TrainConfig) -> list[str]:
    """Options set away from their defaults that the chosen decoder does not read (the flickr8k_best preset sets
    some for the attention decoder), so that a run with --decoder lstm says so instead of silently dropping them."""
    defaults = {spec.name: spec.default for spec in specs(TrainConfig)}
    return [f"--{name}" for name, readers in DECODER_ONLY_OPTIONS.items()
            if config.decoder not in readers and getattr(config, name) != defaults[name]]


def unused_schedule_options(config: TrainConfig) -> list[str]:
    """Schedule settings given without --use_scheduler, which alone switches the schedule on."""
    if config.use_scheduler:
        return []
    defaults = ScheduleSettings()
    return [f"--{option.name}" for option in fields(ScheduleSettings)
            if getattr(config.schedule, option.name) != getattr(defaults, option.name)]


SIDED_WARNING_SHARE = 0.05  # Flickr8k: 0.4% of the captions; the synthetic shapes: about 10%
_SIDES = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def sided_share(records: list) -> float:
    """The share of captions naming a side, which a mirrored image turns into a wrong description."""
    captions = [text for record in records for text in record.captions]
    return sum(bool(_SIDES.search(text)) for text in captions) / max(len(captions), 1)


def plain_settings(config: TrainConfig) -> dict:
    """The settings as builtins only, so checkpoints load with weights_only=True."""
    return _plain(asdict(config))


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (int, float, str, bool)) else str(value)
