"""MapInfra: a per-item cache for a method that processes a list of items.

What it shows:
- `item_uid` names each item's cache entry; a call computes only the missing items;
- outputs come back lazily, in the order of the input list;
- a failing item is cached with its error, the other items still finish, and
  mode="retry" recomputes only the failed items;
- missing items packed into a few jobs (`max_jobs`, `min_samples_per_job`), or spread
  over a pool of processes.

Run it from the repository root:

    .venv/bin/python examples/map.py                        # a process pool on this machine
    .venv/bin/python examples/map.py --cluster none         # in this process
    .venv/bin/python examples/map.py --cluster local        # a few subprocess jobs
    .venv/bin/python examples/map.py --cluster auto         # Slurm jobs when a controller answers

Results go to ./demo-cache/map (delete it to start over).
"""

from __future__ import annotations

import argparse
import os
import typing as tp
from pathlib import Path

import numpy as np
import pydantic

import exca

BROKEN = {"sentence 13"}  # items that fail until we "fix" them below


class Embedder(pydantic.BaseModel):
    dim: int = 8
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)  # the item itself (a string) is its uid
    def embed(self, sentences: list[str]) -> tp.Iterator[np.ndarray]:
        print(f"pid {os.getpid()}: embedding {len(sentences)} sentence(s)")
        for sentence in sentences:
            if sentence in BROKEN:
                raise ValueError(f"cannot embed {sentence!r}")
            seed = sum(map(ord, sentence))
            yield np.random.default_rng(seed).normal(size=self.dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cluster",
        default="processpool",
        choices=["none", "processpool", "threadpool", "local", "auto"],
    )
    args = parser.parse_args()
    folder = Path("demo-cache/map").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    cluster = None if args.cluster == "none" else args.cluster
    # jobs (local, auto): at most 4, of at least 5 items each; a pool (processpool, the
    # default here) has at most 4 workers (one fewer than the CPUs), each given about 3
    # chunks of the items: min_samples_per_job is for jobs only
    infra = {"folder": folder, "cluster": cluster, "max_jobs": 4, "min_samples_per_job": 5}

    embedder = Embedder(infra=infra)
    sentences = [f"sentence {i}" for i in range(10)]
    vectors = embedder.embed(sentences)  # computes the missing items, returns a lazy iterator
    print("first 10:", len(list(vectors)), "vectors")

    more = [f"sentence {i}" for i in range(20)]
    node = embedder.embed.node(more)
    print(exca.graph.plan(node))  # 10/20 missing: only those are computed
    try:
        for _ in embedder.embed(more):
            pass
    except ValueError as error:  # raised when reading the failed item
        print("failed item:", error)

    BROKEN.clear()  # "fix the bug", then recompute the failed items only
    retry = Embedder(infra={**infra, "mode": "retry"})
    print(exca.graph.plan(retry.embed.node(more)))
    print("all 20:", len(list(retry.embed(more))), "vectors")
    print("keys in the cache:", len(embedder.infra.cache_dict.keys()))


if __name__ == "__main__":
    main()
