#!/usr/bin/env python3
"""The import graph of src/: who uses whom, drawn, and checked.

Reads every `use crate::…`, `use super::…` and inline `crate::…`/`super::…`/`self::…` path
of src/ (comments and strings left out), resolves each to the file that defines the item
(following `pub use` re-exports, so `crate::engine::Shard` is engine/shard.rs, not
engine/mod.rs), and writes:

- docs/import-graph.dot: the folders of src/ as layers, an arrow per folder that imports
  another, labelled with how many imports it carries;
- docs/import-graph-files.dot: every file, grouped by folder, an arrow per import;
- the two as .svg beside them when Graphviz's `dot` is installed.

It fails (exit 1, naming each offender) when an import runs from a lower layer to a higher
one (LAYERS below, lowest first: a folder may use only folders listed before it), when
files form a loop, when the layout section of src/lib.rs does not list every folder in
layer order, or, with --check, when the committed docs/import-graph*.dot no longer match
the code (the test suite runs `--check`, so the picture cannot drift).

Usage: scripts/import-graph.py [--check] [--root DIR]   (DIR: another checkout to read)
"""

import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--root" in sys.argv[1:]:
    ROOT = os.path.abspath(sys.argv[sys.argv.index("--root") + 1])
SRC = os.path.join(ROOT, "src")
DOCS = os.path.join(ROOT, "docs")

# The layers, lowest first. A folder may import only from folders before it (and from
# itself). Every top-level module of src/ must be listed.
LAYERS = [
    "resource",  # the lifecycle pattern; knows nothing of models or networks
    "faults",  # faults on demand for tests and chaos runs (a leaf)
    "metrics",  # histograms and the Prometheus text format
    "listener",  # accepting connections: caps, timeouts, keepalive, the open-file limit
    "trust",  # the cluster key, sealed datagrams, mutual TLS
    "catalog",  # known models, their files, fetching
    "engine",  # the sharded model, tokenizers, batching (a leaf above catalog)
    "topology",  # capabilities and partitioning
    "proto",  # wire types and every conversion to and from them
    "server",  # the gRPC node service and the handler it serves
    "peer",  # a gRPC handle per peer
    "discovery",  # UDP / manual discovery and the peer table
    "supply",  # weights from peers or the Hub
    "node",  # identity and the request flow across the ring
    "api",  # the HTTP API
    "app",  # the assembly of a node
    "cli",  # the commands
]

# Files outside the layers: the crate root only declares modules.
UNLAYERED = {"lib.rs"}


