"""Register an asv machine, or refresh it, with the device its results are measured on.

Usage: python tools/asv_machine.py NAME     (before each ``asv run --machine NAME``)

asv files every result with its machine's description (``~/.asv-machine.json``) and draws a
line per distinct description. This adds one field to asv's own (os, arch, cpu, ram, left
as asv guesses them the first time, or as you edited them): ``device``, the GPU, driver,
CUDA runtime and package versions (``schedbench.kernels.devices.machine_device``). A driver or CuPy
update then starts a new line instead of passing for a change in the code, and two
machines' results publish side by side. A benchmark parameter cannot do this: ``asv
publish`` draws only the parameter values that the last ``asv run`` here discovered, so a
device value measured elsewhere would never be drawn.
"""

from __future__ import annotations

import json
import sys

from asv import util
from asv.machine import Machine, MachineCollection

from schedbench.kernels.devices import machine_device


def register(name: str) -> dict:
    try:
        known = MachineCollection.load(name)
    except util.UserError:  # not registered yet
        known = {}
    fields = {**Machine.get_defaults(), **known, "machine": name, "device": machine_device()}
    MachineCollection.save(name, fields)
    return fields


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__.split("\n\n")[1])
    print(json.dumps(register(sys.argv[1]), indent=2))


if __name__ == "__main__":
    main()
