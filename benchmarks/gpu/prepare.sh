#!/usr/bin/env bash
# Everything the GPU call needs that the GPU machine lacks, made here first (a lent GPU comes with 15 minutes of
# device time in all, its start included: nothing may be fetched or fixed there).
#
#   bash benchmarks/gpu/prepare.sh [--dest DIR] [--no-import-check]
#
# 1. downloads the wheels pinned in benchmarks/gpu/wheels.txt (CPython 3.12, manylinux x86-64) into DIR
#    (default .whl/, git-ignored: the device call carries it), and removes any other wheel there;
# 2. writes DIR/COMMIT, the commit run.sh reports (the GPU machine's copy of the tree has no git);
# 3. checks the set: check_wheels.py (pins, tags, every requirement met by a carried wheel or the image), then an
#    offline install into a fresh --target folder, as run.sh installs it there;
# 4. where a Python 3.12 is found here (PYTHON312, python3.12, pyenv's), imports the carried packages from that
#    folder in a Python 3.12 virtual environment (numpy from PyPI, as the image has it) and starts Pythia and
#    FastJet once; --no-import-check leaves this out.
# Run it after the last commit that goes to the GPU (COMMIT names it), then the device call of benchmarks/gpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

DEST=.whl IMPORT_CHECK=1
while [ $# -gt 0 ]; do
    case "$1" in
        --dest) DEST="$2"; shift 2 ;;
        --no-import-check) IMPORT_CHECK=0; shift ;;
        *) echo "prepare.sh: unknown option $1 (see the head of $0)" >&2; exit 2 ;;
    esac
done
PY="${PYTHON:-python3}"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
TARGET_ARGS=(--only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}")
mkdir -p "$DEST"

mapfile -t PINS < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' benchmarks/gpu/wheels.txt)
echo "prepare: ${#PINS[@]} wheels into $DEST"
"$PY" -m pip download -q --no-deps "${TARGET_ARGS[@]}" -d "$DEST" "${PINS[@]}"
# keep exactly the pinned files (an earlier pin's wheel would be a second version)
"$PY" - "$DEST" "${PINS[@]}" <<'EOF'
import sys
from pathlib import Path

try:
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
folder, pins = Path(sys.argv[1]), {canonicalize_name(p.split("==")[0]): p.split("==")[1] for p in sys.argv[2:]}
for wheel in folder.glob("*.whl"):
    name, version, *_ = parse_wheel_filename(wheel.name)
    if pins.get(name) != str(version):
        print(f"prepare: removing {wheel.name} (not pinned)")
        wheel.unlink()
EOF

if git rev-parse HEAD >/dev/null 2>&1; then
    echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- jbot benchmarks tests || echo '+uncommitted changes')" \
        >"$DEST/COMMIT"
    echo "prepare: COMMIT $(cat "$DEST/COMMIT")"
fi

"$PY" benchmarks/gpu/check_wheels.py "$DEST"

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/jbot-prepare.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "${TARGET_ARGS[@]}" \
    --target "$SCRATCH/site" "$DEST"/*.whl
for module in pydantic pydantic_core pythia8mc fastjet awkward awkward_cpp vector typing_extensions; do
    [ -e "$SCRATCH/site/$module" ] || [ -e "$SCRATCH/site/$module.py" ] || compgen -G "$SCRATCH/site/$module*.so" \
        >/dev/null || { echo "prepare: $module is not in the installed folder" >&2; exit 1; }
done
echo "prepare: the set installs offline into a fresh --target folder ($(du -sh "$SCRATCH/site" | cut -f1))"

if [ "$IMPORT_CHECK" = 1 ]; then
    PY312=""
    for candidate in "${PYTHON312:-}" python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
        if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null
        then PY312="$candidate"; break; fi
    done
    if [ -z "$PY312" ]; then
        echo "prepare: no Python 3.12 here: the import check is left out (PYTHON312=... names one)"
    else
        "$PY312" -m venv "$SCRATCH/venv"
        "$SCRATCH/venv/bin/python" -m pip install -q numpy packaging fsspec
        # Pythia finds its settings under sys.prefix, or where PYTHIA8DATA says (a --target install: run.sh sets it)
        PYTHONPATH="$SCRATCH/site" PYTHIA8DATA="$SCRATCH/site/share/Pythia8/xmldoc" "$SCRATCH/venv/bin/python" - <<'EOF'
import awkward, fastjet, pydantic, pythia8mc, vector  # noqa: F401,E401

pythia = pythia8mc.Pythia("", False)
for line in ("Beams:eCM = 13000", "HardQCD:all = on", "PhaseSpace:pTHatMin = 900", "Print:quiet = on"):
    assert pythia.readString(line)
assert pythia.init() and pythia.next()
inputs = [fastjet.PseudoJet(p.px(), p.py(), p.pz(), p.e()) for p in pythia.event if p.isFinal()]
jets = fastjet.ClusterSequence(inputs, fastjet.JetDefinition(fastjet.antikt_algorithm, 0.8)).inclusive_jets(500.0)
print(f"prepare: Python 3.12 imports the carried set; Pythia made an event, FastJet found {len(jets)} jets in it")
EOF
    fi
fi
echo "prepare: $DEST is ready ($(du -sh "$DEST" | cut -f1)); carry it: run(command=..., carry=[\"$DEST\"])"
