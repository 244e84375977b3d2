"""Zip the project's Python packages for `spark-submit --py-files`: `package_code.py OUT.zip`."""

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("conf", "spark_jobs", "model", "serving", "datagen")
DATA_SUFFIXES = (".py", ".toml")


def main(target: str) -> int:
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            for path in sorted((ROOT / package).rglob("*")):
                if path.suffix in DATA_SUFFIXES and "__pycache__" not in path.parts:
                    archive.write(path, path.relative_to(ROOT).as_posix())
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
