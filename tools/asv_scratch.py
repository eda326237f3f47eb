"""Write a copy of asv.conf.json whose results and html go to a scratch folder, so demos and
checks never mix with a team's results. Usage: python tools/asv_scratch.py DIR -> DIR/asv.conf.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

work = Path(sys.argv[1]).resolve()
root = Path(__file__).resolve().parent.parent
conf = json.loads(re.sub(r"^\s*//.*$", "", (root / "asv.conf.json").read_text(), flags=re.M))
conf.update(repo=str(root), benchmark_dir=str(root / "suites"),
            results_dir=str(work / "results"), html_dir=str(work / "html"),
            env_dir=str(root / ".asv" / "env"))
(work / "asv.conf.json").write_text(json.dumps(conf, indent=2))
