"""Everything a Trainer is handed, built from a TrainConfig: data and vocabulary, the feature source, the
decoder, optimizer, schedule and objectives; then, for --resume and --model_path, the trainer is put back
where its checkpoint left it.

    trainer = build_trainer(TrainConfig(dataset_type="flickr8k", ...))
    run_folder = trainer.run()
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import numpy as np
import torch

from captioner.data.concepts import ConceptVocabulary
from captioner.data.formats import load_dataset
from captioner.data.records import Dataset
from captioner.data.vocab import SPECIALS, Vocabulary, clean_caption
from captioner.devices import keep_freed_memory, pick_device
from captioner.errors import CaptionerError
from captioner.features.extract import extract_features
from captioner.features.live import LiveFeatures
from captioner.features.source import FeatureSource
from captioner.models.checkpoint import load_checkpoint
from captioner.models.decoders import Decoder, DecoderConfig, build_decoder
from captioner.training.batches import TrainingData
from captioner.training.config import TrainConfig, check_options, layers_and_dropout
from captioner.training.distributed import start_processes
from captioner.training.encoder_tuning import TunedEncoder
from captioner.training.learning_blocks import learning_blocks
from captioner.training.objectives import ConceptLoss, CrossEntropy, concept_targets
from captioner.training.resume import check_not_finished, last_objective, restore
from captioner.training.rundir import remove_temporaries
from captioner.training.schedulers import Schedule
from captioner.training.self_critical import SelfCritical
from captioner.training.self_critical_phase import ENCODER_GROUP
from captioner.training.trainer import Trainer
from captioner.training.tuned_features import features_of_tuned_checkpoint, tuned_features


def build_trainer(config: TrainConfig, command: list[str] | None = None) -> Trainer:
    check_options(config)  # before minutes of feature extraction, not after
    parent = load_checkpoint(config.resume) if config.resume else None
    processes, device = start_processes(config.device)
    device = device or pick_device(config.device)
    keep_freed_memory()
    if parent is not None:
        if processes.is_main:
            remove_temporaries(Path(config.resume).parent)  # left by a kill in the middle of an atomic write
        check_not_finished(config, parent)  # before the data and features, too
    dataset = load_dataset(config.dataset_type, config.data_dir, captions_file=config.captions_file, seed=config.seed,
                           max_images=config.max_images, subset_fraction=config.subset_fraction,
                           min_region_area=config.min_region_area)
    vocab = vocabulary(config, dataset, parent)
    concepts = concept_vocabulary(config, dataset, parent)
    if config.tune_encoder_epochs and parent is not None and not parent.get("tuned_encoder"):
        raise CaptionerError(f"{config.resume} was trained on the untuned encoder's features; --tune_encoder_epochs "
                             "would change them under its decoder. Start a new run to tune the encoder")
    if parent is not None and parent.get("tuned_encoder"):
        check_tuning_kept(config, parent)
    if config.tune_encoder_epochs and not parent and processes.distributed:
        raise CaptionerError("--tune_encoder_epochs runs in a single process for now; tune and train the first epoch "
                             "without torchrun, then go on from its checkpoint with torchrun and --resume")
    if not processes.is_main:
        processes.barrier()  # the main process builds the feature cache; the others then read it
    features, tuned = feature_source(config, dataset, device, concepts, parent)
    if processes.is_main:
        processes.barrier()
    data = TrainingData.build(dataset, features, vocab, config.max_length)
    model_config = decoder_config(config, vocab, features, concepts)
    # Seeded here, after data and features: extraction (when the cache is missing) draws random numbers, and the
    # same seed must give the same run whether or not the cache existed.
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    decoder = build_decoder(model_config).to(device)
    optimizer = make_optimizer(config, decoder, features, device)
    steps = math.ceil(len(data.train) / config.batch_size)
    schedule = Schedule(optimizer, config.schedule, config.epochs, steps) if config.use_scheduler else None
    objective = CrossEntropy(vocab.pad_id, config.label_smoothing, config.alpha_c)
    if config.scst_epochs and processes.distributed:
        raise CaptionerError("--scst_epochs runs in a single process for now; train the cross-entropy epochs with "
                             "torchrun, then continue with --resume and --scst_epochs without it")
    self_critical = self_critical_objective(config, dataset, features, vocab) if config.scst_epochs else None
    concept_loss = None
    if concepts is not None and config.concept_weight:
        records = [r for r in dataset.records if r.split in ("train", "dev")]
        concept_loss = ConceptLoss(concept_targets(records, features, concepts, clean_caption), config.concept_weight)
    learning = None
    if ((config.scst_encoder_lr and config.scst_epochs) or config.xe_encoder_lr) and tuned is not None:
        images = [record.image for record in dataset.records if record.split in ("train", "dev", "test")]
        with torch.random.fork_rng(devices=[]):  # building the encoder draws random numbers; the run's stay as they were
            learning = learning_blocks(config, images, tuned, device)
    trainer = Trainer(config, decoder, model_config, vocab, data, features, optimizer, schedule, objective,
                      self_critical, processes, device, command or sys.argv, concepts, concept_loss, tuned, learning)
    if parent is not None:
        learned = any(group.get("name") == ENCODER_GROUP for group in parent["optimizer"]["param_groups"])
        if learned and learning is None:
            raise CaptionerError(f"{config.resume}'s encoder blocks were learning (--xe_encoder_lr, "
                                 "--scst_encoder_lr); resume it with the rate of the epochs that follow above 0")
        if learned:
            was = parent.get("train_config", {}).get("learning_blocks") or tuned.blocks
            if was != learning.learning:
                raise CaptionerError(f"{config.resume}'s optimizer holds the state of --learning_blocks {was}; "
                                     f"resume it with that, not {learning.learning}")
            trainer.add_encoder_group()  # before the optimizer state that holds it is loaded
        restore(trainer, parent)
        if last_objective(parent) == "self-critical":
            trainer.add_encoder_group()  # in the middle of the self-critical epochs, from now on
    trainer.wrap_for_processes()
    return trainer


TUNING_OPTIONS = ("tune_encoder_epochs", "tune_encoder_blocks", "tune_encoder_lr")


def check_tuning_kept(config: TrainConfig, parent: dict) -> None:
    """A run going on from a tuned checkpoint keeps its tuned encoder (its decoder learned on those features), so
    a tuning option changed now could not be honoured: say so instead of dropping it."""
    saved = parent.get("train_config", {})
    changed = [f"--{name} {getattr(config, name)} (the checkpoint's: {saved[name]})" for name in TUNING_OPTIONS
               if name in saved and getattr(config, name) != saved[name]]
    if changed:
        raise CaptionerError(f"{config.resume} goes on with the encoder it was tuned with, so {', '.join(changed)} "
                             "would not apply; leave the option out, or start a new run to tune differently")


def vocabulary(config: TrainConfig, dataset: Dataset, parent: dict | None) -> Vocabulary:
    """The checkpoint's vocabulary when going on from one, else built from the training captions."""
    if parent is not None:
        return Vocabulary.from_dict(parent["vocab"], f"checkpoint {config.resume}")
    tokens = (clean_caption(text) for record in dataset.split("train") for text in record.captions)
    vocab = Vocabulary.build(tokens, config.freq_threshold, config.max_vocab)
    if len(vocab) <= len(SPECIALS):
        raise CaptionerError(f"the vocabulary would hold only {', '.join(SPECIALS)}: no word of the training "
                             f"captions occurs --freq_threshold {config.freq_threshold} times; lower it")
    return vocab


