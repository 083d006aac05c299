"""Benchmark: the curation LLM client and image de-duplication.

Measured side by side in one run:

- ``requests_per_s``: :class:`mcmdpo.llm.LLMClient` (official ``openai`` package, async, cache on)
  sending ``--requests`` distinct chat completions at concurrency 64 to a local OpenAI-compatible
  server (asyncio, keep-alive, ``--latency-ms`` per reply, in its own process on the same 2 cores).
  The ceiling at that latency is 64 / latency (1,280/s at 50 ms).
- ``cache_hits_per_s``: the same requests again through a fresh client (index loaded from disk first,
  timed separately), repeated until ``--hits`` hits: the full ``acomplete`` path (key hash + lookup).
- pHash de-duplication of ``--images`` decoded images (10% near copies: brightness-shifted): hashing
  (grey 32x32 thumbnail + DCT) and clustering timed separately, decode excluded; the bucketed
  clustering next to an all-pairs comparison of the same hashes (same clusters required), and the
  bucketed clustering of 200,000 random hashes (scaling).

Targets: >= 200 requests/s, >= 20,000 cache hits/s, de-dup of 10,000 images <= 5 s.
Run: ``python bench/curate.py`` (about a minute on 2 cores). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcmdpo.curate import dedupe, signatures  # noqa: E402
from mcmdpo.llm import LLMClient, LLMSpec  # noqa: E402

TARGETS = {"requests_per_s": 200, "cache_hits_per_s": 20_000, "dedupe_10k_s": 5.0}
LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


# ---------------------------------------------------------------- server


def serve(port_queue: multiprocessing.Queue, latency_s: float) -> None:
    """A minimal OpenAI-compatible chat-completions server: HTTP/1.1 keep-alive, fixed latency."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = json.loads(await reader.readexactly(int(LENGTH.search(head).group(1))))
                await asyncio.sleep(latency_s)
                text = body["messages"][0]["content"][::-1][:40]
                reply = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "bench-served",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
                }
                data = json.dumps(reply).encode()
                head_out = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
                writer.write(head_out.encode() + b"\r\n\r\n" + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
        port_queue.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def messages(i: int) -> list[dict[str, str]]:
    prompt = f"Your task is to check the given text for grammatical errors. Record {i}: a photo of a dog."
    return [{"role": "user", "content": prompt}]


def bench_client(url: str, n: int, hits: int, cache: Path) -> dict[str, float]:
    spec = LLMSpec(base_url=url, model="bench", api_key_env="", concurrency=64, timeout_s=30)
    client = LLMClient(spec, cache_dir=cache)
    conversations = [messages(i) for i in range(n)]
    client.complete_many(conversations[:64])  # warm-up: connections, imports
    started = time.perf_counter()
    replies = client.complete_many(conversations[64:])
    fresh_s = time.perf_counter() - started
    assert not any(r.cached for r in replies) and client.stats["retries"] == 0
    started = time.perf_counter()
    again = LLMClient(spec, cache_dir=cache)
    load_s = time.perf_counter() - started
    rounds = max(1, hits // n)

    async def replay() -> int:
        count = 0
        for _ in range(rounds):
            for conversation in conversations:  # sequential: the hit path itself, no gather overhead
                count += (await again.acomplete(conversation)).cached
        return count

    started = time.perf_counter()
    count = again.run(replay())
    hit_s = time.perf_counter() - started
    assert count == rounds * n and again.stats["requests"] == 0
    return {
        "requests": n - 64,
        "requests_per_s": round((n - 64) / fresh_s, 1),
        "cache_entries": n,
        "cache_load_s": round(load_s, 4),
        "cache_hits": count,
        "cache_hits_per_s": round(count / hit_s, 1),
    }


# ---------------------------------------------------------------- de-duplication


def make_images(n: int, seed: int = 0) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        if i % 10 == 9:  # a near copy of an earlier image, brightness shifted
            base = np.asarray(images[rng.integers(0, i)], dtype=np.int16)
            images.append(Image.fromarray(np.clip(base + rng.integers(-12, 12), 0, 255).astype(np.uint8)))
            continue
        blocks = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        images.append(Image.fromarray(blocks).resize((128, 128), Image.Resampling.BILINEAR))
    return images


def bench_dedupe(n: int, threshold: int) -> dict[str, float]:
    images = make_images(n)
    started = time.perf_counter()
    hashes = signatures.phash_from_pixels(np.stack([signatures.phash_pixels(im) for im in images]))
    hash_s = time.perf_counter() - started
    started = time.perf_counter()
    fast = dedupe.cluster_hashes(hashes, threshold)
    cluster_s = time.perf_counter() - started
    started = time.perf_counter()
    slow = dedupe.cluster_all_pairs(hashes, threshold)
    all_pairs_s = time.perf_counter() - started
    big = np.random.default_rng(1).integers(0, 2**63, 200_000, dtype=np.uint64) * np.uint64(2)
    started = time.perf_counter()
    dedupe.cluster_hashes(big, threshold)
    big_s = time.perf_counter() - started
    return {
        "images": n,
        "duplicates_found": int(len(fast.duplicates)),
        "hash_s": round(hash_s, 3),
        "cluster_s": round(cluster_s, 4),
        "dedupe_10k_s": round(hash_s + cluster_s, 3),
        "all_pairs_cluster_s": round(all_pairs_s, 3),
        "cluster_speedup_vs_all_pairs": round(all_pairs_s / max(cluster_s, 1e-9), 1),
        "same_clusters_as_all_pairs": bool(np.array_equal(fast.label, slow.label)),
        "cluster_200k_random_s": round(big_s, 3),
    }


def main() -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--hits", type=int, default=40_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--threshold", type=int, default=4)
    args = parser.parse_args()
    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(ports, args.latency_ms / 1000), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}/v1"
        with tempfile.TemporaryDirectory() as tmp:
            client = bench_client(url, args.requests, args.hits, Path(tmp))
    finally:
        server.terminate()
        server.join()
    dedup = bench_dedupe(args.images, args.threshold)
    result: dict[str, object] = {
        "bench": "curate",
        "latency_ms": args.latency_ms,
        "concurrency": 64,
        **client,
        **dedup,
    }
    result["meets_targets"] = all(
        result[k] >= v if k != "dedupe_10k_s" else result[k] <= v for k, v in TARGETS.items()
    )
    print(
        f"LLM client: {client['requests_per_s']} requests/s at concurrency 64, {args.latency_ms} ms latency"
    )
    print(
        f"cache: {client['cache_hits_per_s']} hits/s "
        f"({client['cache_entries']} entries loaded in {client['cache_load_s']} s)"
    )
    print(
        f"pHash de-dup of {args.images} images: hash {dedup['hash_s']} s + cluster {dedup['cluster_s']} s "
        f"(all-pairs {dedup['all_pairs_cluster_s']} s, same clusters: {dedup['same_clusters_as_all_pairs']})"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
