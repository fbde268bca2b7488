"""Real documents for benches: which of ../shared/realdocs the readers read, a PDF of many pages
made from a real one, and the peak memory of the reader worker processes."""

from __future__ import annotations

import threading
from pathlib import Path

from grace.resources.text.extraction import read_document
from grace.resources.text.isolation import ReaderWorker

REALDOCS = Path(__file__).resolve().parents[2] / "shared" / "realdocs"
MB = 1 << 20


def extracted_texts(paths: list[Path]) -> dict[Path, str]:
    """The text the readers extract from each of paths; the files they quarantine are left out."""
    texts = {}
    with ReaderWorker() as worker:
        for path in paths:
            read = read_document(path.parent, path.name, 200 * MB, worker=worker)
            if read is not None and read.problem is None:
                texts[path] = read.text
    return texts


def many_page_pdf(source: Path, pages: int, target: Path) -> Path:
    """A PDF of the given page count, made by repeating the pages of a real one."""
    import pypdfium2

    original = pypdfium2.PdfDocument(source)
    made = pypdfium2.PdfDocument.new()
    try:
        while len(made) < pages:
            made.import_pages(original, list(range(min(len(original), pages - len(made)))))
        made.save(target)
    finally:
        made.close()
        original.close()
    return target


class WorkerPeak:
    """Samples the peak RSS (VmHWM) of this process's child processes while they live, in a thread:
    the reader worker is started and stopped inside the documents step, out of the caller's reach."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return max(self.peaks.values(), default=0.0)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in _children():
                high = _high_water_mb(pid)
                if high is not None:
                    self.peaks[pid] = max(high, self.peaks.get(pid, 0.0))


def _children() -> list[int]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:  # the thread ended
            continue
    return pids


def _high_water_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # it exited between the listing and the read
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None
