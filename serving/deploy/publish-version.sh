#!/usr/bin/env bash
# Publishes one pushed model version onto TF Serving's model volume so that the server never loads half of it:
#   serving/deploy/publish-version.sh SRC_VERSION_DIR DEST_BASE
# SRC_VERSION_DIR: a pushed version, <output_root>/serving/<model_name>/<version>/ (its name an integer);
# DEST_BASE: the volume's <model_name> directory (what TF Serving mounts as /models/<model_name>), as mounted here.
# TF Serving loads only directories named by an integer: the copy goes to DEST_BASE/.tmp-<version>-<pid>, every
# file and directory is flushed to disk, then one rename on the same file system makes the whole version appear.
# Files end up world-readable (the server runs as a non-root uid of its own). Checked in, not generated; GNU
# coreutils (sync with file arguments). Exit 2: bad arguments, 1: the version exists or the copy failed.
set -euo pipefail
usage="usage: publish-version.sh SRC_VERSION_DIR DEST_BASE"
[ $# -eq 2 ] || { echo "$usage" >&2; exit 2; }
src=${1%/}
dest=${2%/}
version=$(basename -- "$src")
if ! [[ $version =~ ^[0-9]+$ ]]; then
  echo "error: $src: a version directory is named by an integer, got '$version'" >&2; exit 2
fi
if [ ! -f "$src/saved_model.pb" ]; then
  echo "error: $src: no saved_model.pb, not a pushed version" >&2; exit 2
fi
if [ ! -d "$dest" ]; then
  echo "error: $dest: no such directory (the model volume's <model_name> directory)" >&2; exit 2
fi
if [ -e "$dest/$version" ]; then
  echo "error: $dest/$version exists: a published version is never replaced (push a new one)" >&2; exit 1
fi
tmp="$dest/.tmp-$version-$$"
trap 'rm -rf -- "$tmp"' EXIT  # a failed copy leaves nothing; one killed by SIGKILL leaves a .tmp-* TF Serving ignores
umask 022
cp -R -- "$src" "$tmp"
chmod -R a+rX -- "$tmp"
find "$tmp" -depth -exec sync -- {} +  # each file's data, then each directory's entries
# rename(2): atomic, and it fails rather than merge if another publish of this version got there first.
mv -T -- "$tmp" "$dest/$version"
sync -- "$dest"
echo "published $dest/$version"
