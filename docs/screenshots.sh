#!/usr/bin/env bash
# Screenshots of report.html in headless Chromium (Debian: apt-get install -y chromium), for the
# quickstart and paper_findings reports (run the suites first; nothing is rerun here):
#
#   docs/screenshots.sh [REPORT_DIR ...]   # default: reports/quickstart reports/paper_findings
#
# Writes <REPORT_DIR>/screenshot.png (1280 px wide, the first 2400 px of the page) beside each
# report.html. The screenshots are not committed; this script is how to make them again.
set -euo pipefail

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "screenshots.sh: no chromium found; install it (Debian: apt-get install -y chromium)" >&2
  exit 2
fi

dirs=("$@")
[ ${#dirs[@]} -gt 0 ] || dirs=(reports/quickstart reports/paper_findings)

for dir in "${dirs[@]}"; do
  page="$dir/report.html"
  if [ ! -f "$page" ]; then
    echo "screenshots.sh: $page not found; run its suite first (avharness run suites/<name>.yaml)" >&2
    exit 2
  fi
  abs=$(cd "$dir" && pwd)
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2400 \
    --screenshot="$abs/screenshot.png" "file://$abs/report.html" 2>/dev/null
  echo "wrote $abs/screenshot.png"
done
