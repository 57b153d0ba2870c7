"""`captioner visualize`: draw where an attention model looks for each word of its caption."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.options import add_decoding_args, decode_settings, flag
from captioner.errors import CaptionerError


def add_command(subcommands: argparse._SubParsersAction) -> None:
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
    visualize.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.api import Captioner
    from captioner.decoding.trace import trace_caption
    from captioner.images import BadImageError, open_rgb
    from captioner.io import check_writable
    from captioner.visualize import save_picture

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
