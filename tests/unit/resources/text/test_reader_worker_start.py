"""The reader worker starts as a fresh interpreter that imports only the readers, never the
parent's __main__ (in a run worker, the dagster command and all of Dagster)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers.documents import REPOSITORY, realdoc

TEXT_PDF = "pdf/pdflatex-outline.pdf"


def test_the_worker_does_not_import_the_parents_main_module(tmp_path):
    imports = tmp_path / "imports.log"
    main = tmp_path / "heavy_main.py"
    # Every import of this module, under any name, appends its name: spawn would import it again as __mp_main__.
    main.write_text(
        textwrap.dedent(
            f"""
            import sys
            with open({str(imports)!r}, "a") as log:
                log.write(__name__ + "\\n")
            sys.path.insert(0, {str(REPOSITORY)!r})
            if __name__ == "__main__":
                from grace.resources.text.isolation import ReaderWorker
                from grace.resources.text.readers.base import ReadLimits
                data = open({str(realdoc(TEXT_PDF))!r}, "rb").read()
                with ReaderWorker() as worker:
                    print(len(worker.extract(data, "outline.pdf", ReadLimits(10**8, 100)).sections))
            """
        )
    )
    finished = subprocess.run([sys.executable, str(main)], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert int(finished.stdout.split()[-1]) > 0, "the worker read the PDF"
    assert imports.read_text().split() == ["__main__"], "the worker imported the parent's main module"
