"""Build ``benchmarks/peers/.venv``: the project's packages plus the peers, installed with --no-deps.

The venv's site-packages gets a ``.pth`` that adds the running environment's site-packages as a
site directory (its own ``.pth`` files, the editable install of this project included), so the
peers run on exactly the torch, transformers and harness this project uses. Packages installed
in the peers' venv come first on ``sys.path``.
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venv"

# (distribution==version, import name, why): the versions the issue measured
PEERS = [
    ("llmcompressor==0.14.0.1", "llmcompressor", "SparseGPT, Wanda and magnitude per matrix; oneshot end to end"),
    ("neural-compressor==3.7.1", "neural_compressor", "SparseGPT fasterprune per matrix (its pruner, removed in 3.8+)"),
    ("sparsekit==0.1.5", "sparsekit", "SparseGPT N:M and OBD/magnitude per scope"),
]
# small pure-Python dependencies the peers import that this project does not have (also --no-deps)
EXTRA = ["compressed-tensors==0.19.0", "deprecated", "wrapt", "prettytable", "wcwidth", "py-cpuinfo", "schema",
         "auto-round==0.15.1", "nvidia-ml-py", "opencv-python-headless", "pycocotools"]  # the last two: imported
# by neural_compressor/__init__ whatever one uses


def python() -> Path:
    return VENV / "bin" / "python"


def build(log=print) -> Path:
    """Create the venv if needed and install what is missing; one line per package that fails."""
    if not python().exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    site = subprocess.run([str(python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "zz_sparsebench_project.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    for spec in [p[0] for p in PEERS] + EXTRA:
        if _installed_here(site, spec.split("==")[0]):
            continue
        proc = subprocess.run([str(python()), "-m", "pip", "install", "-q", "--no-deps", spec],
                              capture_output=True, text=True)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            log(f"peers: could not install {spec}: {last}")
    return python()


def _installed_here(site: str, name: str) -> bool:
    """True when the distribution's metadata sits in the peers' own site-packages."""
    norm = name.replace("-", "_").lower()
    return any(p.name.lower().startswith(norm + "-") and p.suffix == ".dist-info" for p in Path(site).iterdir())


if __name__ == "__main__":
    print(build())
    sys.exit(0)
