#!/usr/bin/env bash
# buildpacks/lib/markers.sh: what an app is made of, shared by the shipped buildpacks' detect
# scripts so that their rules cannot drift apart (buildpacks/README.md states them).
#   markers::manifest BUILD_DIR          true when a language manifest is present (package.json,
#                                        requirements.txt, setup.py, pyproject.toml, runtime.txt)
#   markers::python BUILD_DIR            true for a Python app: a Python manifest or a top-level *.py
#   markers::procfile_types BUILD_DIR    prints the Procfile's process types, one a line
#   markers::procfile_has BUILD_DIR RE   true when a process type matches the regex RE (whole name)

markers::manifest() {
  local dir=$1 f
  for f in package.json requirements.txt setup.py pyproject.toml runtime.txt; do
    [[ -f "$dir/$f" ]] && return 0
  done
  return 1
}

markers::python() {
  local dir=$1 f
  for f in requirements.txt setup.py pyproject.toml runtime.txt; do
    [[ -f "$dir/$f" ]] && return 0
  done
  compgen -G "$dir/*.py" >/dev/null
}

markers::procfile_types() {
  local dir=$1
  [[ -f "$dir/Procfile" ]] || return 0
  # the same grammar as lib/config/procfile.ts; the build checks the file strictly afterwards
  sed -n -E 's/^[[:space:]]*([A-Za-z0-9_-]+)[[:space:]]*:[[:space:]]*[^[:space:]].*$/\1/p' \
    "$dir/Procfile" | tr -d '\r'
}

markers::procfile_has() {
  local dir=$1 re=$2
  markers::procfile_types "$dir" | grep -qE "^(${re})\$"
}
