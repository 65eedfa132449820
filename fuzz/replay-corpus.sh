#!/bin/sh
# Replays the fuzz corpus through the dispatcher (part of `make check`).
set -eu
exec "${top_builddir:-.}/fuzz/dispatch_replay" "${top_srcdir:-.}/fuzz/corpus"
