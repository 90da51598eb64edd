"""``python -m mtlutils.models --params``: the parameter table beside the MTAN paper's #P column."""
from __future__ import annotations

import argparse

from .params import SEGNET_13, parameter_table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mtlutils.models", description=__doc__)
    parser.add_argument("--params", action="store_true", help="print the parameter table")
    args = parser.parse_args()
    if not args.params:
        parser.print_help()
        return
    table = parameter_table()
    print(f"Parameters relative to one 13-class single-task SegNet ({SEGNET_13:,} parameters), "
          f"full width; NYUv2: seg(13)+depth+normal, CityScapes: seg(7)+depth")
    print(table.to_string(index=False, na_rep="-"))


if __name__ == "__main__":
    main()
