#!/usr/bin/env python3
"""The shape of the code: files too long, functions too long, blocks written twice.

Reports, and exits 1 when it finds any:
- a Rust file of src/, tests/ or benches/ over 600 lines;
- a function over 120 lines outside the CPU kernels (src/engine/cpu);
- a block of six or more lines that appears twice within src/ (kernels aside) or twice
  within tests/ (benches/ count as tests): lines compared with their indentation
  stripped; blank lines, comments, `use`/`mod` lines and the parameter lists of functions
  (a trait's implementations repeat its declarations) left out; blocks made mostly of
  closing brackets and the like ignored.

Usage: scripts/code-shape.py [--max-file N] [--max-fn N] [--min-block N]
"""

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = "src/engine/cpu/"


def rust_files(*dirs):
    for d in dirs:
        for dirpath, _, names in os.walk(os.path.join(ROOT, d)):
            for name in sorted(names):
                if name.endswith(".rs"):
                    path = os.path.join(dirpath, name)
                    yield os.path.relpath(path, ROOT).replace(os.sep, "/")


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read().split("\n")


FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"\w+\"\s+)?fn\s+(\w+)")


def functions(lines):
    """(name, first line, length) of every function with a body, nested ones too."""
    out = []
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        # the body starts at the first `{` at depth 0 after the signature; a `;` first means
        # a declaration without a body (trait methods)
        depth, j, started = 0, i, False
        while j < len(lines):
            code = re.sub(r"//.*", "", lines[j])
            code = re.sub(r'"([^"\\]|\\.)*"', '""', code)
            code = re.sub(r"'([^'\\]|\\.)'", "' '", code)
            for ch in code:
                if ch == "{":
                    depth += 1
                    started = True
                elif ch == "}":
                    depth -= 1
                elif ch == ";" and not started and depth == 0:
                    j = -1
                    break
            if j < 0 or (started and depth <= 0):
                break
            j += 1
        if j >= 0 and started:
            out.append((m.group(7), i + 1, j - i + 1))
    return out


TRIVIAL = re.compile(r"^[\s\)\]\}\{\(,;.?]*$|^(Ok\(\(\)\)|None|\.\.|else|_ => \{\}|\},?|\)\?;|\}\)|\}\);|\.\.Default::default\(\)|\.collect\(\)[;,]?)$")


# Import lists name what a file uses; two files that use the same things repeat no logic.
IMPORT = re.compile(r"^(pub(\([^)]*\))?\s+)?(use|mod)\s")


def normalized(lines):
    """(line number, normalized text) of the lines that count, comments and blanks out."""
    out = []
    in_block_comment = False
    in_signature = False
    for n, line in enumerate(lines, 1):
        text = line.strip()
        # A function's parameter list spread over lines: a trait's implementations repeat
        # its declaration, and that is no repeated logic.
        if in_signature:
            in_signature = not text.startswith(")")
            continue
        if FN.match(line) and text.endswith("("):
            in_signature = True
            continue
        if in_block_comment:
            if "*/" in text:
                in_block_comment = False
            continue
        if text.startswith("/*"):
            in_block_comment = "*/" not in text
            continue
        if not text or text.startswith("//"):
            continue
        if IMPORT.match(text):
            continue
        out.append((n, text))
    return out


def repeated_blocks(files, min_block):
    """Runs of at least `min_block` counted lines that appear more than once in `files`,
    as `a:first-last repeats at b:first-last`."""
    lines = {rel: normalized(read(rel)) for rel in files}
    seen = {}
    for rel, counted in lines.items():
        for k in range(len(counted) - min_block + 1):
            texts = tuple(t for _, t in counted[k:k + min_block])
            # a block worth reporting has real statements in it, not only brackets
            if sum(1 for t in texts if not TRIVIAL.match(t) and len(t) > 3) < min_block - 1:
                continue
            seen.setdefault(texts, []).append((rel, k))
    # each pair of places where a window repeats, then consecutive windows merged
    pairs = set()
    for places in seen.values():
        for i, a in enumerate(places):
            for b in places[i + 1:]:
                pairs.add((a, b))
    out = []
    for (ra, ka), (rb, kb) in sorted(pairs):
        if ((ra, ka - 1), (rb, kb - 1)) in pairs:
            continue  # inside a run that started earlier
        n = 1
        while ((ra, ka + n), (rb, kb + n)) in pairs:
            n += 1
        a, b = lines[ra], lines[rb]
        last = min_block - 1 + n - 1
        out.append(
            f"{ra}:{a[ka][0]}-{a[ka + last][0]} repeats at {rb}:{b[kb][0]}-{b[kb + last][0]}"
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-file", type=int, default=600)
    parser.add_argument("--max-fn", type=int, default=120)
    parser.add_argument("--min-block", type=int, default=6)
    args = parser.parse_args()
    problems = []
    src = list(rust_files("src"))
    tests = list(rust_files("tests", "benches"))
    for rel in src + tests:
        lines = read(rel)
        count = len(lines) - (1 if lines and lines[-1] == "" else 0)
        if count > args.max_file:
            problems.append(f"{rel}: {count} lines (over {args.max_file})")
        if rel.startswith(KERNELS):
            continue
        for name, line, length in functions(lines):
            if length > args.max_fn:
                problems.append(f"{rel}:{line}: fn {name} is {length} lines (over {args.max_fn})")
    for group in ([r for r in src if not r.startswith(KERNELS)], tests):
        for report in repeated_blocks(group, args.min_block):
            problems.append("repeated block: " + report)
    for p in problems:
        print(p)
    if problems:
        return 1
    print(
        f"code shape: {len(src) + len(tests)} files, none over {args.max_file} lines, "
        f"no function over {args.max_fn} lines outside {KERNELS}, "
        f"no block of {args.min_block} lines repeated"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
