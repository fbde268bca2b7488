"""Real documents through the pipeline against their raw parsers and their own text, same process, same run.

    .venv/bin/python bench/formats.py [--copies 12] [--repeats 3] [--pages 2000] [--quick] [--json]

- PDFs: the readable PDFs of ../shared/realdocs/pdf (those the reader does not quarantine), --copies
  times over, dropped into a fresh deployment (SQLite, encrypted); the documents step (its Dagster
  step time: its reader workers' start, the reads, the store's writes) against pypdfium2 opening the
  same files and extracting every page's text in this process. pdf_ratio is the ratio of the
  medians, >= 0.9 is the goal.
- Mixed: the readable PDFs, Word files and HTML pages of realdocs plus Markdown (this project's
  docs/*.md), then the same extracted text as .txt twins; documents -> chunks -> embeddings with
  the real model (onnx-int8 unless --backend) on a fresh deployment each time, sensor tick included.
  mixed_ratio = mixed chunks/s over text chunks/s, medians; goal >= 0.9. The originals are cut by
  section, into more chunks than their plain text, so mixed_seconds_ratio (text seconds over mixed
  seconds) compares the same work by time.
- Memory: one PDF of --pages pages (bench/pdfs.py) read by the documents step in a child
  process. peak_rss_mb is the larger of the reader worker's peak (VmHWM, sampled while it lives)
  and the step's process's own; goal <= 300.

With --json, one object on the last line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagster import AssetSelection  # noqa: E402

from bench.memory import peak_rss_mb  # noqa: E402
from bench.pdfs import REALDOCS, WorkerPeak, extracted_texts, many_page_pdf  # noqa: E402
from grace.resources.embedding.onnx_model import model_cache_root  # noqa: E402
from grace.resources.wiring.dagster_resources import EmbedderResource  # noqa: E402
from tests.helpers.harness import Deployment  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
ALL_FORMATS = "['**/*.txt', '**/*.md', '**/*.pdf', '**/*.docx', '**/*.html', '**/*.htm']"
MARKDOWN = ["architecture.md", "sync.md", "documents.md", "keys.md", "fast-path.md", "scale.md"]
MANY_PAGES_SOURCE = "GeoBase_NHNC1_Data_Model_UML_EN.pdf"  # 19 pages of text and diagrams
DOCUMENTS = AssetSelection.assets("documents")
SHARDS = 2


def deployment_in(root: Path, embedder_resource, shards: int = SHARDS) -> Deployment:
    """SQLite, encrypted, every format; max_bytes high enough for the long PDF (36 MB for 2,000 pages)."""
    return Deployment(root, None, embedder_resource, shards=shards, max_bytes="200MB", patterns=ALL_FORMATS)


def documents_step_seconds(deployment: Deployment) -> float:
    """Tick, then the documents step alone on every shard; the steps' own seconds (Dagster's step stats)."""
    seconds = 0.0
    for request in deployment.tick():
        result = deployment._materialize(DOCUMENTS, int(request.partition_key))
        assert result.success
        [step] = deployment.instance.get_run_step_stats(result.run_id)
        seconds += step.end_time - step.start_time
    return seconds


def raw_pdfium(paths: list[Path]) -> tuple[int, float]:
    """(pages, seconds) of pypdfium2 extracting every page's text of paths, in this process."""
    import pypdfium2

    started, pages = time.perf_counter(), 0
    for path in paths:
        document = pypdfium2.PdfDocument(path)
        for index in range(len(document)):
            page = document[index]
            text_page = page.get_textpage()
            text_page.get_text_bounded()
            text_page.close()
            page.close()
            pages += 1
        document.close()
    return pages, time.perf_counter() - started


def pdf_repeat(pdfs: list[Path], copies: int, embedder_resource) -> tuple[int, float, float]:
    """(pages, documents step seconds, raw seconds) over copies of pdfs in a fresh one-shard deployment:
    one documents step, so one start of its reader pool, as one shard's run pays."""
    with tempfile.TemporaryDirectory(prefix="grace-formats-") as folder:
        deployment = deployment_in(Path(folder), embedder_resource, shards=1)
        dropped = [copy_into(pdf, deployment.inbox / f"copy{copy:02d}") for copy in range(copies) for pdf in pdfs]
        step_seconds = documents_step_seconds(deployment)
        pages, raw_seconds = raw_pdfium(dropped)
        active = deployment.stats()["total"]["documents_active"]
        deployment.store.dispose()
    if active != len(dropped):
        raise RuntimeError(f"only {active} of {len(dropped)} PDFs were read; the corpus should be readable")
    return pages, step_seconds, raw_seconds


def copy_into(path: Path, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(path, folder / (name or path.name)))


def measure_pdfs(pdfs: list[Path], copies: int, repeats: int, embedder_resource) -> dict:
    step_rates, raw_rates = [], []
    for repeat in range(repeats):
        pages, step, raw = pdf_repeat(pdfs, copies, embedder_resource)
        step_rates.append(pages / step)
        raw_rates.append(pages / raw)
        print(
            f"pdf repeat {repeat + 1}: {pages} pages; documents step {step_rates[-1]:.1f} pages/s ({step:.2f} s); "
            f"raw pypdfium2 {raw_rates[-1]:.1f} pages/s ({raw:.2f} s)"
        )
    step_rate, raw_rate = statistics.median(step_rates), statistics.median(raw_rates)
    return {
        "pdf_pages_per_s": round(step_rate, 1),
        "raw_pdfium_pages_per_s": round(raw_rate, 1),
        "pdf_ratio": round(step_rate / raw_rate, 3),
        "pdf_pages": pages,
        "pdf_files": len(pdfs) * copies,
    }


