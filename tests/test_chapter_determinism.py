"""Running a chapter twice (quick profile, CPU) prints the same numbers.

Every output is compared except cells tagged ``nbval-ignore-output`` (wall-clock timings) and the
progress bars (they show elapsed time). A cell's printed text is compared as one string per stream:
how the kernel splits it into output chunks depends on timing, not on the numbers.
"""
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "notebooks").glob("*.ipynb"))


def printed(notebook) -> list[str]:
    out = []
    for cell in notebook.cells:
        if cell.cell_type != "code" or "nbval-ignore-output" in cell.metadata.get("tags", []):
            continue
        streams: dict[str, str] = {}
        for output in cell.outputs:
            if output.output_type == "stream":
                # the kernel's temporary file names (warnings cite them) contain its process id
                text = re.sub(r"ipykernel_\d+", "ipykernel", output.text)
                streams[output.name] = streams.get(output.name, "") + text
            elif "data" in output:
                data = output.data
                if "mtl-progress" in data.get("text/html", ""):
                    continue
                out.append(data.get("text/html") or data.get("text/plain", ""))
        out.extend(f"{name}: {text}" for name, text in sorted(streams.items()))
    return out


@pytest.mark.skipif(os.environ.get("MTL_PROFILE") != "quick", reason="runs chapters twice: quick profile only")
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_prints_the_same_numbers_twice(chapter):
    runs = []
    for _ in range(2):
        nb = nbformat.read(chapter, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(chapter.parent)}}).execute()
        runs.append(printed(nb))
    assert runs[0], "the chapter printed nothing"
    assert runs[0] == runs[1]
