#!/usr/bin/env python3
"""Checks Atom's layering: no file includes a header of a layer above its own.

Every source file belongs to a module: src/<module>/, tests/<module>/ and bench/<module>/ belong to
<module> (backend/cpu and backend/cuda are modules of their own); tools/, tests/integration/ and tests/fuzz/ sit on top.
A file may include headers of its own module and of modules in lower layers, never of a higher layer nor
of another module of its own layer. Quoted includes are resolved against src/ and the including file's
folder; one that resolves to nothing is an error too (a stale path after a move). The atom_module() calls
of CMakeLists.txt must link only lower layers as well.

Usage: check_layers.py [--self-test] [ROOT]   (exit status 1 on a violation)
"""
import os
import re
import sys
import tempfile

# Lowest layer first; modules on one line are peers (neither may include the other).
LAYERS = [
    ["common"],
    ["io"],
    ["tokenizer", "format"],
    ["model"],
    ["dist"],
    ["backend/cpu"],
    ["backend/cuda"],
    ["quant"],
    ["engine"],
    ["eval", "server"],
    ["tools"],
]
LAYER_OF = {m: i for i, mods in enumerate(LAYERS) for m in mods}
SCANNED = ["src", "tests", "bench", "tools"]
EXTENSIONS = (".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def module_of(rel):
    """The module of a path relative to the root (None: not part of any module)."""
    parts = rel.split("/")
    if parts[0] == "tools" or parts[:2] in (["tests", "integration"], ["tests", "fuzz"]):
        return "tools"
    if parts[0] not in ("src", "tests", "bench") or len(parts) < 3:
        return None
    two = "/".join(parts[1:3])
    if two in LAYER_OF:
        return two
    return parts[1] if parts[1] in LAYER_OF else None


def allowed(src_mod, dst_mod):
    return src_mod == dst_mod or LAYER_OF[dst_mod] < LAYER_OF[src_mod]


def check_includes(root):
    errors = []
    for top in SCANNED:
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if not name.endswith(EXTENSIONS):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                src_mod = module_of(rel)
                if src_mod is None:
                    errors.append(f"{rel}: not in any module of the layer list (scripts/check_layers.py)")
                    continue
                with open(path, encoding="utf-8", errors="replace") as f:
                    for lineno, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        inc = m.group(1)
                        target = None
                        for base in (dirpath, os.path.join(root, "src")):
                            cand = os.path.normpath(os.path.join(base, inc))
                            if os.path.isfile(cand):
                                target = os.path.relpath(cand, root).replace(os.sep, "/")
                                break
                        if target is None:
                            errors.append(f"{rel}:{lineno}: #include \"{inc}\" resolves to no file")
                            continue
                        dst_mod = module_of(target)
                        if dst_mod is None:
                            errors.append(f"{rel}:{lineno}: #include \"{inc}\" is in no module")
                        elif not allowed(src_mod, dst_mod):
                            errors.append(
                                f"{rel}:{lineno}: {src_mod} (layer {LAYER_OF[src_mod]}) includes \"{inc}\" of "
                                f"{dst_mod} (layer {LAYER_OF[dst_mod]})")
    return errors


def check_cmake(root):
    """atom_module(<name> <dir> deps...): every atom_* dependency must be a lower layer."""
    errors = []
    path = os.path.join(root, "CMakeLists.txt")
    if not os.path.isfile(path):
        return errors
    text = open(path, encoding="utf-8").read()
    target_mod = {}
    calls = re.findall(r"^\s*atom_module\(([^)]*)\)", text, re.M)
    for call in calls:
        args = call.split()
        if len(args) >= 2:
            target_mod["atom_" + args[0]] = args[1]
    target_mod["atom_backend_cuda"] = "backend/cuda"
    target_mod["atom_quant_cuda"] = "quant"  # src/quant/cuda: the quantizer's GPU backend
    links = [("atom_" + c.split()[0], c.split()[2:]) for c in calls if len(c.split()) >= 2]
    links += [(t, args.split()) for t, args in
              re.findall(r"target_link_libraries\((atom_\w+)\s+PUBLIC\s+([^)]*)\)", text)]
    for name, deps in links:
        mod = target_mod.get(name)
        if mod is None or mod not in LAYER_OF:
            errors.append(f"CMakeLists.txt: target {name} is not in the layer list")
            continue
        for d in deps:
            dmod = target_mod.get(d)
            if dmod is not None and not allowed(mod, dmod):
                errors.append(f"CMakeLists.txt: {name} ({mod}) links {d} ({dmod}), not a lower layer")
    return errors


def self_test():
    """A planted violation must be caught, and a legal tree must pass."""
    with tempfile.TemporaryDirectory() as root:
        def write(rel, text):
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as f:
                f.write(text)
        write("src/common/error.h", "#pragma once\n")
        write("src/io/gguf.h", '#pragma once\n#include "common/error.h"\n')
        write("src/engine/engine.h", '#pragma once\n#include "io/gguf.h"\n')
        write("src/format/format.h", "#pragma once\n")
        write("tests/io/test_gguf.cpp", '#include "io/gguf.h"\n')
        write("CMakeLists.txt", "atom_module(common common)\natom_module(io io atom_common)\n")
        ok = check_includes(root) + check_cmake(root)
        assert not ok, f"self-test: a legal tree was refused: {ok}"
        write("src/io/gguf.h", '#pragma once\n#include "engine/engine.h"\n')    # io includes a higher layer
        write("src/tokenizer/bpe.h", '#include "format/format.h"\n')            # a peer of its layer
        write("tests/io/test_gguf.cpp", '#include "io/gone.h"\n')               # a stale path
        write("CMakeLists.txt", "atom_module(common common atom_io)\natom_module(io io)\n")
        bad = check_includes(root) + check_cmake(root)
        for needle in ('src/io/gguf.h:2: io (layer 1) includes "engine/engine.h"', "src/tokenizer/bpe.h:1",
                       "tests/io/test_gguf.cpp:1", "atom_common (common) links atom_io"):
            assert any(needle in e for e in bad), f"self-test: violation not caught: {needle}\n{bad}"
    print("check_layers self-test: planted violations caught")


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if "--self-test" in argv:
        self_test()
    root = os.path.abspath(args[0] if args else os.path.join(os.path.dirname(__file__), ".."))
    errors = check_includes(root) + check_cmake(root)
    for e in errors:
        print(e)
    if errors:
        print(f"{len(errors)} layering violation(s); layers, lowest first: " +
              " -> ".join(", ".join(m) for m in LAYERS))
        return 1
    print("layering OK: " + " -> ".join(", ".join(m) for m in LAYERS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