def mixed_corpus(folder: Path) -> tuple[Path, Path]:
    """(mixed, text): the readable realdocs and MARKDOWN as they are, and each one's extracted text as .txt."""
    originals = [path for kind in ("pdf", "docx", "html") for path in sorted((REALDOCS / kind).iterdir())]
    texts = extracted_texts(originals + [REPOSITORY / "docs" / name for name in MARKDOWN])
    mixed, text = folder / "mixed", folder / "text"
    for path, extracted in texts.items():
        kind = path.suffix.lstrip(".")
        copy_into(path, mixed / kind)
        (text / kind).mkdir(parents=True, exist_ok=True)
        (text / kind / f"{path.name}.txt").write_text(extracted, encoding="utf-8")
    return mixed, text


def ingest_repeat(corpus: Path, embedder_resource) -> tuple[int, float]:
    """(chunks embedded, seconds) of a tick and documents -> chunks -> embeddings over corpus, from empty."""
    with tempfile.TemporaryDirectory(prefix="grace-formats-") as folder:
        deployment = deployment_in(Path(folder), embedder_resource)
        shutil.copytree(corpus, deployment.inbox, dirs_exist_ok=True)
        started = time.perf_counter()
        deployment.sync(rebuild=False)
        seconds = time.perf_counter() - started
        deployment.store.dispose()
    return deployment.last_embedded, seconds


def measure_mixed(repeats: int, embedder_resource) -> dict:
    rates: dict[str, list[float]] = {"mixed": [], "text": []}
    times: dict[str, list[float]] = {"mixed": [], "text": []}
    with tempfile.TemporaryDirectory(prefix="grace-formats-corpus-") as folder:
        corpora = dict(zip(("mixed", "text"), mixed_corpus(Path(folder))))
        files = sum(1 for path in corpora["mixed"].rglob("*") if path.is_file())
        chunks = {}
        for repeat in range(repeats):
            for kind, corpus in corpora.items():  # interleaved: the machine's load falls on both alike
                chunks[kind], seconds = ingest_repeat(corpus, embedder_resource)
                rates[kind].append(chunks[kind] / seconds)
                times[kind].append(seconds)
                print(
                    f"{kind} repeat {repeat + 1}: {chunks[kind]} chunks, "
                    f"{rates[kind][-1]:.2f} chunks/s ({seconds:.1f} s)"
                )
    mixed, text = statistics.median(rates["mixed"]), statistics.median(rates["text"])
    return {
        "mixed_chunks_per_s": round(mixed, 2),
        "text_chunks_per_s": round(text, 2),
        "mixed_ratio": round(mixed / text, 3),
        # Structure-aware chunks cut the originals into more chunks than their plain text: time, too.
        "mixed_seconds_ratio": round(statistics.median(times["text"]) / statistics.median(times["mixed"]), 3),
        "mixed_files": files,
        "mixed_chunks": chunks["mixed"],
        "text_chunks": chunks["text"],
    }


def measure_memory(pages: int) -> dict:
    """Read a PDF of pages pages with the documents step in a child process; its figures."""
    with tempfile.TemporaryDirectory(prefix="grace-formats-memory-") as folder:
        root = Path(folder)
        (root / "inbox").mkdir()
        many_page_pdf(REALDOCS / "pdf" / MANY_PAGES_SOURCE, pages, root / "inbox" / "long.pdf")
        command = [sys.executable, __file__, "--child-memory", str(root)]
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"the memory child failed:\n{finished.stderr[-4000:]}")
    figures = json.loads(finished.stdout.strip().splitlines()[-1])
    return {"peak_rss_mb": max(figures["worker_peak_rss_mb"], figures["step_peak_rss_mb"]), **figures}


def _memory_child(root: Path) -> dict:
    """In the child: the documents step alone on root's deployment, sampling its reader worker."""
    from tests.helpers.fakes import HashingEmbedderResource

    deployment = deployment_in(root, HashingEmbedderResource(dimension=384), shards=1)
    with WorkerPeak() as worker:
        seconds = documents_step_seconds(deployment)
    totals = deployment.stats()["total"]
    if totals["documents_active"] != 1:
        raise RuntimeError(f"the long PDF was not read: {deployment.store.documents.quarantined()}")
    return {
        "worker_peak_rss_mb": worker.peak_mb,
        "step_peak_rss_mb": peak_rss_mb(),
        "memory_pdf_seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=12, help="how many times the PDFs are dropped")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pages", type=int, default=2000, help="the long PDF's pages, for peak_rss_mb")
    parser.add_argument("--backend", default="onnx-int8", help="the real model's backend: onnx-int8 or torch")
    parser.add_argument("--quick", action="store_true", help="one repeat of 4 copies: a smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last")
    parser.add_argument("--child-memory", metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        print(json.dumps(_memory_child(Path(args.child_memory))))
        return
    if args.quick:
        args.copies, args.repeats = 4, 1
    embedder = EmbedderResource(backend=args.backend, cache_root=str(model_cache_root(REPOSITORY / ".grace")))
    embedder.get().encode(["warm up"])
    pdfs = sorted(extracted_texts(sorted((REALDOCS / "pdf").glob("*.pdf"))))
    figures = {
        **measure_pdfs(pdfs, args.copies, args.repeats, embedder),
        **measure_mixed(args.repeats, embedder),
        **measure_memory(args.pages),
        "backend": args.backend,
        "repeats": args.repeats,
    }
    print(
        f"pdf_ratio {figures['pdf_ratio']} (goal >= 0.9), mixed_ratio {figures['mixed_ratio']} (goal >= 0.9), "
        f"peak_rss_mb {figures['peak_rss_mb']} for {args.pages} pages (goal <= 300)"
    )
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
