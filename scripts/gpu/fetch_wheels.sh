#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels the GPU machine needs to import the `openai` client of
# tests/integration/test_openai_server.py under its Python 3.12 (manylinux x86_64), which has no package index.
# Follows /work/.library/device/README.md: --no-deps, every needed dependency named explicitly. Then, in a
# device run that carries .whl:  source scripts/gpu/install_wheels.sh && python3 tests/integration/...
#
#   bash scripts/gpu/fetch_wheels.sh                 # the missing packages and the version floors (default)
#   bash scripts/gpu/fetch_wheels.sh --missing-only  # only the packages absent from the GPU image
#
# openai==3.51.0 (the version scripts/install_deps.sh pins) needs, without extras: anyio, httpx2, jiter,
# pydantic, sniffio, typing-extensions; httpx2 needs httpcore2, idna, truststore; httpcore2 needs h11,
# truststore; pydantic needs pydantic-core, annotated-types, typing-inspection. Against the package list of
# the GPU image (KINDS.md, "Python packages already there"):
#  MISSING - not in the image at all.
#  FLOORS  - in the image, but the closure needs versions at least this recent and KINDS.md gives no versions
#            (anyio>=4.10 and idna>=3.18 for httpx2, h11>=0.16 for httpcore2, typing-extensions>=4.16 for
#            pydantic-core). They are small; carrying them shadows the image's copies only where PYTHONPATH
#            points at /tmp/site. Drop them (--missing-only) once `python3 -m pip show anyio idna h11
#            typing-extensions` there shows new enough versions.
# At the end every non-extra requirement of every wheel is checked against what was fetched plus the image's
# package list, so a new dependency of a future version fails here, not on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
OPENAI_VERSION=$(sed -n 's/^OPENAI_VERSION=\([0-9.]*\).*/\1/p' scripts/install_deps.sh)
[[ -n "$OPENAI_VERSION" ]] || { echo "fetch_wheels: no OPENAI_VERSION in scripts/install_deps.sh" >&2; exit 1; }

MISSING=(
  "openai==$OPENAI_VERSION"
  "httpx2==2.16.2" "httpcore2==2.16.2" "truststore==0.10.5"
  "jiter==0.19.0" "sniffio==1.3.1"
  "pydantic==2.14.3" "pydantic-core==2.50.4" "annotated-types==0.8.0" "typing-inspection==0.4.5"
)
FLOORS=("anyio==4.16.0" "idna==3.20" "h11==0.16.0" "typing-extensions==4.16.0")
# The GPU image's packages (KINDS.md, read 2026-11-17) that the check below may count as present.
IMAGE_PACKAGES="anyio certifi h11 httpcore httpx idna typing-extensions urllib3"

wanted=("${MISSING[@]}")
[[ "${1:-}" == "--missing-only" ]] || wanted+=("${FLOORS[@]}")
mkdir -p .whl
# One version of each package in .whl: an older wheel of a package fetched here would stop the install.
for spec in "${wanted[@]}"; do
  stem=$(echo "${spec%%==*}" | tr '-' '_')
  for old in .whl/*.whl; do
    [[ -e "$old" ]] || continue
    name=$(basename "$old" | cut -d- -f1 | tr '-' '_' | tr 'A-Z' 'a-z')
    version=$(basename "$old" | cut -d- -f2)
    [[ "$name" == "$(echo "$stem" | tr 'A-Z' 'a-z')" && "$version" != "${spec##*==}" ]] && rm -v "$old"
  done
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wanted[@]}"

# Closure check: every requirement (extras skipped, markers for CPython 3.12 on Linux x86_64) is met by a
# fetched wheel or named in the image's list.
python3 - "$IMAGE_PACKAGES" <<'EOF'
import glob, re, sys, zipfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "extra": ""}
image = {canonicalize_name(n) for n in sys.argv[1].split()}
fetched, requirements = {}, []
for path in sorted(glob.glob(".whl/*.whl")):
    with zipfile.ZipFile(path) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    name = canonicalize_name(re.search(r"^Name: (.+)$", meta, re.M).group(1).strip())
    version = Version(re.search(r"^Version: (.+)$", meta, re.M).group(1).strip())
    if name in fetched:
        sys.exit(f"fetch_wheels: two versions of {name} in .whl ({fetched[name]} and {version}): remove one")
    fetched[name] = version
    requirements += [(name, Requirement(line)) for line in re.findall(r"^Requires-Dist: (.+)$", meta, re.M)]
problems = []
for owner, req in requirements:
    if req.marker is not None and not req.marker.evaluate(env):
        continue  # an extra, another platform or Python
    dep = canonicalize_name(req.name)
    if dep in fetched:
        if not req.specifier.contains(fetched[dep], prereleases=True):
            problems.append(f"{owner} needs {req}, .whl holds {dep} {fetched[dep]}")
    elif dep not in image:
        problems.append(f"{owner} needs {req}: neither fetched nor in the GPU image")
    elif req.specifier:
        print(f"fetch_wheels: note: {owner} needs {req}; the GPU image's version is taken on trust")
if problems:
    sys.exit("fetch_wheels: incomplete:\n  " + "\n  ".join(problems))
print(f"fetch_wheels: closure complete: {', '.join(f'{n} {v}' for n, v in sorted(fetched.items()))}")
EOF
du -ch .whl/*.whl | tail -1 | sed 's/^/fetch_wheels: .whl total /'
