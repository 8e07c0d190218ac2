#!/usr/bin/env python3
"""Fails when the crate's modules depend on each other in a circle, or a module reaches up to a
later layer (docs/architecture.md). Reads the `crate::…` and `super::…` paths of src/."""

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Each top-level module's layer; a module may use its own layer and the ones before it.
LAYERS = {
    # 1. vocabulary
    "clock": 1, "config": 1, "crypto": 1, "http": 1, "metrics": 1, "protocol": 1, "telemetry": 1,
    "statements": 1, "store": 1, "timers": 1, "tls": 1, "upstream": 1, "webhook": 1,
    # 2. protocol state and checks
    "records": 2, "clients": 2, "dpop": 2, "client_auth": 2, "client_keys": 2, "federation": 2,
    # 3. endpoints
    "endpoints": 3,
    # 4. serving
    "serve": 4,
    # 5. composition
    "app": 5,
}

PATH = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super)::\{([^}]*)\}")


def module_of(file: Path) -> tuple:
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def main() -> int:
    files = [f for f in SRC.rglob("*.rs") if f.name != "main.rs"]
    modules = {module_of(f): f for f in files}
    edges = {m: set() for m in modules}

    def resolve(start: tuple, segments: list) -> tuple:
        """The longest known module named by a path, or None."""
        best = None
        for n in range(1, len(segments) + 1):
            candidate = start + tuple(segments[:n])
            if candidate in modules:
                best = candidate
        return best

    for module, file in modules.items():
        text = strip_comments(file.read_text())
        # Expand `crate::{a, b::c}` into separate paths.
        text = GROUP.sub(lambda m: " ".join(f"{m.group(1)}::{p.strip()}" for p in m.group(2).split(",")), text)
        for root, rest in PATH.findall(text):
            segments = rest.strip(":").split("::")
            if root == "crate":
                base = ()
            else:
                # `super` in a file names its parent module (the module itself for `mod tests`
                # blocks is close enough: tests use their own module).
                base = module[:-1]
                while segments and segments[0] == "super":
                    segments.pop(0)
                    base = base[:-1]
            target = resolve(base, segments)
            if target is not None and target != module and target[: len(module)] != module:
                edges[module].add(target)

    problems = []
    # Layers: a module never reaches a later layer.
    for module, targets in edges.items():
        if not module:
            continue
        layer = LAYERS.get(module[0])
        if layer is None:
            problems.append(f"src/{'/'.join(module)}: not in a layer (add it to LAYERS)")
            continue
        for target in targets:
            if target and LAYERS.get(target[0], 0) > layer:
                problems.append(f"{'::'.join(module)} (layer {layer}) uses {'::'.join(target)} "
                                f"(layer {LAYERS[target[0]]})")

    # Cycles, between files and between top-level modules.
    def cycles(graph: dict) -> list:
        index, low, on_stack, stack, found = {}, {}, set(), [], []
        counter = [0]

        def visit(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on_stack.add(v)
            for w in graph.get(v, ()):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(component)

        sys.setrecursionlimit(10000)
        for v in list(graph):
            if v not in index:
                visit(v)
        return found

    for component in cycles(edges):
        problems.append("module cycle: " + " -> ".join("::".join(m) for m in sorted(component)))
    top = {}
    for module, targets in edges.items():
        if module:
            top.setdefault(module[0], set()).update(t[0] for t in targets if t and t[0] != module[0])
    for component in cycles(top):
        problems.append("top-level module cycle: " + " -> ".join(sorted(component)))

    edge_count = sum(len(t) for t in edges.values())
    if problems:
        for problem in problems:
            print(f"check-layers: {problem}", file=sys.stderr)
        return 1
    print(f"check-layers: {len(modules)} modules, {edge_count} dependencies, no cycle, layers respected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
