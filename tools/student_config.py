"""Write the student edition's book config: `_config.yml` with sphinx-exercise's hide_solutions on.

Usage: python tools/student_config.py _config.yml OUT.yml   (called by `make book-student`)
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml


def main(source: str, target: str) -> None:
    config = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    config.setdefault("sphinx", {}).setdefault("config", {})["hide_solutions"] = True
    config["title"] = f"{config.get('title', 'mtl-book')} (student edition)"
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
