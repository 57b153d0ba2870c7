"""Named training recipes: `captioner train --preset NAME` sets these options; flags given explicitly win.

Each preset records the recipe behind a row of the README's results table, so a fresh clone can reproduce it.
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    # Soft attention with a deep output layer and word-embedding dropout on flip-augmented efficientnet_lite2
    # features, label smoothing and a cosine schedule, best epoch by dev CIDEr, then three epochs of
    # self-critical training on CIDEr-D from the best epoch. 44.0 minutes on a 2-core CPU, extraction
    # included (README results table); evaluate with
    # `captioner evaluate --model_path RUN/best.pt --beam_size 3 --length_penalty 1` (chosen on dev).
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
        "label_smoothing": 0.1,
        "batch_size": 64,
        "learning_rate": 5e-4,
        "epochs": 15,
        "use_scheduler": True,
        "scheduler_type": "cosine",
        "min_lr": 1e-5,
        "best_metric": "CIDEr",
        "early_stopping_patience": 3,
        "scst_epochs": 3,
        "scst_lr": 2e-5,
    },
}


def describe(name: str) -> str:
    return " ".join(f"--{key}" if value is True else f"--{key} {value}" for key, value in PRESETS[name].items())