def strip_comments_and_strings(text):
    """The code with comments, string and char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        m = re.match(r'b?r(#*)"', text[i:i + 40])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            close = '"' + m.group(1)
            j = text.find(close, i + m.end())
            j = n if j < 0 else j + len(close)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
            continue
        if c == "'":
            m = re.match(r"'(\\(x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'])'", text[i:i + 12])
            if m:
                out.append("' '")
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def module_of(rel):
    """src-relative file path -> module path tuple (lib.rs is the crate root)."""
    parts = rel[:-3].split("/")
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


class File:
    def __init__(self, rel, text):
        self.rel = rel
        self.module = module_of(rel)
        self.text = text
        self.code = strip_comments_and_strings(text)
        # (start, end, name) of inline `mod name { … }` blocks
        self.inline = []
        for m in re.finditer(r"\bmod\s+(\w+)\s*\{", self.code):
            depth, j = 1, m.end()
            while j < len(self.code) and depth:
                depth += {"{": 1, "}": -1}.get(self.code[j], 0)
                j += 1
            self.inline.append((m.start(), j, m.group(1)))
        self.children = set(re.findall(r"\bmod\s+(\w+)\s*;", self.code))

    def module_at(self, pos):
        path = list(self.module)
        for start, end, name in sorted(self.inline):
            if start <= pos < end:
                path.append(name)
        return tuple(path)


def expand_use_tree(tree):
    """`a::{b, c::{d as e}, f::*}` -> [(['a','b'], 'b'), (['a','c','d'], 'e'), (['a','f','*'], '*')]"""
    tree = re.sub(r"\s+", "", tree)
    results = []

    def walk(prefix, s):
        # split s at top-level commas
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            parts.append(cur)
        for part in parts:
            brace = part.find("{")
            if brace >= 0:
                head = part[:brace].rstrip(":")
                walk(prefix + ([p for p in head.split("::") if p]), part[brace + 1:-1])
                continue
            path, alias = part, None
            if "@AS@" in part:
                path, alias = part.split("@AS@")
            segs = [p for p in path.split("::") if p]
            if segs and segs[-1] == "self":
                segs = segs[:-1]
            name = alias or (segs[-1] if segs else "")
            results.append((prefix + segs, name))

    walk([], tree)
    return results


def parse_uses(code):
    """Every `use` declaration: (pos, is_reexport, [(segments, bound name)])."""
    uses = []
    for m in re.finditer(r"(\bpub(\s*\([^)]*\))?\s+)?\buse\s+([^;]+);", code):
        tree = m.group(3)
        # `x as y` survives the whitespace squeeze as `x@AS@y`
        items = expand_use_tree(re.sub(r"\s+as\s+", "@AS@", tree))
        uses.append((m.start(), m.end(), bool(m.group(1)), items))
    return uses


class Graph:
    def __init__(self):
        self.files = {}
        for dirpath, _, names in os.walk(SRC):
            for name in sorted(names):
                if not name.endswith(".rs"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), SRC).replace(os.sep, "/")
                if rel == "main.rs":
                    continue  # the binary: a thin caller of the library
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    self.files[rel] = File(rel, f.read())
        # module path -> file defining it (inline modules map to their file)
        self.modules = {}
        for f in self.files.values():
            self.modules[f.module] = f
            for _, _, name in f.inline:
                self.modules.setdefault(f.module + (name,), f)
        # module path -> {name: (segments resolved absolute, is_reexport)}; globs under '*'
        self.bindings = {}
        self.file_uses = {}
        for f in self.files.values():
            uses = parse_uses(f.code)
            self.file_uses[f.rel] = uses
            for start, _, reexport, items in uses:
                here = f.module_at(start)
                for segs, name in items:
                    absolute = self.absolute(here, segs)
                    if absolute is None:
                        continue
                    table = self.bindings.setdefault(here, {})
                    if name == "*":
                        table.setdefault("*", []).append(absolute[:-1])
                    else:
                        table[name] = absolute

    def is_module(self, path):
        return path in self.modules

    def absolute(self, here, segs):
        """A use path made absolute (a tuple from the crate root), or None for other crates."""
        if not segs:
            return None
        head = segs[0]
        if head == "crate":
            return tuple(segs[1:])
        if head == "self":
            return here + tuple(segs[1:])
        if head == "super":
            cur = list(here)
            i = 0
            while i < len(segs) and segs[i] == "super":
                cur = cur[:-1]
                i += 1
            return tuple(cur) + tuple(segs[i:])
        if self.is_module(here + (head,)):
            return here + tuple(segs)
        return None  # another crate (std, tokio, …) or a local item

    def resolve(self, path, seen=None):
        """The file that defines what an absolute path names, or None."""
        seen = seen or set()
        if path in seen:
            return None
        seen.add(path)
        cur = ()
        for i, seg in enumerate(path):
            if self.is_module(cur + (seg,)):
                cur = cur + (seg,)
                continue
            table = self.bindings.get(cur, {})
            if seg in table:
                return self.resolve(table[seg] + tuple(path[i + 1:]), seen)
            for glob in table.get("*", []):
                target = self.resolve(glob + (seg,) + tuple(path[i + 1:]), seen)
                if target is not None and target is not self.modules.get(glob):
                    return target
            return self.modules.get(cur)
        return self.modules.get(cur)

    def edges(self):
        """(from file, to file) -> count of imports, self-imports left out."""
        counts = {}

        def add(f, target):
            if target is not None and target is not f:
                key = (f.rel, target.rel)
                counts[key] = counts.get(key, 0) + 1

        for f in self.files.values():
            uses = self.file_uses[f.rel]
            code = f.code
            # use declarations: an edge per imported item (re-exports and module imports
            # name things; whoever uses them gets the edge)
            for start, _, reexport, items in uses:
                here = f.module_at(start)
                for segs, name in items:
                    absolute = self.absolute(here, segs)
                    if absolute is None or reexport:
                        continue
                    if name == "*":
                        target_mod = absolute[:-1]
                        add(f, self.modules.get(target_mod))
                        continue
                    if self.is_module(absolute):
                        continue
                    add(f, self.resolve(absolute))
            # inline paths outside use declarations
            blanked = list(code)
            for start, end, _, _ in uses:
                blanked[start:end] = " " * (end - start)
            blanked = "".join(blanked)
            for m in re.finditer(r"(?<![\w:$])((?:\w+::)+\w+)", blanked):
                segs = m.group(1).split("::")
                here = f.module_at(m.start())
                absolute = self.absolute(here, segs)
                if absolute is None:
                    # a local binding of a module: `sampling::X` after `use …::sampling;`
                    table = self.bindings.get(here, {})
                    bound = table.get(segs[0])
                    if bound is None and here != f.module:
                        bound = self.bindings.get(f.module, {}).get(segs[0])
                    if bound is None or not self.is_module(bound):
                        continue
                    absolute = bound + tuple(segs[1:])
                if self.is_module(absolute):
                    continue
                add(f, self.resolve(absolute))
        return counts


def top(rel):
    return rel.split("/")[0] if "/" in rel else rel[:-3]


def find_cycles(nodes, edges):
    """Strongly connected components of more than one node (Tarjan)."""
    graph = {n: [] for n in nodes}
    for a, b in edges:
        graph[a].append(b)
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layers_dot(edges):
    folders = {}
    for (a, b), n in edges.items():
        ta, tb = top(a), top(b)
        if ta != tb and a not in UNLAYERED:
            folders[(ta, tb)] = folders.get((ta, tb), 0) + n
    lines = [
        "// Generated by scripts/import-graph.py: do not edit.",
        "// The folders of src/, lowest layer at the top; an arrow is an import, labelled",
        "// with how many imports it carries.",
        "digraph layers {",
        '  rankdir=BT; node [shape=box, style="rounded,filled", fillcolor="#eef3fb", '
        'fontname="Helvetica"]; edge [color="#607090", fontname="Helvetica", fontsize=9];',
    ]
    for i, name in enumerate(LAYERS):
        lines.append(f'  "{name}" [label="{i}. {name}"];')
    for (a, b), n in sorted(folders.items()):
        lines.append(f'  "{a}" -> "{b}" [label="{n}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def files_dot(files, edges):
    lines = [
        "// Generated by scripts/import-graph.py: do not edit.",
        "// Every file of src/ grouped by folder; an arrow is an import.",
        "digraph files {",
        '  rankdir=LR; newrank=true; node [shape=box, fontname="Helvetica", fontsize=9]; '
        'edge [color="#60709060", arrowsize=0.5];',
    ]
    groups = {}
    for rel in sorted(files):
        groups.setdefault(os.path.dirname(rel) or ".", []).append(rel)
    for group, members in sorted(groups.items()):
        if group == ".":
            for rel in members:
                lines.append(f'  "{rel}";')
            continue
        cid = group.replace("/", "_")
        lines.append(f'  subgraph "cluster_{cid}" {{ label="{group}/"; fontname="Helvetica";')
        for rel in members:
            lines.append(f'    "{rel}" [label="{os.path.basename(rel)}"];')
        lines.append("  }")
    for a, b in sorted(edges):
        lines.append(f'  "{a}" -> "{b}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    g = Graph()
    edges = g.edges()
    problems = []
    rank = {name: i for i, name in enumerate(LAYERS)}
    for rel in g.files:
        if rel not in UNLAYERED and top(rel) not in rank:
            problems.append(f"{rel}: folder {top(rel)!r} is in no layer (LAYERS in {__file__})")
    for (a, b), n in sorted(edges.items()):
        if a in UNLAYERED:
            continue
        ta, tb = top(a), top(b)
        if ta in rank and tb in rank and rank[tb] > rank[ta]:
            problems.append(f"upward import: {a} ({ta}) uses {b} ({tb}), a higher layer")
    for cycle in find_cycles(list(g.files), edges):
        problems.append("files form a loop: " + " ↔ ".join(cycle))
    listed = re.findall(r"^//! - \[`(\w+)`\]", g.files["lib.rs"].text, re.M) if "lib.rs" in g.files else []
    if listed != LAYERS:
        problems.append(
            f"src/lib.rs's layout section lists {listed}; every folder, in layer order, is {LAYERS}"
        )
    outputs = {
        os.path.join(DOCS, "import-graph.dot"): layers_dot(edges),
        os.path.join(DOCS, "import-graph-files.dot"): files_dot(g.files, edges),
    }
    for path, text in outputs.items():
        if check:
            try:
                with open(path, encoding="utf-8") as f:
                    current = f.read()
            except FileNotFoundError:
                current = None
            if current != text:
                problems.append(
                    f"{os.path.relpath(path, ROOT)} is stale: run scripts/import-graph.py"
                )
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            if shutil.which("dot"):
                subprocess.run(["dot", "-Tsvg", path, "-o", path[:-4] + ".svg"], check=True)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"import graph: {len(g.files)} files, {len(edges)} imports, no upward import, no loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
