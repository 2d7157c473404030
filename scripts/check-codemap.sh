#!/usr/bin/env bash
# Checks ARCHITECTURE.md's codemap against the tree: every path it names exists, and every
# source file git tracks or would track (*.rs, *.proto, scripts/*) is named in it. Run by
# .ci/run.
#
# How the codemap is read (the fenced block under "## Codemap"):
# - An entry line starts with its names (indented 0-6 spaces; several names separated by
#   single spaces), then two or more spaces and a description. Lines indented further continue
#   the description of the entry above.
# - The first name of an entry is relative to the directory of the nearest less-indented entry
#   above it (the entry itself when it ends in `/`, else the directory holding it), or to the
#   repository root; further names on the line are relative to the first one's directory.
# - A file name in a description (`*.rs`, `*.proto`, `*.sh`, `*.py`; `*` globs allowed) is
#   relative to the entry's directory, or to the repository root.
# Exits 1 listing every missing path and every unnamed file.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import fnmatch, os, re, subprocess, sys
from pathlib import PurePosixPath as P

text = open("ARCHITECTURE.md", encoding="utf-8").read()
m = re.search(r"^## Codemap\n.*?^```\n(.*?)^```", text, re.S | re.M)
if not m:
    sys.exit("check-codemap: no fenced codemap under '## Codemap' in ARCHITECTURE.md")
# Files git tracks or would track (untracked but not ignored), as they are on disk now.
listed = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    capture_output=True, text=True, check=True,
).stdout
files = sorted({f for f in listed.split("\0") if f and os.path.isfile(f)})
dirs = {str(p) for f in files for p in P(f).parents if str(p) != "."}
sources = [f for f in files if f.endswith((".rs", ".proto")) or f.startswith("scripts/")]

FILE_TOKEN = re.compile(r"(?<![\w./*-])([\w.*-]+(?:/[\w.*-]+)*\.(?:rs|proto|sh|py))\b")
named, missing = set(), []


def resolve(name, bases):
    """Tracked files or directories `name` (a glob when it has `*`) stands for, tried against
    each base in turn; the first base that yields anything wins."""
    is_dir = name.endswith("/")
    name = name.rstrip("/")
    for base in bases:
        path = str(P(base) / name) if base else name
        if "*" in path:
            hits = [f for f in files if fnmatch.fnmatchcase(f, path)]
        elif is_dir:
            hits = [path] if path in dirs else []
        else:
            hits = [path] if path in files else []
        if hits:
            return hits
    return []


stack = []  # (indent, directory) of the entries above
last_dir = ""  # directory an entry's description is relative to
for lineno, line in enumerate(m.group(1).splitlines(), 1):
    if not line.strip():
        continue
    indent = len(line) - len(line.lstrip(" "))
    desc = line
    if indent <= 6:
        names_part, _, desc = line.strip().partition("  ")
        names = names_part.split(" ")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        first = resolve(names[0], [parent, ""])
        if not first:
            missing.append(f"codemap line {lineno}: `{names[0]}` (under `{parent or '.'}`) does not exist")
            continue
        named.update(first)
        here = first[0] if names[0].endswith("/") else str(P(first[0]).parent)
        stack.append((indent, here))
        last_dir = here
        for n in names[1:]:
            hits = resolve(n, [here, ""])
            if not hits:
                missing.append(f"codemap line {lineno}: `{n}` (beside `{names[0]}`) does not exist")
            named.update(hits)
    for tok in FILE_TOKEN.findall(desc):
        hits = resolve(tok, [last_dir, ""])
        if not hits:
            missing.append(f"codemap line {lineno}: `{tok}` (in the description, under `{last_dir or '.'}`) does not exist")
        named.update(hits)

unnamed = [f for f in sources if f not in named]
for msg in missing:
    print(msg)
for f in unnamed:
    print(f"not in the codemap: {f}")
if missing or unnamed:
    print(f"check-codemap: {len(missing)} missing path(s), {len(unnamed)} unnamed source file(s)")
    sys.exit(1)
print(f"check-codemap: {len(sources)} source files named, every codemap path exists")
PY
