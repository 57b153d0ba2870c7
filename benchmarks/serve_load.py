"""Load on `captioner serve`: a bounded number of caption requests, a few at a time, against 127.0.0.1.

    python benchmarks/serve_load.py --model_path runs/RUN/best.pt [--requests 500] [--concurrency 8]
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 [...]      # a server already running

Uploads Flickr8k test images (or generated ones with --synthetic) and prints requests/s, p50/p99 latency and
the error count, which must be 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from captioner.serve.background import ServerDidNotStart, running_server


def payloads(data_dir: Path, count: int, synthetic: bool) -> list[tuple[str, bytes]]:
    if synthetic or not (data_dir / "Images").is_dir():
        images = []
        for index in range(count):
            buffer = io.BytesIO()
            Image.new("RGB", (500, 375), (index * 37 % 256, index * 91 % 256, 128)).save(buffer, "JPEG")
            images.append((f"synthetic_{index}.jpg", buffer.getvalue()))
        return images
    files = sorted((data_dir / "Images").glob("*.jpg"))[:count]
    return [(path.name, path.read_bytes()) for path in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model_path", type=Path, help="start a server with this model")
    target.add_argument("--url", help="a server already running")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--beam_size", type=int, default=3)
    parser.add_argument("--data_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/flickr8k")
    parser.add_argument("--synthetic", action="store_true", help="upload generated JPEGs instead of Flickr8k")
    args = parser.parse_args()
    images = payloads(args.data_dir, min(args.requests, 200), args.synthetic)
    latencies, errors = [], []
    with contextlib.ExitStack() as stack:
        if args.model_path:
            try:
                url = stack.enter_context(running_server(args.model_path)).url
            except ServerDidNotStart as error:
                sys.exit(str(error))
        else:
            url = args.url.rstrip("/")
        with httpx.Client(timeout=120) as client:
            def one(number: int) -> None:
                name, data = images[number % len(images)]
                started = time.perf_counter()
                try:
                    response = client.post(f"{url}/api/caption", files={"file": (name, data, "image/jpeg")},
                                           data={"beam_size": str(args.beam_size)})
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:120]}")
                except httpx.HTTPError as error:
                    errors.append(repr(error))
                latencies.append(time.perf_counter() - started)

            one(0)  # warm-up, not counted
            latencies.clear()
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(one, range(args.requests)))
            elapsed = time.perf_counter() - started
            health = client.get(f"{url}/api/health").json()
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    print(f"machine: {platform.processor() or platform.machine()}; {args.requests} requests, {args.concurrency} at a "
          f"time, beam {args.beam_size}, {'synthetic' if args.synthetic else 'Flickr8k'} JPEGs")
    print(f"{'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'images/batch':>13}")
    print(f"{args.requests / elapsed:>11.1f} {1000 * statistics.median(ordered):>8.0f} {1000 * p99:>8.0f} "
          f"{len(errors):>7} {health['images'] / max(health['batches'], 1):>13.1f}")
    for message in errors[:5]:
        print("  error:", message)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
