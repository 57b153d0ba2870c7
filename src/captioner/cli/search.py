"""`captioner search`: the photos of a library that best match a description."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captioner.cli.options import at_least, flag


def add_command(subcommands: argparse._SubParsersAction) -> None:
    search = subcommands.add_parser("search", help="find the photos of a library by describing them")
    search.add_argument("query", help='what the photo shows, e.g. "a dog running on the beach"')
    flag(search, "--library", type=Path, required=True, help="the library folder `captioner index` made")
    flag(search, "--top_k", type=at_least(1), default=20, help="photos shown, best first (default 20)")
    flag(search, "--candidates", type=at_least(1),
         help="photos the first stage passes to the model's reranking (default 50, chosen on dev)")
    flag(search, "--no_rerank", action="store_true", help="the first stage's order only (no model is loaded)")
    flag(search, "--folder", help="only photos under this folder (relative to the library's photo folder)")
    flag(search, "--tag", help="only photos with this tag")
    flag(search, "--after", help="only photos taken (EXIF date, else file time) on or after YYYY-MM-DD")
    flag(search, "--before", help="only photos taken on or before YYYY-MM-DD")
    flag(search, "--format", choices=("tsv", "json"), default="tsv",
         help="tsv: score<TAB>path<TAB>caption (default); json")
    flag(search, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    search.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.library import Filters, Library
    from captioner.library.search import CANDIDATES

    filters = Filters(args.folder, args.tag, args.after, args.before)
    with Library(args.library, device=args.device) as library:
        results = library.search(args.query, args.top_k, args.candidates or CANDIDATES, filters,
                                 rerank=not args.no_rerank)
        root = library.root
    if results.unknown_words:
        print(f"the model does not know: {', '.join(results.unknown_words)} (the first stage still matched "
              "them in captions and tags)", file=sys.stderr)
    if args.format == "json":
        rows = [{"path": str(root / hit.path), "caption": hit.caption, "score": round(hit.score, 4),
                 "reranked": hit.reranked} for hit in results.hits]
        print(json.dumps({"query": results.query, "unknown_words": results.unknown_words, "results": rows},
                         indent=2))
    else:
        for hit in results.hits:
            print(f"{hit.score:.3f}\t{root / hit.path}\t{hit.caption}")
    if not results.hits:
        print("no photo matches", file=sys.stderr)
    return 0

