"""Make a published asv site work without network: fetch the JavaScript and CSS that asv's
pages load from CDNs (through the npm registry, cached), copy them next to the pages, and
point the pages at the copies.

Usage: python tools/asv_vendor.py HTML_DIR [--cache DIR]   (after ``asv publish``)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tarfile
from pathlib import Path

# CDN address in asv's pages -> (npm package, file inside its tarball)
ASSETS = {
    "https://code.jquery.com/jquery-3.3.1.min.js": ("jquery@3.3.1", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js":
        ("flot@0.8.3", "jquery.flot.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js":
        ("flot@0.8.3", "jquery.flot.time.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js":
        ("flot@0.8.3", "jquery.flot.selection.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js":
        ("flot@0.8.3", "jquery.flot.categories.js"),
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js":
        ("flot-orderbars@1.0.0", "js/jquery.flot.orderBars.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js":
        ("stupid-table-plugin@1.1.3", "stupidtable.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js":
        ("blueimp-md5@2.19.0", "js/md5.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js":
        ("bootstrap@3.1.1", "dist/js/bootstrap.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css":
        ("bootstrap@3.1.1", "dist/css/bootstrap.min.css"),
}


def tarball(package: str, cache: Path) -> Path:
    name, version = package.rsplit("@", 1)
    path = cache / f"{name}-{version}.tgz"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", "--silent", "--pack-destination", str(cache), package],
                       check=True, capture_output=True)
    return path


def vendor(html_dir: Path, cache: Path) -> list[str]:
    """Rewrite every page that loads a known CDN asset; return the addresses rewritten."""
    out = html_dir / "vendor"
    out.mkdir(exist_ok=True)
    done = []
    for url, (package, member) in ASSETS.items():
        local = f"vendor/{package.split('@')[0]}-{Path(member).name}"
        with tarfile.open(tarball(package, cache)) as tar:
            data = tar.extractfile(f"package/{member}")
            assert data is not None
            (html_dir / local).write_bytes(data.read())
        for page in html_dir.glob("*.html"):
            text = page.read_text()
            if url in text:
                # Subresource-integrity hashes name the CDN's exact files; ours are the same
                # libraries from npm, sometimes unminified, so the hashes must go.
                tag = re.compile(r'(<[^>]*"' + re.escape(url) + r'"[^>]*?)\s+integrity="[^"]*"')
                page.write_text(tag.sub(r"\1", text).replace(url, local))
                done.append(url)
    left = {u for p in html_dir.glob("*.html")
            for u in re.findall(r'(?:src|href)="(https://cdn[^"]+|https://code[^"]+)"',
                                p.read_text())}
    if left:
        raise SystemExit(f"asv_vendor: no local copy for {sorted(left)}")
    return done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("html_dir", type=Path)
    p.add_argument("--cache", type=Path, default=Path(".asv/vendor-cache"))
    args = p.parse_args()
    done = vendor(args.html_dir, args.cache)
    print(f"asv_vendor: {len(set(done))} CDN assets served from {args.html_dir / 'vendor'}")


if __name__ == "__main__":
    main()
