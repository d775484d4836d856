#!/usr/bin/env bash
# Installs the Debian packages pingan's demo and tests need (idempotent; quick when all are present).
set -euo pipefail
pkgs=(
  ffmpeg                                   # test clips, demo media
  python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp  # the local RTSP server
  opencv-doc                               # real CCTV footage (vtest.avi) and street photos
  fonts-wqy-zenhei                         # CJK captions on evidence stills
  chromium                                 # dashboard browser tests
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "setup-system: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "setup-system: run as root: apt-get install -y ${missing[*]}" >&2; exit 1; fi
else SUDO=; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
