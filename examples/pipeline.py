"""A small machine-learning pipeline with exca: the example that `make demo` runs.

What it shows:
- a data-preparation config (`Dataset`) used as a sub-config of the training config
  (`Trainer`): the scheduler prepares the data before any training starts;
- a map over items (`Featurizer.embed`): one cached feature vector per recording, its
  items coming from the output of the data-preparation node;
- a sweep of three trainings (sent as ONE job array on Slurm), and one evaluation per
  trained model, which takes upstream nodes (the model, the features) as inputs;
- the plan (a dry run) before and after running, and a picture of the graph.

Run it from the repository root:

    make demo                                              # same as the next line
    .venv/bin/python examples/pipeline.py                  # Slurm if it answers, else local processes
    .venv/bin/python examples/pipeline.py --cluster local  # local subprocesses
    .venv/bin/python examples/pipeline.py --cluster none   # everything in this process

Results go to ./demo-cache (relative to the current directory); the mermaid source of
the graph goes to ./demo-cache/pipeline.mmd (paste it into https://mermaid.live).
A second run finds everything cached. Delete ./demo-cache to start over.
"""

from __future__ import annotations

import argparse
import time
import typing as tp
from pathlib import Path

import numpy as np
import pydantic

import exca

SIGNAL_LENGTH = 128


def load_recording(name: str) -> np.ndarray:
    """Stands for reading a file: a noisy sine wave whose frequency depends on its class.
    The content depends on the name only, so the name is a valid item uid."""
    index = int(name.split("-")[1])
    rng = np.random.default_rng(index)
    label = index % 2
    time_axis = np.linspace(0, 1, SIGNAL_LENGTH, endpoint=False)
    frequency = 6 + 5 * label + rng.normal(0, 1.5)
    phase = rng.uniform(0, 2 * np.pi)
    return np.sin(2 * np.pi * frequency * time_axis + phase) + rng.normal(0, 1.5, SIGNAL_LENGTH)


def recording_name(sample: dict[str, tp.Any]) -> str:
    """The item uid of a sample (its cache key in the Featurizer's folder)."""
    return str(sample["name"])


class Dataset(pydantic.BaseModel):
    """Data preparation: which recordings to use and how to split them."""

    n_recordings: int = 120
    test_fraction: float = 0.5
    seed: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> list[dict[str, tp.Any]]:
        rng = np.random.default_rng(self.seed)
        n_test = int(self.n_recordings * self.test_fraction)
        test = set(rng.permutation(self.n_recordings)[:n_test])
        return [
            {"name": f"rec-{i:04d}", "label": i % 2, "split": "test" if i in test else "train"}
            for i in range(self.n_recordings)
        ]


class Featurizer(pydantic.BaseModel):
    """Per-item work (cached per recording): the log-spectrum of each signal, in n_bins bands."""

    n_bins: int = 64
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=recording_name)
    def embed(self, samples: list[dict[str, tp.Any]]) -> tp.Iterator[np.ndarray]:
        for sample in samples:
            spectrum = np.abs(np.fft.rfft(load_recording(sample["name"])))[: SIGNAL_LENGTH // 2]
            yield np.log1p(spectrum.reshape(self.n_bins, -1).mean(axis=1))


class Trainer(pydantic.BaseModel):
    """A ridge classifier trained on the features of the training split."""

    data: Dataset = Dataset()  # a sub-config with a cached method: prepared before fit()
    featurizer: Featurizer = Featurizer()
    l2: float = 1.0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self, features: list[np.ndarray]) -> np.ndarray:
        samples = self.data.prepare()  # a cache hit: the scheduler computed it first
        train = [i for i, s in enumerate(samples) if s["split"] == "train"]
        x = _with_bias(np.stack([features[i] for i in train]))
        y = np.array([2.0 * samples[i]["label"] - 1 for i in train])
        return np.linalg.solve(x.T @ x + self.l2 * np.eye(x.shape[1]), x.T @ y)


class Evaluator(pydantic.BaseModel):
    """Accuracy of a trained model on each split."""

    data: Dataset = Dataset()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def evaluate(self, weights: np.ndarray, features: list[np.ndarray]) -> dict[str, float]:
        samples = self.data.prepare()
        scores = _with_bias(np.stack(features)) @ weights
        correct = (scores > 0) == np.array([s["label"] == 1 for s in samples])
        splits = np.array([s["split"] for s in samples])
        return {split: float(correct[splits == split].mean()) for split in ("train", "test")}


def _with_bias(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def build(folder: Path, cluster: str | None) -> dict[float, exca.graph.Node]:
    """The graph: one evaluation node per regularization strength (nothing runs here)."""
    infra: dict[str, tp.Any] = {"folder": folder, "cluster": cluster}
    if cluster is not None:
        infra.update(cpus_per_task=1, timeout_min=10)
    data = Dataset(infra=infra)
    featurizer = Featurizer(infra={**infra, "max_jobs": 2})
    features = featurizer.embed.node(data.prepare.node())  # items known when data is ready
    evaluations = {}
    for l2 in (0.1, 10.0, 1000.0):
        trainer = Trainer(data=data, featurizer=featurizer, l2=l2, infra=infra)
        model = trainer.fit.node(features)
        evaluations[l2] = Evaluator(data=data, infra=infra).evaluate.node(model, features)
    return evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cluster", default="auto", choices=["auto", "slurm", "local", "none"])
    parser.add_argument("--folder", default="demo-cache", type=Path)
    args = parser.parse_args()
    cluster = None if args.cluster == "none" else args.cluster
    folder = args.folder.resolve()
    folder.mkdir(exist_ok=True)
    evaluations = build(folder, cluster)
    targets = list(evaluations.values())

    plan = exca.graph.plan(*targets)  # a dry run: reads the cache, computes nothing
    print(f"\n--- plan before running (cache: {folder})\n{plan}")
    mermaid = folder / "pipeline.mmd"
    mermaid.write_text(plan.to_mermaid())
    work = sum(n for status, n in plan.counts().items() if status not in ("cached", "not needed"))

    start = time.time()
    exca.graph.run(*targets)  # computes what the plan said, waiting for the jobs
    took = time.time() - start
    print(f"\n--- ran {work} node(s) in {took:.1f}s" if work else "\n--- nothing to compute")
    for l2, node in evaluations.items():
        accuracy = node.result()  # read from the cache
        train, test = accuracy["train"], accuracy["test"]
        print(f"l2={l2:<7g} train accuracy {train:.2f}  test accuracy {test:.2f}")

    print(f"\nMermaid source of the graph (before this run): {mermaid}")
    if work:
        print(f"\n--- plan after running\n{exca.graph.plan(*targets)}")
        print("Run me again: everything is cached, nothing is computed.")


if __name__ == "__main__":
    main()
