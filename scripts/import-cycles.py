#!/usr/bin/env python3
"""Lists import circles between the modules of each crate (tests excluded).

A module imports another when its code names it (`use crate::a::b`,
`crate::a::f(..)`, `super::x`); `pub use` re-exports and the edges between a
module and its own ancestors (a parent's `mod child;`, a child's `super::*`)
are structure, not imports. Exits 1 when a crate has a circle.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["proto", "server", "worker", "cli", "e2e"]


def modules(src):
    """Module path -> file, for every .rs file under src."""
    found = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            found["::".join(rel)] = os.path.join(dirpath, f)
    return found


def code_of(path):
    text = open(path).read()
    cut = re.search(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))? )?mod tests", text)
    text = text[: cut.start()] if cut else text
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"^\s*pub(\([a-z]+\))? use [^;]*;", "", text, flags=re.M)


def resolve(mods, here, path):
    parts = path.split("::")
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    else:
        base = here.split("::") if here else []
        while parts and parts[0] in ("super", "self"):
            if parts.pop(0) == "super":
                base = base[:-1]
    best = None
    for n in range(len(parts) + 1):
        cand = "::".join(base + parts[:n])
        if cand in mods:
            best = cand
    return best


def edges(mods):
    out = {m: set() for m in mods}
    for m, path in mods.items():
        for ref in re.findall(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", code_of(path)):
            target = resolve(mods, m, ref)
            if target is None or target == m:
                continue
            a, b = m.split("::"), target.split("::")
            if a[: len(b)] == b or b[: len(a)] == a:
                continue  # an ancestor or a descendant: structure
            out[m].add(target)
    return out


def cycles(graph):
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
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
                comps.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return comps


def main():
    bad = False
    for crate in CRATES:
        mods = modules(os.path.join(ROOT, crate, "src"))
        found = cycles(edges(mods))
        for comp in found:
            bad = True
            print(f"{crate}: circle between {', '.join(c or '(root)' for c in comp)}")
        if not found:
            print(f"{crate}: {len(mods)} modules, no import circle")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
