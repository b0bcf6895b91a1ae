#!/usr/bin/env bash
# buildpacks/lib/output.sh: Heroku-style build output, sourced by every shipped buildpack.
#   output::step "Installing"    ->  "-----> Installing"         (stdout)
#   output::info "detail"        ->  "       detail"             (stdout)
#   output::warn "text" ...      ->  " !     text" per argument  (stderr)
#   output::error "text" ...     ->  " !     text" per argument  (stderr)
#   cmd | output::indent         ->  each line indented 7 spaces, streamed (not buffered)

output::step() {
  echo "-----> $*"
}

output::info() {
  echo "       $*"
}

output::warn() {
  local line
  for line in "$@"; do echo " !     $line" >&2; done
}

output::error() {
  local line
  echo >&2
  for line in "$@"; do echo " !     $line" >&2; done
  echo >&2
}

output::indent() {
  # -u: tool output must reach the pusher as it happens, not when sed's buffer fills
  sed -u 's/^/       /'
}
