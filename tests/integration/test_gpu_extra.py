"""The `gpu` extra installs what `import dask_cuda` needs, beside the pinned torch.

A scratch virtualenv gets the README's install order: torch==2.13.0 first, then the
project with the `gpu` extra. No GPU is needed to import dask-cuda (its clusters need
one; they are not started here).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_gpu_extra_imports_dask_cuda_and_keeps_torch(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")

    def pip(*args: str) -> None:
        proc = subprocess.run(
            [python, "-m", "pip", "install", "--quiet", *args],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    pip("torch==2.13.0")
    pip("-e", f"{ROOT}[gpu]")
    probe = (
        "import dask_cuda, dask, distributed, torch; from cuda import bindings; "
        "print(torch.__version__, dask.__version__, distributed.__version__)"
    )
    proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    torch_version, dask_version, distributed_version = proc.stdout.split()
    assert torch_version.split("+")[0] == "2.13.0"  # nothing moved torch
    # dask-cuda pins dask and distributed to one release: the project's own pins.
    requires = (ROOT / "setup.cfg").read_text()
    assert f"dask[array,bag]=={dask_version}" in requires
    assert f"distributed=={distributed_version}" in requires
