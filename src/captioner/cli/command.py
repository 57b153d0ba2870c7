"""The `captioner` command: one argparse parser with a subcommand per job.

Flags use the underscore spellings common captioning scripts use (`--batch_size`); the dashed spelling
(`--batch-size`) is accepted too. Errors a user can cause print one line, no traceback, and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from captioner.errors import CaptionerError


def flag(parser: argparse._ActionsContainer, name: str, **options) -> None:
    """Add `--some_flag` together with its `--some-flag` spelling."""
    names = [name] + ([name.replace("_", "-")] if "_" in name else [])
    options.setdefault("dest", name.lstrip("-"))
    parser.add_argument(*names, **options)


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    from captioner.data.formats import DATASET_TYPES

    group = parser.add_argument_group("dataset")
    flag(group, "--dataset_type", choices=DATASET_TYPES, default="shapes",
         help="caption format / dataset (default: shapes, the synthetic set drawn on the fly)")
    flag(group, "--data_dir", type=Path, help="dataset folder (for shapes: where to draw it; default a cache folder)")
    flag(group, "--captions_file", type=Path, help="caption file to use instead of the one found in --data_dir")
    flag(group, "--max_images", type=at_least(1),
         help="use about this many images: the same share of every split, at least one image of each")
    flag(group, "--subset_fraction", type=float, help="use only this share (0-1] of every split")
    flag(group, "--seed", type=int, default=42, help="seed for subsets, splits and training (default 42)")
    flag(group, "--freq_threshold", type=int, default=5, help="keep words seen at least this often (default 5)")
    flag(group, "--max_vocab", type=int, help="cap the vocabulary at this many words, specials included")


def load_dataset_from_args(args: argparse.Namespace):
    from captioner.data.formats import load_dataset

    return load_dataset(args.dataset_type, args.data_dir, captions_file=args.captions_file, seed=args.seed,
                        max_images=args.max_images, subset_fraction=args.subset_fraction)


# ---------------------------------------------------------------- data


def run_data_stats(args: argparse.Namespace) -> int:
    from captioner.data.stats import dataset_stats, format_stats

    dataset = load_dataset_from_args(args)
    stats = dataset_stats(dataset, args.freq_threshold, args.max_vocab)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats, dataset.report.summary()))
    return 0


def run_data_download(args: argparse.Namespace) -> int:
    from captioner.data.download import download_dataset
    from captioner.data.formats import default_data_dir, load_dataset

    folder = args.data_dir or default_data_dir(args.name)
    try:  # laid out by hand, or downloaded before: nothing to fetch
        dataset = load_dataset(args.name, folder)
    except CaptionerError:
        dataset = None
    if dataset is not None and dataset.records:
        print(f"{args.name} is already in {folder} ({len(dataset.records)} images); nothing to download")
        return 0
    folder = download_dataset(args.name, folder, base_url=args.base_url)
    print(f"{args.name} is ready in {folder}")
    return 0


def add_data_commands(subcommands: argparse._SubParsersAction) -> None:
    data = subcommands.add_parser("data", help="inspect or download datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="{stats,download}")

    stats = data_commands.add_parser("stats", help="images, captions, splits, skipped items, vocabulary size")
    add_dataset_args(stats)
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    stats.set_defaults(run=run_data_stats)

    from captioner.data.download import DOWNLOADS

    download = data_commands.add_parser("download", help="download a public dataset (needs a network)")
    download.add_argument("name", choices=sorted(DOWNLOADS))
    flag(download, "--data_dir", type=Path,
         help="folder to download and extract into (default $CAPTIONER_DATA/NAME, else data/NAME)")
    flag(download, "--base_url", help=argparse.SUPPRESS)  # tests point this at a loopback server
    download.set_defaults(run=run_data_download)


# ---------------------------------------------------------------- extract


def at_least(lowest: int):
    """An argparse type: a whole number of at least `lowest` (a count of workers, images, pixels)."""
    def whole_number(text: str) -> int:
        value = int(text)  # argparse reports a ValueError as "invalid whole_number value"
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, not {value}")
        return value
    return whole_number


def add_encoder_args(parser: argparse.ArgumentParser) -> None:
    from captioner.features.encoders import ENCODERS

    group = parser.add_argument_group("encoder and feature cache")
    flag(group, "--encoder", choices=list(ENCODERS), default="efficientnet_lite0", help="CNN encoder")
    flag(group, "--encoder_weights", type=Path, help="local .pth weights for torchvision encoders")
    flag(group, "--image_size", type=at_least(1),
         help="input side in pixels (default: the encoder's own, 224 for lite0)")
    flag(group, "--cache_dir", type=Path, help="feature cache folder (default: one per dataset and settings "
                                               "under ~/.cache/captioner/features or $CAPTIONER_CACHE)")
    flag(group, "--augment_flip", action="store_true", help="also cache features of horizontally flipped images")
    flag(group, "--num_workers", type=at_least(0),
         help="image-decoding worker processes (default: 0 on a CPU with 2 cores, where inline decoding is faster; "
              "more with CUDA)")
    flag(group, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")


def run_extract(args: argparse.Namespace) -> int:
    import time

    from captioner.features.cache import extract_features

    dataset = load_dataset_from_args(args)
    images = [record.image for record in dataset.records]
    started = time.perf_counter()
    store = extract_features(images, args.encoder, image_size=args.image_size, cache_dir=args.cache_dir,
                             flip=args.augment_flip, weights=args.encoder_weights, batch_size=args.batch_size,
                             num_workers=args.num_workers, device=args.device)
    seconds = time.perf_counter() - started
    h, w, c = store.grid_shape
    skipped = [name for name in map(str, images) if name in store.skipped]
    print(f"features of {len(images) - len(skipped)} images ({h}x{w}x{c} grid + {c} pooled, float16) "
          f"in {store.folder} [{seconds:.1f} s]")
    if skipped:
        print(f"skipped {len(skipped)} unreadable images:")
        for name in skipped:
            print(f"  {store.skipped[name]}")
    return 0


def add_extract_command(subcommands: argparse._SubParsersAction) -> None:
    extract = subcommands.add_parser("extract", help="run the encoder once per image and cache its features")
    add_dataset_args(extract)
    add_encoder_args(extract)
    flag(extract, "--batch_size", type=at_least(1),
         help="images per encoder batch (default 16 on CPU, 128 on CUDA)")
    extract.set_defaults(run=run_extract)


# ---------------------------------------------------------------- train


def add_train_command(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from captioner.models.decoders import DECODER_TYPES
    from captioner.training.schedulers import SCHEDULER_TYPES

    train = subcommands.add_parser("train", help="train a captioning model (on cached encoder features by default)")
    add_dataset_args(train)
    add_encoder_args(train)
    images = train.add_argument_group("training on images instead of the feature cache")
    flag(images, "--fine_tune_encoder", action="store_true", help="train the encoder too (batch norm stays frozen)")
    flag(images, "--augment", action="store_true", help="random crop, flip and colour jitter of each image")
    flag(images, "--encoder_lr", type=float, default=1e-4, help="learning rate of a fine-tuned encoder")
    model = train.add_argument_group("model")
    flag(model, "--decoder", choices=DECODER_TYPES, default="attention", help="default: attention")
    flag(model, "--embed_size", type=int, default=512)
    flag(model, "--hidden_size", type=int, default=512)
    flag(model, "--attention_dim", type=int, default=512)
    flag(model, "--num_layers", type=int, default=1, help="RNN layers of lstm/gru decoders")
    flag(model, "--drop_prob", type=float, default=0.5, help="dropout (default 0.5)")
    flag(model, "--image_init", choices=("input", "state"), default="input",
         help="lstm/gru: the image is the first input (default) or the initial state")
    flag(model, "--deep_output", action="store_true",
         help="attention: read each word from h, the attended context and the previous word (Xu et al.)")
    flag(model, "--embed_dropout", type=float, default=0.0, help="attention: dropout on the word embeddings")
    flag(model, "--alpha_c", type=float, default=1.0, help="attention: doubly stochastic regularisation weight")
    optim = train.add_argument_group("optimisation")
    flag(optim, "--epochs", type=int, default=10)
    flag(optim, "--batch_size", type=at_least(1), default=64)
    flag(optim, "--learning_rate", type=float, default=4e-4)
    flag(optim, "--clip_norm", type=float, default=5.0, help="gradient clipping norm (0: off)")
    flag(optim, "--weight_decay", type=float, default=0.0)
    flag(optim, "--label_smoothing", type=float, default=0.0)
    flag(optim, "--max_length", type=int, default=30, help="longest caption in words (training and decoding)")
    flag(optim, "--no_amp", dest="amp", action="store_false", help="train in fp32 even where bf16 is fast")
    schedule = train.add_argument_group("learning-rate schedule")
    flag(schedule, "--use_scheduler", action="store_true")
    flag(schedule, "--scheduler_type", choices=SCHEDULER_TYPES, default="reduce_lr_on_plateau")
    flag(schedule, "--scheduler_patience", type=int, default=2)
    flag(schedule, "--scheduler_factor", type=float, default=0.5)
    flag(schedule, "--scheduler_step_size", type=int, default=5)
    flag(schedule, "--scheduler_gamma", type=float, default=0.8)
    flag(schedule, "--scheduler_t_max", type=int, help="cosine period in epochs (default: --epochs)")
    flag(schedule, "--min_lr", type=float, default=0.0)
    flag(schedule, "--warmup_epochs", type=int, default=1, help="one_cycle: epochs of rising learning rate")
    flag(schedule, "--keep_epochs", type=int, default=5, help="keep_then_decay: epochs at the initial rate")
    run = train.add_argument_group("run")
    flag(run, "--early_stopping_patience", type=int, help="stop after this many epochs without a better --best_metric")
    flag(run, "--best_metric", choices=("val_loss", "BLEU-4", "CIDEr"), default="val_loss",
         help="dev measure that picks best.pt and drives early stopping (BLEU-4/CIDEr: greedy captions)")
    flag(run, "--scst_epochs", type=int, default=0,
         help="after --epochs of cross-entropy, this many epochs of self-critical training on CIDEr-D")
    flag(run, "--scst_lr", type=float, default=2e-5, help="learning rate of self-critical training")
    flag(run, "--scst_lr_decay", type=float, default=1.0,
         help="multiply the self-critical learning rate by this after each self-critical epoch")
    flag(run, "--scst_samples", type=int, default=5, help="captions sampled per image in self-critical training")
    flag(run, "--scst_xe_weight", type=float, default=0.0,
         help="add this x the cross-entropy of the references to the self-critical loss (0: off)")
    flag(run, "--scst_xe_references", type=int,
         help="with --scst_xe_weight: this many randomly drawn references per image (default: all; 1 is faster)")
    flag(run, "--scst_bleu_weight", type=float, default=0.0,
         help="self-critical reward: CIDEr-D + this x the sampled caption's BLEU-4 (0: CIDEr-D alone)")
    flag(run, "--keep_checkpoints", type=int, default=2, help="keep the last N model_epoch_N.pt (best.pt always)")
    flag(run, "--output_dir", type=Path, default=Path("runs"))
    flag(run, "--show_samples", type=int, default=0, help="at the end, caption N held-out test images")
    flag(run, "--save_attention_viz", action="store_true",
         help="attention: write attention_viz_sample_K.png for fixed dev images at each new best and at the end")
    flag(run, "--attention_viz_samples", type=int, default=3, help="how many dev images to draw (default 3)")
    flag(run, "--advanced_attention_viz", action="store_true",
         help="also write advanced_attention_viz_sample_K.png (probabilities, entropy, overall focus)")
    flag(run, "--resume", type=Path, help="checkpoint to continue from, up to --epochs in all")
    flag(run, "--model_path", type=Path,
         help="checkpoint to continue from for --epochs more epochs of its kind (cross-entropy or self-critical; "
              "early stopping counts afresh)")
    flag(run, "--mode", choices=("train", "test"), default="train",
         help="test: evaluate --model_path instead (same as `captioner evaluate`)")
    from captioner.training.presets import PRESETS

    flag(run, "--preset", choices=sorted(PRESETS),
         help="a named recipe (see the README's results table); options given explicitly override it")
    train.set_defaults(run=run_train)
    return train


def run_train(args: argparse.Namespace) -> int:
    from captioner.models.checkpoint import load_checkpoint
    from captioner.training.trainer import Trainer, TrainConfig, continuation_epochs

    if args.model_path is not None and args.resume is None:  # N more epochs of the checkpoint's kind
        checkpoint = load_checkpoint(args.model_path)
        args.resume, args.restart_patience = args.model_path, True
        args.epochs, args.scst_epochs = continuation_epochs(checkpoint, args.epochs, args.scst_epochs)
    config = TrainConfig.from_namespace(args)
    folder = Trainer(config, sys.argv).run()
    if folder is not None:  # None on the non-main processes of a torchrun launch
        print(f"run directory: {folder}")
    return 0


# ---------------------------------------------------------------- evaluate


def add_decoding_args(parser: argparse.ArgumentParser, recommended: bool = True) -> None:
    from captioner.decoding.strategies import STRATEGIES

    group = parser.add_argument_group("decoding")
    if recommended:
        flag(group, "--recommended", action="store_true",
             help="decode as the model's training preset recommends (stored in the checkpoint; for flickr8k_best: "
                  "beam 3, length penalty 1, --flip_average, --no_repeat_ngram 2); flags given explicitly win")
    flag(group, "--strategy", choices=STRATEGIES, default="beam", help="default: beam")
    flag(group, "--beam_size", type=int, default=3, help="default 3 (larger is often worse)")
    flag(group, "--length_penalty", type=float, default=0.0,
         help="beam: rank by log-probability / length**P (default 0: the plain sum)")
    flag(group, "--no_repeat_ngram", type=int, default=0, help="beam: never repeat an n-gram of this size")
    flag(group, "--max_length", type=int, default=30, help="longest caption in words")
    flag(group, "--temperature", type=float, default=1.0, help="sample: softmax temperature")
    flag(group, "--top_k", type=int, default=0, help="sample: only the K most likely words (0: all)")
    flag(group, "--top_p", type=float, default=1.0, help="sample: nucleus probability mass")
    flag(group, "--num_captions", type=int, default=1, help="captions per image (best beams, or distinct samples)")
    flag(group, "--sample_seed", type=int,
         help="sample: seed for repeatable captions (the same images in the same order and batches)")
    flag(group, "--flip_average", action=argparse.BooleanOptionalAction, default=False,
         help="average each word's probability over the image and its mirror image (twice the decoding work; "
              "evaluate reads the mirrored features from the cache; not for visualize)")


def decode_settings(args: argparse.Namespace):
    from captioner.decoding.strategies import DecodeSettings

    try:
        return DecodeSettings(args.strategy, args.beam_size, args.max_length, args.length_penalty,
                              args.no_repeat_ngram, args.temperature, args.top_k, args.top_p,
                              getattr(args, "num_captions", 1), args.sample_seed,
                              flip_average=getattr(args, "flip_average", False))
    except ValueError as error:
        raise CaptionerError(str(error)) from error


def add_evaluate_command(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    evaluate = subcommands.add_parser("evaluate", help="caption a split and score it (BLEU, METEOR, ROUGE-L, CIDEr)")
    configure_evaluate_parser(evaluate)
    return evaluate


def configure_evaluate_parser(evaluate: argparse.ArgumentParser) -> None:
    from captioner.data.formats import DATASET_TYPES

    flag(evaluate, "--model_path", type=Path, required=True, help="checkpoint, e.g. runs/RUN/best.pt")
    flag(evaluate, "--split", choices=("test", "dev", "train"), default="test", help="default: test")
    data = evaluate.add_argument_group("data (default: what the model was trained on)")
    flag(data, "--dataset_type", choices=DATASET_TYPES)
    flag(data, "--data_dir", type=Path)
    flag(data, "--captions_file", type=Path)
    flag(data, "--max_images", type=int, help="evaluate the first N images of the split only")
    flag(data, "--cache_dir", type=Path, help="feature cache folder (default: the one training used)")
    flag(data, "--encoder_weights", type=Path, help="local weights file of a torchvision encoder")
    flag(data, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    flag(data, "--batch_size", type=at_least(1), default=100, help="images decoded at once")
    add_decoding_args(evaluate)
    flag(evaluate, "--output_dir", type=Path, help="evaluation folder (default: a new one beside the checkpoint)")
    evaluate.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from captioner.evaluation.evaluate import evaluate
    from captioner.models.loading import load_trained

    if args.num_captions != 1:
        raise CaptionerError("evaluate scores one caption per image; leave out --num_captions")
    settings = decode_settings(args)
    model = load_trained(args.model_path, args.device)
    result = evaluate(model, args.split, settings, dataset_type=args.dataset_type,
                      data_dir=str(args.data_dir) if args.data_dir else None,
                      captions_file=str(args.captions_file) if args.captions_file else None,
                      max_images=args.max_images, output_dir=args.output_dir, cache_dir=args.cache_dir,
                      encoder_weights=args.encoder_weights, batch_size=args.batch_size)
    beam = settings.strategy == "beam"
    print(f"{len(result.captions)} {args.split} images, {settings.strategy}"
          + (f" {settings.beam_size}" if beam else "")
          + (f", length penalty {settings.length_penalty:g}" if beam and settings.length_penalty else "")
          + (f", no {settings.no_repeat_ngram}-gram twice" if beam and settings.no_repeat_ngram else "")
          + (", averaged with the mirror images" if settings.flip_average else "") + f", {result.seconds:.0f} s")
    print(result.scores.table())
    print(f"evaluation folder: {result.folder}")
    return 0


# ---------------------------------------------------------------- caption


def add_caption_command(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    caption = subcommands.add_parser("caption", help="caption images, folders or globs with a trained model")
    caption.add_argument("images", nargs="*", help="image files, folders (all images inside) or quoted globs")
    flag(caption, "--model_path", type=Path, required=True, help="checkpoint, e.g. runs/RUN/best.pt")
    flag(caption, "--format", choices=("text", "json", "csv"), default="text", help="default: text")
    flag(caption, "--output", type=Path, help="write the captions to this file instead of the screen")
    flag(caption, "--html", type=Path, help="also write a page showing every image with its caption as alt text")
    flag(caption, "--alt_text_into", type=Path,
         help="fill the missing alt attributes of this HTML page's local <img>s (writes PAGE.alt.html, or --output)")
    flag(caption, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    flag(caption, "--encoder_weights", type=Path, help="local weights file of a torchvision encoder")
    flag(caption, "--batch_size", type=at_least(1),
         help="images decoded together (default 64; the encoder runs them 16 at a time on a CPU, 64 on CUDA)")
    add_decoding_args(caption)
    caption.set_defaults(run=run_caption)
    return caption


def expand_image_arguments(arguments: list[str]) -> list[str]:
    """Quoted globs are expanded here (the shell expands unquoted ones); a glob matching nothing stays as
    written, so it is reported as a missing file rather than vanishing."""
    import glob

    expanded = []
    for argument in arguments:
        matches = sorted(glob.glob(argument, recursive=True)) if glob.has_magic(argument) else []
        expanded += matches or [argument]
    return expanded


def run_caption(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioner.api import Captioner, expand_inputs
    from captioner.data.records import IMAGE_EXTENSIONS
    from captioner.io import check_writable

    settings = decode_settings(args)
    for destination in (args.output, args.html):
        if destination is not None:
            check_writable(destination)  # before the captioning, whose results would be lost
    if args.alt_text_into is not None:
        if args.images:
            raise CaptionerError("--alt-text-into captions the images its page shows; leave out the images named "
                                 f"({' '.join(args.images)}), or caption them in a command of their own")
        return _fill_alt_text(args, Captioner.load(args.model_path, args.device, args.encoder_weights), settings)
    if not args.images:
        raise CaptionerError("name the images to caption (files, folders or globs), or pass --alt-text-into PAGE")
    items = list(expand_inputs(expand_image_arguments(args.images)))
    if not items:
        raise CaptionerError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {', '.join(args.images)}")
    captioner = Captioner.load(args.model_path, args.device, args.encoder_weights)
    results = []
    with tqdm(total=len(items), unit="img", desc="captioning", disable=None if len(items) > 1 else True) as bar:
        for batch in captioner.caption_batches([source for _, source in items], settings, args.batch_size):
            results.extend(batch)
            bar.update(len(batch))
    text = format_results(results, args.format)
    if args.output:
        from captioner.io import atomic_write_text

        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    if args.html:
        from captioner.alttext import gallery_page
        from captioner.io import atomic_write_text

        captioned = [(Path(r.image), r.text) for r in results if not r.image.startswith("<")]
        atomic_write_text(args.html, gallery_page(captioned, args.html))
        print(f"page with alt text: {args.html}", file=sys.stderr)
    failed = [r for r in results if r.error]
    if failed:
        print(f"\n{len(failed)} of {len(results)} images could not be captioned:", file=sys.stderr)
        for result in failed:
            print(f"  {result.error}", file=sys.stderr)
    return 1 if failed and len(failed) == len(results) else 0


def format_results(results: list, style: str) -> str:
    if style == "json":
        rows = [{"image": r.image, "captions": [{"text": c.text, "score": c.score} for c in r.captions],
                 **({"error": r.error} if r.error else {})} for r in results]
        return json.dumps(rows, indent=2) + "\n"
    if style == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image", "rank", "caption", "score", "error"])
        for r in results:
            for rank, c in enumerate(r.captions, 1):
                writer.writerow([r.image, rank, c.text, f"{c.score:.4f}", ""])
            if r.error:
                writer.writerow([r.image, "", "", "", r.error])
        return buffer.getvalue()
    lines = []
    for r in results:
        if r.error:
            continue  # listed at the end, on stderr
        lines.append(f"{r.image}\t{r.text}")
        lines += [f"\t{c.text}\t({c.score:.2f})" for c in r.captions[1:]]
    return "\n".join(lines) + ("\n" if lines else "")


def _fill_alt_text(args: argparse.Namespace, captioner, settings) -> int:
    from captioner.alttext import fill_missing_alt
    from captioner.io import atomic_write_text

    page = args.alt_text_into
    if not page.is_file():
        raise CaptionerError(f"--alt-text-into {page}: no such page")

    def caption_images(paths: list[Path]) -> list[str | None]:
        return [result.text for batch in captioner.caption_batches(paths, settings, args.batch_size) for result in batch]

    new_page, notes = fill_missing_alt(page, caption_images)
    target = args.output or page.with_name(f"{page.stem}.alt{page.suffix}")
    if target.resolve() == page.resolve():
        raise CaptionerError("--alt-text-into writes a new page; pass an --output other than the page itself")
    atomic_write_text(target, new_page)
    print(f"page with alt text: {target}")
    for note in notes:
        print(f"  left without alt text: {note}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- visualize


def add_visualize_command(subcommands: argparse._SubParsersAction) -> None:
    visualize = subcommands.add_parser("visualize", help="draw where an attention model looks for each word")
    visualize.add_argument("image", type=Path)
    flag(visualize, "--model_path", type=Path, required=True, help="checkpoint of an attention model")
    flag(visualize, "--output", type=Path, help="PNG to write (default: IMAGE_attention.png in this folder)")
    flag(visualize, "--advanced", action="store_true",
         help="add word probabilities, attention entropy per step and the regions attended most")
    flag(visualize, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    flag(visualize, "--encoder_weights", type=Path, help="local weights file of a torchvision encoder")
    # no --recommended: a recommendation may average in the mirror image, and visualize traces the plain image only
    add_decoding_args(visualize, recommended=False)
    visualize.set_defaults(run=run_visualize)


def run_visualize(args: argparse.Namespace) -> int:
    from captioner.api import Captioner
    from captioner.images import BadImageError, open_rgb
    from captioner.io import check_writable
    from captioner.visualize import save_picture, trace_caption

    settings = decode_settings(args)
    if settings.flip_average:
        raise CaptionerError("visualize traces the caption through the plain image only; leave out --flip_average")
    if settings.num_captions > 1:
        raise CaptionerError("visualize draws the best caption only; leave out --num_captions")
    output = args.output or Path(f"{args.image.stem}_attention.png")
    if output.suffix.lower() != ".png":
        raise CaptionerError(f"--output {output}: the attention picture is a PNG; name a .png file")
    check_writable(output)
    captioner = Captioner.load(args.model_path, args.device, args.encoder_weights)
    if not captioner.uses_attention:
        raise CaptionerError(f"{args.model_path} has a {captioner.model.decoder.config.decoder} decoder, which has "
                             "no attention to show; visualize needs a model trained with --decoder attention")
    try:
        image = open_rgb(args.image)
    except BadImageError as error:
        raise CaptionerError(str(error)) from error
    (result,) = captioner.caption_batch([(str(args.image), image)], settings)
    features = captioner.features([image])[0]
    vocab = captioner.model.vocab
    tokens = [vocab.stoi.get(word, vocab.unk_id) for word in result.tokens]
    trace = trace_caption(captioner.model.decoder, features, vocab, tokens, captioner.grid)
    save_picture(output, image, trace, advanced=args.advanced)
    print(f"{result.text}\nattention picture: {output}")
    return 0


# ---------------------------------------------------------------- export


def add_export_command(subcommands: argparse._SubParsersAction) -> None:
    export = subcommands.add_parser("export", help="write a bundle (safetensors + JSON) that loads without pickles")
    flag(export, "--model_path", type=Path, required=True, help="checkpoint to export")
    flag(export, "--output", type=Path, required=True, help="bundle folder to write")
    flag(export, "--onnx", action="store_true",
         help="also write encoder.onnx, decoder_start.onnx and decoder_step.onnx")
    flag(export, "--encoder_weights", type=Path, help="local weights file of a torchvision encoder")
    export.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from captioner.api import Captioner
    from captioner.models.bundle import export_bundle
    from captioner.io import check_writable

    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
        raise CaptionerError(f"--output {args.output} is {'not empty' if args.output.is_dir() else 'a file'}; "
                             "choose a new folder")
    check_writable(args.output / "config.json")
    captioner = Captioner.load(args.model_path, "cpu", args.encoder_weights)
    export_bundle(captioner.model, captioner.encoder, args.output)
    if args.onnx:
        from captioner.models.onnx import export_onnx

        export_onnx(captioner, args.output)
    print(f"bundle: {args.output} ({', '.join(sorted(p.name for p in args.output.iterdir()))})")
    return 0


# ---------------------------------------------------------------- serve and review


def add_serve_commands(subcommands: argparse._SubParsersAction) -> None:
    serve = subcommands.add_parser("serve", help="web pages to caption images and to review a model's captions")
    flag(serve, "--model_path", type=Path, required=True, help="checkpoint or exported bundle")
    flag(serve, "--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    flag(serve, "--port", type=int, default=8000)
    flag(serve, "--eval_dir", type=Path, help="evaluation folder (or a run holding one) for the review page")
    flag(serve, "--max_upload_mb", type=float, default=10, help="largest accepted upload (default 10 MB)")
    flag(serve, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    flag(serve, "--encoder_weights", type=Path, help="local weights file of a torchvision encoder")
    serve.set_defaults(run=run_serve)
    review = subcommands.add_parser("review", help="human ratings collected on the review page")
    actions = review.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write the ratings with their averages as CSV or JSON")
    flag(export, "--eval_dir", type=Path, required=True, help="the evaluation folder (or the run holding it)")
    flag(export, "--format", choices=("csv", "json"), default="csv")
    flag(export, "--output", type=Path, help="file to write (default: the screen)")
    export.set_defaults(run=run_review_export)


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from captioner.serve.app import create_app
    except ImportError as error:
        raise CaptionerError(f"serve needs the serve extras ({error.name} is missing): "
                             "pip install 'captioner[serve]'") from error
    from captioner.api import Captioner

    app = create_app(Captioner.load(args.model_path, args.device, args.encoder_weights), args.eval_dir,
                     args.max_upload_mb)
    listening = listen(args.host, args.port)  # bound here, so the line below names the real port (--port 0)
    review = " (review: /review)" if args.eval_dir else ""
    print(f"captioner: serving on http://{args.host}:{listening.getsockname()[1]}/{review}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listening])
    return 0


def listen(host: str, port: int):
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise CaptionerError(f"cannot serve on {host}:{port}: {error.strerror or error}") from error


def run_review_export(args: argparse.Namespace) -> int:
    from captioner.evaluation.ratings import export_ratings
    from captioner.evaluation.folder import Evaluation

    evaluation = Evaluation.load(args.eval_dir)
    captions = {item["image_id"]: item["caption"] for item in evaluation.items}
    text = export_ratings(evaluation.folder, args.format, captions)
    if args.output:
        from captioner.io import atomic_write_text

        atomic_write_text(args.output, text)
        print(f"ratings: {args.output}")
    else:
        sys.stdout.write(text)
    return 0


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    from captioner import __version__

    parser = argparse.ArgumentParser(prog="captioner", description="Train, evaluate and use image captioning models.")
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_commands(subcommands)
    add_extract_command(subcommands)
    parser.subcommand_parsers = {"train": add_train_command(subcommands), "evaluate": add_evaluate_command(subcommands),
                                 "caption": add_caption_command(subcommands)}
    add_visualize_command(subcommands)
    add_export_command(subcommands)
    add_serve_commands(subcommands)
    return parser


def parse_with_defaults(command_parser: argparse.ArgumentParser, parse, defaults: dict[str, object]
                        ) -> argparse.Namespace:
    """Parse again with these values as the command's defaults (a preset's options, a model's recommended
    decoding), so that flags given explicitly still win."""
    command_parser.set_defaults(**defaults)
    return parse()


# options a resumed or continued run does not take from its checkpoint: what names the checkpoint and the new
# run's folder, the machine's own (device, workers), and for a continuation the epochs (it counts N more)
NOT_RESUMED = ("resume", "model_path", "mode", "preset", "output_dir", "device", "num_workers", "restart_patience")


def resumed_defaults(args: argparse.Namespace, flags: Iterable[str]) -> dict[str, object]:
    """A resumed (--resume) or continued (--model_path) run's settings, as the train command's defaults: the
    data, model and schedule of the run it goes on from, so that `--resume CKPT` alone trains the same run on;
    flags given explicitly still win."""
    from captioner.models.checkpoint import load_checkpoint

    saved = dict(load_checkpoint(args.resume or args.model_path, mmap=True).get("train_config", {}))
    saved.update(saved.pop("schedule", None) or {})
    skipped = NOT_RESUMED + (("epochs", "scst_epochs") if args.resume is None else ())
    return {name: value for name, value in saved.items() if name in flags and name not in skipped}


def test_mode_arguments(argv: list[str]) -> list[str] | None:
    """`captioner train --mode test ...`, the classic spelling of evaluate: the evaluate arguments, or None."""
    if not argv or argv[0] != "train":
        return None
    rest = list(argv[1:])
    for position, item in enumerate(rest):
        if item in ("--mode", "--mode=test", "--mode=train"):
            value = item.split("=", 1)[1] if "=" in item else (rest[position + 1] if position + 1 < len(rest) else "")
            if value != "test":
                return None
            del rest[position:position + (1 if "=" in item else 2)]
            return rest
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    evaluate_argv = test_mode_arguments(argv)
    if evaluate_argv is not None:
        evaluate_parser = argparse.ArgumentParser(prog="captioner train --mode test")
        configure_evaluate_parser(evaluate_parser)
        args, ignored = evaluate_parser.parse_known_args(evaluate_argv)
        if ignored:
            print(f"captioner: --mode test evaluates; ignoring training options {' '.join(ignored)}", file=sys.stderr)
        command_parser, parse = evaluate_parser, lambda: evaluate_parser.parse_known_args(evaluate_argv)[0]
    else:
        args = parser.parse_args(argv)
        command_parser, parse = parser.subcommand_parsers.get(args.command), lambda: parser.parse_args(argv)
        if getattr(args, "preset", None):
            from captioner.training.presets import DECODING, PRESETS

            args = parse_with_defaults(command_parser, parse, {**PRESETS[args.preset],
                                                                "decoding": DECODING.get(args.preset)})
    try:
        if getattr(args, "command", None) == "train" and (args.resume or args.model_path):
            args = parse_with_defaults(command_parser, parse, resumed_defaults(args, vars(args)))
        if getattr(args, "recommended", False):
            from captioner.models.loading import recommended_decoding

            args = parse_with_defaults(command_parser, parse, recommended_decoding(args.model_path))
        return int(args.run(args) or 0)
    except CaptionerError as error:
        print(f"captioner: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130
