# Sourced by scripts/test.sh and scripts/demo.sh: `ensure_venv [EXTRA]` creates .venv on first
# use and installs the project into it (editable, with EXTRA) only when that is not done yet
# for the current pyproject.toml: a stamp in .venv holds its hash, so an unchanged checkout
# starts at once and an edited pyproject.toml (new dependencies, entry points) reinstalls.
# A missing or broken .venv is recreated from scratch; PYTHON picks its interpreter.

_new_venv() {
  "${PYTHON:-python3}" -m venv --clear .venv
  .venv/bin/python -m pip install -q --upgrade pip
}

ensure_venv() {
  local extra=${1:-} key stamp spec probe
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "" 2>/dev/null; then
    _new_venv
  fi
  key=$(sha256sum pyproject.toml | cut -d" " -f1)
  stamp=.venv/.tde-installed-${extra:-base}
  probe="import transparent_de${extra:+, pytest}"
  # -I: not the checkout's own directory, so the probe sees what is installed.
  if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && .venv/bin/python -I -c "$probe" 2>/dev/null; then
    return 0
  fi
  # The test extras include the base install: the demo needs no install after the tests.
  if [ -z "$extra" ] && [ "$(cat .venv/.tde-installed-test 2>/dev/null)" = "$key" ] \
    && .venv/bin/python -I -c "$probe" 2>/dev/null; then
    return 0
  fi
  .venv/bin/python -c "import pip" 2>/dev/null || _new_venv  # a venv broken beyond its interpreter
  spec=.${extra:+[$extra]}
  rm -f .venv/.tde-installed-*  # a new pyproject.toml invalidates every earlier install
  .venv/bin/python -m pip install -q -e "$spec"
  echo "$key" >"$stamp"
}
