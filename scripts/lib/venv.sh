# Sourced by scripts/* and .ci/run, from the repository root: the project's own Python
# environment, which scripts/setup creates. STEWARD_VENV moves it (default: .venv here).
# Its bin/ goes first on PATH, as `. .venv/bin/activate` would do, so the tools and every child
# process find this environment's python3, pytest, steward, steward-audit, kubectl-steward, ...
# rather than whatever the machine has installed globally.
STEWARD_VENV="${STEWARD_VENV:-$PWD/.venv}"
PYTHON="$STEWARD_VENV/bin/python"
export PATH="$STEWARD_VENV/bin:$PATH"

# scripts/setup creates the environment; every other script needs it to be there already.
if [ "${0##*/}" != setup ] && [ ! -x "$PYTHON" ]; then
  echo "${0##*/}: no Python environment at $STEWARD_VENV; run scripts/setup first" >&2
  exit 1
fi
