"""Write a copy of asv.conf.json whose results and html go to a scratch folder, so demos and
checks never mix with a team's results. Usage: python tools/asv_scratch.py DIR [REPO]
-> DIR/asv.conf.json; REPO (default: this checkout) is the git repository asv reads commits
from: a clone of this one where the checkout has no .git, as on a lent GPU machine.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

work = Path(sys.argv[1]).resolve()
root = Path(__file__).resolve().parent.parent
repo = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else root
conf = json.loads(re.sub(r"^\s*//.*$", "", (root / "asv.conf.json").read_text(), flags=re.M))
conf.update(repo=str(repo), benchmark_dir=str(root / "suites"),
            results_dir=str(work / "results"), html_dir=str(work / "html"),
            env_dir=str(root / ".asv" / "env"))
work.mkdir(parents=True, exist_ok=True)
(work / "asv.conf.json").write_text(json.dumps(conf, indent=2))
