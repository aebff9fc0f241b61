"""Print an HTML report to PDF with the system Chromium, headless.

The PDF is the browser's print of the very file ``report.html`` is, so the two cannot
disagree. Page size and margins come from the page's print CSS (``@page``): Chromium's
command line has no paper-size option.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

from medfm.atomic import write_atomic
from medfm.errors import MedfmError

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-pdf-header-footer", "--no-first-run", "--disable-extensions"]
INSTALL_HINT = "`make test` installs it (the Makefile's system-packages target apt-installs chromium)"


def render_pdf(html_path: str | Path, pdf_path: str | Path, chromium: str | Path = CHROMIUM,
               timeout_s: float = 120.0) -> Path:
    """Print ``html_path`` to ``pdf_path`` (written atomically) with headless Chromium.

    Args:
        html_path: a self-contained HTML file (the report loads nothing from the network).
        pdf_path: the PDF to create or replace; it is left as it was if printing fails.
        chromium: the Chromium executable.
        timeout_s: Chromium and every process it started are killed after this long.

    Returns:
        ``pdf_path``.

    Raises:
        MedfmError: the HTML file or Chromium is missing, Chromium fails or times out,
            or what it wrote is not a PDF. The message names the file and the reason.
    """
    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path)
    if not html_path.is_file():
        raise MedfmError(f"{html_path}: no HTML file to print to PDF")
    if not Path(chromium).is_file() or not os.access(chromium, os.X_OK):
        raise MedfmError(f"{pdf_path}: cannot print {html_path.name}: Chromium is not installed at {chromium}; "
                         f"{INSTALL_HINT}")

    def print_to(tmp: Path) -> None:
        # A fresh profile per call: concurrent prints never share a profile lock, and none touches ~/.config.
        with tempfile.TemporaryDirectory(prefix="medfm-chromium-") as profile:
            command = [str(chromium), *CHROMIUM_ARGS, f"--user-data-dir={profile}",
                       f"--print-to-pdf={tmp}", html_path.as_uri()]
            returncode, stderr = _run(command, timeout_s, pdf_path)
        if returncode != 0:
            raise MedfmError(f"{pdf_path}: Chromium exited with status {returncode} printing {html_path}: "
                             f"{_last_lines(stderr)}")
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise MedfmError(f"{pdf_path}: Chromium wrote no PDF for {html_path}: {_last_lines(stderr)}")
        with open(tmp, "rb") as f:
            if f.read(5) != b"%PDF-":
                raise MedfmError(f"{pdf_path}: Chromium wrote something that is not a PDF for {html_path}")

    return write_atomic(pdf_path, print_to)


def _run(command: list[str], timeout_s: float, pdf_path: Path) -> tuple[int, str]:
    """Run Chromium in its own process group, so a timeout kills its renderer and GPU processes too."""
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise MedfmError(f"{pdf_path}: Chromium did not finish printing within {timeout_s:g} s; killed") from None
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return process.returncode, stderr.decode("utf-8", "replace")


def _last_lines(stderr: str, n: int = 5) -> str:
    # Chromium logs D-Bus noise in containers; its own complaint, if any, comes last.
    lines = [line for line in stderr.splitlines() if line.strip() and "dbus" not in line]
    return " | ".join(lines[-n:]) or "(nothing on stderr)"
