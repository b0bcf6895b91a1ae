#!/usr/bin/env bash
# buildpacks/lib/env-dir.sh: the app's config vars during compile. ENV_DIR holds one file per
# var (name = key, contents = value); the values are not in the environment unless a buildpack
# exports them (the Heroku contract).
#   env_dir::get ENV_DIR KEY [DEFAULT]   prints the value, or DEFAULT when the var is not set
#   env_dir::export ENV_DIR KEY...       exports each of these keys that is set
#   env_dir::export_all ENV_DIR          exports all but PATH, GIT_DIR, CPATH, CPPATH, LD_PRELOAD,
#                                        LIBRARY_PATH

env_dir::get() {
  local dir=$1 key=$2 default=${3-}
  if [[ -n "$dir" && -f "$dir/$key" ]]; then
    cat "$dir/$key"
  else
    printf '%s' "$default"
  fi
}

env_dir::export() {
  local dir=$1 key
  shift
  for key in "$@"; do
    if [[ -n "$dir" && -f "$dir/$key" ]]; then
      export "$key=$(cat "$dir/$key")"
    fi
  done
}

# env_dir::export_all ENV_DIR: exports every config var except those that would break the build
# host's own tools (the list Heroku's buildpack documentation suggests)
env_dir::export_all() {
  local dir=$1 file key
  [[ -n "$dir" && -d "$dir" ]] || return 0
  for file in "$dir"/*; do
    [[ -f "$file" ]] || continue
    key=${file##*/}
    [[ "$key" =~ ^(PATH|GIT_DIR|CPATH|CPPATH|LD_PRELOAD|LIBRARY_PATH)$ ]] && continue
    [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    export "$key=$(cat "$file")"
  done
}
