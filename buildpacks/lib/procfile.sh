#!/usr/bin/env bash
# buildpacks/lib/procfile.sh: checks for apps that bring their own executables (the procfile and
# handler buildpacks). Sourced after output.sh.
#   procfile::entries BUILD_DIR          prints "TYPE<tab>COMMAND" per Procfile entry
#   procfile::check_commands BUILD_DIR   checks the program each command starts: an app file must
#                                        exist and be executable (fails otherwise), a bare name
#                                        should be on PATH or in the app's bin/ (warns otherwise)

procfile::entries() {
  local dir=$1
  [[ -f "$dir/Procfile" ]] || return 0
  tr -d '\r' <"$dir/Procfile" |
    sed -n -E 's/^[[:space:]]*([A-Za-z0-9_-]+)[[:space:]]*:[[:space:]]*([^[:space:]].*[^[:space:]]|[^[:space:]])[[:space:]]*$/\1\t\2/p'
}

procfile::check_commands() {
  local dir=$1 type command program failed=0
  while IFS=$'\t' read -r type command; do
    program=${command%% *}
    # a word with a variable or a shell construct is resolved at run time only
    if [[ "$program" == *[\$\`\(\)\;\&\|\<\>=]* || -z "$program" ]]; then
      continue
    fi
    if [[ "$program" == */* ]]; then
      local path=${program#./}
      [[ "$program" == /* ]] || path="$dir/$path"
      if [[ ! -e "$path" ]]; then
        output::error "Procfile: \"$type\" runs $program, which is not in the app." \
          "Commit it, or fix the path in the Procfile (paths are relative to the app root)."
        failed=1
      elif [[ ! -x "$path" || -d "$path" ]]; then
        output::error "Procfile: \"$type\" runs $program, which is not executable." \
          "Make it executable and commit that: git update-index --chmod=+x $program"
        failed=1
      fi
    elif ! PATH="$PATH:$dir/bin" command -v "$program" >/dev/null; then
      output::warn "Procfile: \"$type\" runs \"$program\", which this build host does not have." \
        "It must be installed on every app node, or shipped in the app's bin/."
    fi
  done < <(procfile::entries "$dir")
  return "$failed"
}