def feature_source(config: TrainConfig, dataset: Dataset, device: torch.device, concepts: ConceptVocabulary | None,
                   parent: dict | None) -> tuple[FeatureSource, TunedEncoder | None]:
    """The feature cache (built or extended as needed; that of the tuned encoder with --tune_encoder_epochs or
    from a tuned checkpoint), or the encoder run on the images when fine-tuning or augmenting."""
    images = [record.image for record in dataset.records if record.split in ("train", "dev", "test")]
    if parent is not None and parent.get("tuned_encoder"):
        return features_of_tuned_checkpoint(config, images, parent["tuned_encoder"], device)
    if config.tune_encoder_epochs:
        return tuned_features(config, dataset, images, concepts, device)
    return plain_feature_source(config, images, device), None


def plain_feature_source(config: TrainConfig, images: list[Path], device: torch.device) -> FeatureSource:
    weights = Path(config.encoder_weights) if config.encoder_weights else None
    if config.fine_tune_encoder or config.augment:
        if config.augment_flip:
            raise CaptionerError("--augment_flip caches flipped features; with --augment/--fine_tune_encoder "
                                 "images are flipped on the fly, so leave --augment_flip out")
        return LiveFeatures(images, config.encoder, weights, config.image_size, augment=config.augment,
                            fine_tune=config.fine_tune_encoder, device=device, amp=config.amp)
    return extract_features(images, config.encoder, image_size=config.image_size,
                            cache_dir=Path(config.cache_dir) if config.cache_dir else None, flip=config.augment_flip,
                            weights=weights, num_workers=config.num_workers, device=config.device)


def concept_vocabulary(config: TrainConfig, dataset: Dataset, parent: dict | None) -> ConceptVocabulary | None:
    """The checkpoint's concepts when going on from one (none for a model made before concepts), else built
    from the training captions; None with --num_concepts 0."""
    if parent is not None:
        saved = parent.get("concepts")
        config.num_concepts = len(saved["concepts"]) if saved else 0
        return ConceptVocabulary.from_dict(saved, f"checkpoint {config.resume}") if saved else None
    if not config.num_concepts:
        return None
    tokens = (clean_caption(text) for record in dataset.split("train") for text in record.captions)
    return ConceptVocabulary.build(tokens, config.num_concepts)


def decoder_config(config: TrainConfig, vocab: Vocabulary, features: FeatureSource,
                   concepts: ConceptVocabulary | None = None) -> DecoderConfig:
    _, _, channels = features.grid_shape
    layers, dropout = layers_and_dropout(config)
    return DecoderConfig(config.decoder, len(vocab), channels, config.embed_size, config.hidden_size,
                         config.attention_dim, layers, dropout, config.image_init,
                         config.deep_output, config.embed_dropout, len(concepts) if concepts else 0,
                         config.concept_input if config.use_concepts else "", config.concept_top_k, config.num_heads)


def make_optimizer(config: TrainConfig, decoder: Decoder, features: FeatureSource,
                   device: torch.device) -> torch.optim.Optimizer:
    """Adam over the decoder (and a fine-tuned encoder, at its own rate); fused: one kernel for all parameters
    instead of a dozen passes over each."""
    groups = [{"params": list(decoder.parameters())}]
    if isinstance(features, LiveFeatures) and features.fine_tune:
        groups.append({"params": features.parameters(), "lr": config.encoder_lr})
    return torch.optim.Adam(groups, lr=config.learning_rate, weight_decay=config.weight_decay,
                            fused=device.type in ("cpu", "cuda"))


def self_critical_objective(config: TrainConfig, dataset: Dataset, features: FeatureSource,
                            vocab: Vocabulary) -> SelfCritical:
    references = {}
    for record in dataset.split("train"):
        row = features.row(record.image)
        if row is not None:
            references[row] = [clean_caption(text)[: config.max_length] for text in record.captions]
    return SelfCritical(references, vocab, config.scst_samples, config.scst_bleu_weight)

