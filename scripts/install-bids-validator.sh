#!/usr/bin/env bash
# The BIDS validator the test suite runs on MNT/.bids/DEMO1 (tests/bids/test_validator.py):
# the npm package, pinned, in a project-local folder (.tools/bids-validator), run with the
# distribution's Node.js (apt-get install nodejs npm; scripts/install.sh test does both).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${BIDS_VALIDATOR_VERSION:-1.15.0}"
dest=.tools/bids-validator
if [ -x "$dest/node_modules/.bin/bids-validator" ] \
   && [ "$("$dest/node_modules/.bin/bids-validator" --version 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
mkdir -p "$dest"
npm install --silent --no-audit --no-fund --prefix "$dest" "bids-validator@$VERSION" >/dev/null
echo "xnatfs install: bids-validator $VERSION in $dest"
