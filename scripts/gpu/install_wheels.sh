# Source on the GPU machine (in a device run that carries .whl; fill it with scripts/gpu/fetch_wheels.sh):
#   source scripts/gpu/install_wheels.sh || exit; python3 tests/integration/test_openai_server.py ...
# Installs every wheel of .whl into /tmp/site (the image's own packages stay untouched) and puts it on PYTHONPATH.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$(dirname "${BASH_SOURCE[0]}")"/../../.whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || return 1
