"""Named training recipes: `captioner train --preset NAME` sets these options; flags given explicitly win.

Each preset records the recipe behind a row of the README's results table, so a fresh clone can reproduce it.
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    # Soft attention with a deep output layer and word-embedding dropout on flip-augmented efficientnet_lite2
    # features, no label smoothing (0.1 scored lower on dev at every decoding setting), the first 9 epochs of a
    # 15-epoch cosine schedule (dev CIDEr peaked at epoch 9 in every run of it), best epoch by dev CIDEr, then
    # two epochs of self-critical training, at 5e-5 then 2e-5, on CIDEr-D mixed with 0.05 x the cross-entropy
    # of one random reference per image (chosen on dev over plain self-critical training, over adding BLEU-4 to
    # the reward, over all five references, over three epochs at 2e-5, over one epoch at 5e-5, and over two at
    # 5e-5, where the second games CIDEr-D).
    "flickr8k_best": {
        "dataset_type": "flickr8k",
        "encoder": "efficientnet_lite2",
        "augment_flip": True,
        "decoder": "attention",
        "embed_size": 512,
        "hidden_size": 512,
        "attention_dim": 512,
        "deep_output": True,
        "drop_prob": 0.5,
        "embed_dropout": 0.5,
        "label_smoothing": 0.0,
        "batch_size": 64,
        "learning_rate": 5e-4,
        "epochs": 9,
        "use_scheduler": True,
        "scheduler_type": "cosine",
        "scheduler_t_max": 15,
        "min_lr": 1e-5,
        "best_metric": "CIDEr",
        "early_stopping_patience": 3,
        "scst_epochs": 2,
        "scst_lr": 5e-5,
        "scst_lr_decay": 0.4,
        "scst_xe_weight": 0.05,
        "scst_xe_references": 1,
    },
}


# How each preset's models caption best, stored with every model trained from the preset: `captioner caption` and
# `captioner evaluate` use it with --recommended, `Captioner.recommended_decoding` holds it for caption(), and the
# web page starts from it. flickr8k_best: beam 3, length penalty 1, each word's probability averaged over the image
# and its mirror image, and no word pair twice (chosen on dev; the block also keeps out the repeated phrases of the
# self-critical model, such as "a woman and a woman are walking down the street").
DECODING: dict[str, dict[str, object]] = {
    "flickr8k_best": {"strategy": "beam", "beam_size": 3, "length_penalty": 1.0, "flip_average": True,
                      "no_repeat_ngram": 2},
}

# What a recommendation may set: each is a decoding flag of `caption` and `evaluate` and an argument of caption()
RECOMMENDABLE = ("strategy", "beam_size", "length_penalty", "no_repeat_ngram", "max_length", "temperature", "top_k",
                 "top_p", "flip_average")
