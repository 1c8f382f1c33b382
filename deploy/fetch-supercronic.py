"""Download a pinned supercronic release and install it only if its SHA-1 matches.

Used by the Dockerfile's `train` stage (the slim image has no curl). Supercronic publishes SHA-1 sums
with each release, hence SHA-1 here; the pinned version plus checksum makes the fetch reproducible
and refuses a tampered or truncated download.

Usage: python fetch-supercronic.py VERSION SHA1SUM DEST [ARCH]
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    version, want, dest = argv[:3]
    arch = argv[3] if len(argv) == 4 else "amd64"
    url = f"https://github.com/aptible/supercronic/releases/download/{version}/supercronic-linux-{arch}"
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    got = hashlib.sha1(data).hexdigest()
    if got != want.lower():
        print(f"supercronic {version} ({url}): sha1 {got}, expected {want}", file=sys.stderr)
        return 1
    tmp = dest + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
