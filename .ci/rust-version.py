#!/usr/bin/env python3
"""Checks that Cargo.toml's rust-version is what the locked dependencies need.

Reads `cargo metadata` (the lock file's versions), walks the root package's
dependency graph, and prints the highest `rust-version` among the crates
each part builds: the library alone (no default features), the binary
(default features), and the tests and benches (dev-dependencies). The
manifest's rust-version must equal the highest of all, since the README's
test command builds every one of them. Exits 1 otherwise.
"""
import json
import subprocess
import sys


def metadata(*args):
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", *args],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def version_key(v):
    return tuple(int(x) for x in (v or "0").split("."))


def highest(meta, kinds):
    """Highest rust-version over crates reachable from the root through
    dependencies of `kinds` at the first step, then normal/build ones."""
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    seen, stack = set(), []
    for dep in nodes[root]["deps"]:
        if any(k["kind"] in kinds for k in dep["dep_kinds"]):
            stack.append(dep["pkg"])
    while stack:
        pkg = stack.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        for dep in nodes[pkg]["deps"]:
            if any(k["kind"] in (None, "build") for k in dep["dep_kinds"]):
                stack.append(dep["pkg"])
    crates = [packages[p] for p in seen if packages[p]["source"]]
    top = max(crates, key=lambda p: version_key(p.get("rust_version")))
    return top.get("rust_version"), f"{top['name']} {top['version']}"


def main():
    full = metadata()
    lean = metadata("--no-default-features")
    parts = {
        "library (--no-default-features)": highest(lean, (None, "build")),
        "binary (default features)": highest(full, (None, "build")),
        "tests and benches": highest(full, (None, "build", "dev")),
    }
    need = max((v for v, _ in parts.values()), key=version_key)
    root = next(p for p in full["packages"] if p["id"] == full["resolve"]["root"])
    have = root.get("rust_version")
    for part, (version, crate) in parts.items():
        print(f"{part}: needs {version} ({crate})")
    print(f"Cargo.toml says rust-version = {have}")
    if version_key(have) != version_key(need):
        print(f"rust-version should be {need}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
