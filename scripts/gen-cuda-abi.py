#!/usr/bin/env python3
"""Generates cuda-abi/ (crate gpuslice-cuda-abi) from NVIDIA's headers.

Run by scripts/gen-cuda-abi.sh, which fetches and unpacks the wheels that carry the headers.
One libclang reads cuda.h, cudaTypedefs.h (with the interop headers cudaGL.h, cudaGLTypedefs.h,
cudaVDPAU.h and cudaVDPAUTypedefs.h, over stand-ins for <GL/gl.h> and <vdpau/vdpau.h>) and
nvml.h; from what it reads come

  cuda-abi/src/cuda.rs       bindgen's Rust of cuda.h + cudaTypedefs.h (13.x, internal sections),
                             then `sym`: one function-pointer type per exported driver symbol
  cuda-abi/src/nvml.rs       bindgen's Rust of nvml.h, then `sym` for NVML's exported functions
  cuda-abi/src/table.rs      the (base name, CUDA version, per-thread) -> exported symbol table
  cuda-abi/include/gpuslice_cuda_abi.h
                             the same types, constants, prototypes and table for C

The table is derived, never typed: every PFN_<base>_v<version>[_ptds|_ptsz] typedef of each
cudaTypedefs.h is matched, by canonical signature, against the functions cuda.h declares as
base, base_vN, base[_vN]_ptds/_ptsz in its three configurations (default, per-thread default
stream, and __CUDA_API_VERSION_INTERNAL, which declares the old variants under their exported
names). A typedef that matches no declaration, or whose match cannot be decided, stops the run.
"""

import argparse
import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile

import clang.cindex as ci

K = ci.CursorKind
T = ci.TypeKind


def die(msg):
    print(f"gen-cuda-abi: {msg}", file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

MODES = {
    "default": [],
    "ptds": ["CUDA_API_PER_THREAD_DEFAULT_STREAM"],
    "internal": ["__CUDA_API_VERSION_INTERNAL"],
}


# The interop headers (cudaGL.h, cudaVDPAU.h) include <GL/gl.h> and <vdpau/vdpau.h> for a few
# types; these stand-ins give them with the C types the real headers give (all 32-bit handles or
# enums), and an opaque VdpGetProcAddress, which the driver only receives as a pointer.
STUBS = {
    "GL/gl.h": "#pragma once\ntypedef unsigned int GLuint;\ntypedef unsigned int GLenum;\n",
    "vdpau/vdpau.h": (
        "#pragma once\n#include <stdint.h>\n"
        "typedef uint32_t VdpDevice;\n"
        "typedef uint32_t VdpVideoSurface;\n"
        "typedef uint32_t VdpOutputSurface;\n"
        "typedef uint32_t VdpChromaType;\n"
        "typedef uint32_t VdpRGBAFormat;\n"
        "typedef struct VdpGetProcAddress VdpGetProcAddress;\n"
    ),
}
STUB_DIR = os.path.join(tempfile.mkdtemp(prefix="gen-cuda-abi-"), "gpuslice-stubs")
for _name, _text in STUBS.items():
    os.makedirs(os.path.dirname(os.path.join(STUB_DIR, _name)), exist_ok=True)
    with open(os.path.join(STUB_DIR, _name), "w") as _f:
        _f.write(_text)
atexit.register(shutil.rmtree, os.path.dirname(STUB_DIR), True)

# What a release's driver API is read from, and the files its declarations come from.
CUDA_SOURCE = "#include <cudaTypedefs.h>\n#include <cudaGLTypedefs.h>\n#include <cudaVDPAUTypedefs.h>\n"
CUDA_FILES = ("cuda.h", "cudaTypedefs.h", "cudaGL.h", "cudaGLTypedefs.h", "cudaVDPAU.h", "cudaVDPAUTypedefs.h")


def parse(include, source, defines, detailed=False):
    args = ["-x", "c", "-std=c11", f"-I{include}", f"-I{STUB_DIR}"] + [f"-D{d}" for d in defines]
    opts = ci.TranslationUnit.PARSE_SKIP_FUNCTION_BODIES
    if detailed:
        opts |= ci.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD
    tu = ci.Index.create().parse("gen.c", args=args, unsaved_files=[("gen.c", source)], options=opts)
    errors = [d for d in tu.diagnostics if d.severity >= ci.Diagnostic.Error]
    if errors:
        die(f"libclang could not parse {source.strip()} with {defines}: {errors[0]}")
    return tu


def in_files(cursor, names):
    f = cursor.location.file
    return f is not None and os.path.basename(f.name) in names


def signature(fn_type):
    """A function type's canonical signature, comparable across parses."""
    t = fn_type.get_canonical()
    args = [a.spelling for a in t.argument_types()]
    if t.kind == T.FUNCTIONPROTO and t.is_function_variadic():
        args.append("...")
    return f"{t.get_result().spelling}({', '.join(args)})"


def macro_tokens(cursor):
    return [t.spelling for t in cursor.get_tokens()][1:]


class CudaHeaders:
    """One CUDA release's cuda.h + cudaTypedefs.h: declarations, PFN typedefs, PFN aliases."""

    def __init__(self, label, include):
        self.label = label
        self.include = include
        self.decls = {}  # exported name -> (signature, cursor)
        self.typedefs = {}  # PFN name -> signature
        self.aliases = {}  # PFN alias name -> tokens
        self.version = None
        for mode, defines in MODES.items():
            tu = parse(include, CUDA_SOURCE, defines, detailed=(mode == "internal"))
            if mode == "internal":
                self.tu = tu
            for c in tu.cursor.get_children():
                if not in_files(c, CUDA_FILES):
                    continue
                if c.kind == K.FUNCTION_DECL and c.spelling.startswith("cu"):
                    if c.storage_class == ci.StorageClass.STATIC:
                        continue  # inline helpers, not exported
                    s = signature(c.type)
                    old = self.decls.get(c.spelling)
                    if old and old[0] != s:
                        die(f"{label}: {c.spelling} is declared as {old[0]} and as {s}")
                    self.decls.setdefault(c.spelling, (s, c))
                elif c.kind == K.TYPEDEF_DECL and c.spelling.startswith("PFN_"):
                    t = c.underlying_typedef_type.get_canonical()
                    if t.kind != T.POINTER or t.get_pointee().kind != T.FUNCTIONPROTO:
                        die(f"{label}: {c.spelling} is not a function pointer")
                    s = signature(t.get_pointee())
                    old = self.typedefs.get(c.spelling)
                    if old and old != s:
                        die(f"{label}: {c.spelling} differs between configurations")
                    self.typedefs[c.spelling] = s
                elif c.kind == K.MACRO_DEFINITION and mode == "internal":
                    if c.spelling.startswith("PFN_"):
                        self.aliases[c.spelling] = macro_tokens(c)
                    elif c.spelling == "CUDA_VERSION":
                        self.version = int(macro_tokens(c)[0])
        if self.version is None:
            die(f"{label}: no CUDA_VERSION in cuda.h")


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

PFN = re.compile(r"^PFN_(\w+)_v(\d+)(_ptds|_ptsz)?$")


def variant_number(symbol, base, pt):
    rest = symbol[len(base) :]
    if pt:
        rest = rest[: -len(pt)]
    return 1 if rest == "" else int(rest[2:])


def candidates(headers, base, pt):
    pat = re.compile(r"^" + re.escape(base) + r"(?:_v(\d+))?" + re.escape(pt) + r"$")
    return {n: s for n, (s, _) in headers.decls.items() if pat.match(n)}


def build_table(all_headers):
    """Rows (base, version, per_thread, symbol, typedef, labels) and per-header counts."""
    # Every typedef of every release, for pairing old variants whose signatures repeat.
    known = {}  # (base, pt, signature) -> set of versions
    for h in all_headers:
        for name, sig in h.typedefs.items():
            m = PFN.match(name)
            if not m:
                die(f"{h.label}: cannot read typedef {name} as PFN_<name>_v<version>[_ptds|_ptsz]")
            base, ver, pt = m.group(1), int(m.group(2)), m.group(3) or ""
            known.setdefault((base, pt, sig), set()).add(ver)

    rows = {}  # (base, version, pt) -> dict
    counts = {}

    def add(h, base, ver, pt, symbol, typedef, alias=False):
        key = (base, ver, pt)
        row = rows.get(key)
        if row and row["symbol"] != symbol:
            die(f"{base} at {ver}{pt}: {row['symbol']} ({'/'.join(row['labels'])}) but {symbol} ({h.label})")
        if not row:
            row = rows[key] = dict(
                base=base, version=ver, pt=pt, symbol=symbol, typedef=typedef, alias=alias, labels=[]
            )
        row["labels"].append(h.label)

    for h in all_headers:
        c = counts[h.label] = dict(typedefs=len(h.typedefs), by_signature=0, by_order=0, aliases=0, skipped=[])
        mapped = {}  # typedef -> symbol, for the aliases below
        for name, sig in sorted(h.typedefs.items()):
            base, ver, pt = PFN.match(name).group(1), int(PFN.match(name).group(2)), PFN.match(name).group(3) or ""
            cands = candidates(h, base, pt)
            same = sorted((n for n, s in cands.items() if s == sig), key=lambda n: variant_number(n, base, pt))
            if not same:
                die(
                    f"{h.label}: {name} {sig} matches no declaration of {base}{pt} in cuda.h "
                    f"(declared: {', '.join(f'{n} {s}' for n, s in sorted(cands.items())) or 'none'})"
                )
            if len(same) == 1:
                symbol = same[0]
                c["by_signature"] += 1
            else:
                # cuda.h keeps several variants with this signature (cuCtxDestroy and
                # cuCtxDestroy_v2): the k-th oldest typedef of the signature is the k-th variant.
                versions = sorted(known[(base, pt, sig)])
                if len(versions) != len(same):
                    die(
                        f"{h.label}: {name}: {len(same)} declarations share its signature "
                        f"({', '.join(same)}) but the headers have {len(versions)} typedefs of it "
                        f"({', '.join(map(str, versions))}): cannot tell which is which"
                    )
                symbol = same[versions.index(ver)]
                c["by_order"] += 1
            mapped[name] = (base, ver, pt, symbol)
            add(h, base, ver, pt, symbol, name)

        major = h.version // 1000 * 1000
        for alias, tokens in sorted(h.aliases.items()):
            name = alias[len("PFN_") :]
            if len(tokens) == 1:
                targets = [tokens[0]]
            elif len(tokens) == 8 and tokens[0] in ("__API_TYPEDEF_PTDS", "__API_TYPEDEF_PTSZ"):
                suffix = "_ptds" if tokens[0].endswith("PTDS") else "_ptsz"
                targets = [f"{tokens[2]}_v{tokens[4]}", f"{tokens[2]}_v{tokens[6]}{suffix}"]
            else:
                c["skipped"].append(f"{alias} ({' '.join(tokens)}): not a typedef alias")
                continue
            for target in targets:
                if target not in mapped:
                    c["skipped"].append(f"{alias} -> {target}: no such typedef")
                    continue
                base, ver, pt, symbol = mapped[target]
                if base == name:
                    continue  # the current variant of its own name: already a row
                if re.search(r"_v\d+$", name):
                    c["skipped"].append(f"{alias} -> {target}: names a variant, not a name to look up")
                    continue
                if not name.startswith("cu"):
                    c["skipped"].append(f"{alias} -> {target}: not a driver function name")
                    continue
                # What the header's own release means by the name: from its major version on,
                # and never before the target existed.
                at = max(ver, major)
                older = [r["version"] for r in rows.values() if r["base"] == name and r["pt"] == pt]
                if any(v >= at for v in older):
                    die(f"{h.label}: {alias} -> {target} at {at}, but {name} has variants at {older}")
                add(h, name, at, pt, symbol, alias, alias=True)
                c["aliases"] += 1
    return sorted(rows.values(), key=lambda r: (r["base"], r["pt"] != "", r["version"])), counts


# --------------------------------------------------------------------------------------------
# Rust
# --------------------------------------------------------------------------------------------

LINTS = """#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    missing_debug_implementations,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc,
    unsafe_op_in_unsafe_fn
)]"""


def run(cmd, **kw):
    r = subprocess.run(cmd, **kw)
    if r.returncode != 0:
        die(f"{cmd[0]} failed ({r.returncode}): {' '.join(cmd)}")


def bindgen(args, header, out, extra_clang):
    cmd = [
        args.bindgen,
        header,
        "--default-enum-style",
        "consts",
        "--no-prepend-enum-name",
        "--no-doc-comments",
        "--with-derive-default",
        "--blocklist-function",
        ".*",
        "--merge-extern-blocks",
        "-o",
        out,
    ]
    for f in args_files(header):
        cmd += ["--allowlist-file", f]
    cmd += ["--"] + extra_clang
    run(cmd)
    with open(out) as f:
        return f.read()


def args_files(header):
    return [r".*/cuda\.h", r".*/cudaTypedefs\.h", r".*/nvml\.h", r".*/gpuslice-nvml-sym\.h"] + [
        r".*/" + re.escape(f) for f in CUDA_FILES[2:]
    ]


CAST_MACRO = re.compile(r"^\(\s*\(\s*(\w+)\s*\)\s*(-?\s*(?:0x[0-9a-fA-F]+|\d+))\s*\)$")


def cast_macros(tu, files):
    """`#define NAME ((TYPE)VALUE)` macros (CU_STREAM_PER_THREAD), which bindgen skips."""
    out = []
    for c in tu.cursor.get_children():
        if c.kind == K.MACRO_DEFINITION and in_files(c, files):
            text = " ".join(macro_tokens(c))
            m = CAST_MACRO.match(text)
            if m:
                out.append((c.spelling, m.group(1), m.group(2).replace(" ", "")))
    return out


def rust_cuda(args, h13, rows):
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = os.path.join(tmp, "gpuslice-cuda.h")
        with open(wrapper, "w") as f:
            f.write(CUDA_SOURCE)
        body = bindgen(
            args, wrapper, os.path.join(tmp, "cuda.rs"), [f"-I{h13.include}", f"-I{STUB_DIR}", "-D__CUDA_API_VERSION_INTERNAL"]
        )
    body = re.sub(r"^/\* automatically generated by rust-bindgen [^*]*\*/\n", "", body)
    out = [
        f"//! `cuda.h` and `cudaTypedefs.h` of CUDA {h13.version // 1000}.{h13.version % 1000 // 10} "
        "(with their `__CUDA_API_VERSION_INTERNAL` sections, which give the old variants' types), as",
        f"//! bindgen {bindgen_version(args)} reads them; then [`sym`], one function-pointer type per exported symbol.",
        "//!",
        "//! Generated by `scripts/gen-cuda-abi.sh`: do not edit.",
        LINTS,
        "",
        body,
        "// Macros of the form `((TYPE)VALUE)`, which bindgen does not translate.",
    ]
    for name, ty, value in cast_macros(h13.tu, ("cuda.h",)):
        out.append(f"pub const {name}: {ty} = {value} as {ty};")
    out.append("")
    out.append("/// The exact C signature of each exported driver symbol, as a non-null function pointer")
    out.append("/// (`Option<sym::X>` is the nullable one): the type of the `PFN_…` typedef it implements.")
    out.append("pub mod sym {")
    out.append("    use crate::NonNullFn;")
    seen = set()
    for r in rows:
        if r["alias"] or r["symbol"] in seen:
            continue
        seen.add(r["symbol"])
        if r["typedef"] not in h13.typedefs:
            die(f"{r['symbol']}: its typedef {r['typedef']} is not in the {h13.label} headers the types come from")
        out.append(f"    pub type {r['symbol']} = <super::{r['typedef']} as NonNullFn>::Fn;")
    out.append("}")
    return "\n".join(out) + "\n"


def nvml_functions(include):
    """NVML's exported functions: declared with and without NVML_NO_UNVERSIONED_FUNC_DEFS."""
    names = {}
    for defines in ([], ["NVML_NO_UNVERSIONED_FUNC_DEFS"]):
        tu = parse(include, "#include <nvml.h>\n", defines)
        for c in tu.cursor.get_children():
            if c.kind == K.FUNCTION_DECL and in_files(c, ("nvml.h",)) and c.spelling.startswith("nvml"):
                names.setdefault(c.spelling, defines)
    return names


def rust_nvml(args, include, label):
    funcs = nvml_functions(include)
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = os.path.join(tmp, "gpuslice-nvml-sym.h")
        with open(wrapper, "w") as f:
            f.write("#define NVML_NO_UNVERSIONED_FUNC_DEFS\n#include <nvml.h>\n")
            for n in sorted(funcs):
                f.write(f"typedef __typeof__(&{n}) gpuslice_nvml_sym_{n};\n")
        body = bindgen(args, wrapper, os.path.join(tmp, "nvml.rs"), [f"-I{include}"])
    body = re.sub(r"^/\* automatically generated by rust-bindgen [^*]*\*/\n", "", body)
    out = [
        f"//! `nvml.h` of the NVML development headers {label}, as bindgen {bindgen_version(args)} reads it; then",
        "//! [`sym`], one function-pointer type per exported NVML function.",
        "//!",
        "//! Generated by `scripts/gen-cuda-abi.sh`: do not edit.",
        LINTS,
        "",
        body,
        "/// The exact C signature of each exported NVML function, as a non-null function pointer.",
        "pub mod sym {",
        "    use crate::NonNullFn;",
    ]
    for n in sorted(funcs):
        out.append(f"    pub type {n} = <super::gpuslice_nvml_sym_{n} as NonNullFn>::Fn;")
    out.append("}")
    return "\n".join(out) + "\n", len(funcs)


def rust_table(rows, headers):
    newest = max(r["version"] for r in rows)
    labels = [h.label for h in headers]
    # The strings live in one blob and rows hold offsets: a table of pointers would cost the
    # interception library a dynamic relocation per string at every process start.
    blob, at = [], {}

    def intern(text):
        if text not in at:
            at[text] = sum(len(b) for b in blob)
            blob.append(text)
        return f"Str({at[text]}, {len(text)})"

    lines = []
    for r in rows:
        pt = "true" if r["pt"] else "false"
        alias = "true" if r["alias"] else "false"
        hs = sum(1 << labels.index(l) for l in r["labels"])
        lines.append(
            f'    ProcRow {{ name: {intern(r["base"])}, version: {r["version"]}, per_thread: {pt}, '
            f'symbol: {intern(r["symbol"])}, typedef: {intern(r["typedef"])}, alias: {alias}, headers: {hs} }},'
        )
    text = "".join(blob)
    out = [
        "//! The `cuGetProcAddress` table: every `PFN_<name>_v<version>[_ptds|_ptsz]` typedef of",
        f"//! `cudaTypedefs.h` {' and '.join(labels)}, with the exported driver symbol that implements it.",
        "//!",
        "//! Generated by `scripts/gen-cuda-abi.sh`: do not edit.",
        "",
        "use crate::proc::{ProcRow, Str};",
        "",
        "/// The newest CUDA version any row names.",
        f"pub const NEWEST_VERSION: i32 = {newest};",
        "",
        "/// The header releases the table comes from, as `CUDA_VERSION`.",
        f"pub const HEADERS: &[i32] = &[{', '.join(str(h.version) for h in headers)}];",
        "",
        "/// Every string of the table, which rows point into.",
        "#[rustfmt::skip]",
        f'pub(crate) const STRINGS: &str = "{text}";',
        "",
        "/// Sorted by name, then plain before per-thread, then version.",
        "#[rustfmt::skip]",
        "pub static PROC_TABLE: &[ProcRow] = &[",
        *lines,
        "];",
    ]
    return "\n".join(out) + "\n"


_bindgen_version = None


def bindgen_version(args):
    global _bindgen_version
    if _bindgen_version is None:
        v = subprocess.run([args.bindgen, "--version"], capture_output=True, text=True).stdout.split()
        _bindgen_version = v[-1] if v else "?"
    return _bindgen_version


# --------------------------------------------------------------------------------------------
# C
# --------------------------------------------------------------------------------------------


def c_decl(t, name, inline=(), indent=""):
    """A C declaration of `name` with type `t`, declarator syntax included. Records in `inline`
    (defined inside the record being printed) are printed in full where they are used."""
    k = t.kind
    if k == T.POINTER:
        inner = "*" + (" const " if t.is_const_qualified() else "") + name
        p = t.get_pointee()
        if p.kind in (T.FUNCTIONPROTO, T.FUNCTIONNOPROTO, T.CONSTANTARRAY, T.INCOMPLETEARRAY):
            inner = f"({inner})"
        return c_decl(p, inner, inline, indent)
    if k == T.FUNCTIONPROTO:
        params = [c_decl(a, "") for a in t.argument_types()]
        if t.is_function_variadic():
            params.append("...")
        return c_decl(t.get_result(), f"{name}({', '.join(params) or 'void'})")
    if k == T.FUNCTIONNOPROTO:
        return c_decl(t.get_result(), f"{name}()")
    if k == T.CONSTANTARRAY:
        return c_decl(t.element_type, f"{name}[{t.element_count}]", inline, indent)
    if k == T.INCOMPLETEARRAY:
        return c_decl(t.element_type, f"{name}[]", inline, indent)
    decl = t.get_declaration()
    if decl.kind in (K.STRUCT_DECL, K.UNION_DECL, K.ENUM_DECL) and (decl in inline or decl.spelling == ""):
        const = "const " if t.is_const_qualified() else ""
        return f"{const}{c_definition(decl, indent)} {name}".rstrip()
    return f"{t.spelling} {name}".rstrip() if name else t.spelling


def record_of(t):
    while t.kind in (T.CONSTANTARRAY, T.INCOMPLETEARRAY):
        t = t.element_type
    return t.get_declaration()


def c_definition(c, indent=""):
    """The definition of a struct, union or enum."""
    kw = {K.STRUCT_DECL: "struct", K.UNION_DECL: "union", K.ENUM_DECL: "enum"}[c.kind]
    head = f"{kw} {c.spelling}".rstrip()
    inner = indent + "    "
    lines = []
    if c.kind == K.ENUM_DECL:
        for e in c.get_children():
            if e.kind == K.ENUM_CONSTANT_DECL:
                lines.append(f"{inner}{e.spelling} = {e.enum_value},")
    else:
        children = list(c.get_children())
        nested = [f for f in children if f.kind in (K.STRUCT_DECL, K.UNION_DECL, K.ENUM_DECL)]
        used = [record_of(f.type) for f in children if f.kind == K.FIELD_DECL]
        for f in children:
            if f.kind in (K.STRUCT_DECL, K.UNION_DECL, K.ENUM_DECL) and f not in used:
                # An anonymous member (C11), or a type defined here and used elsewhere.
                lines.append(f"{inner}{c_definition(f, inner)};")
            elif f.kind == K.FIELD_DECL:
                d = c_decl(f.type, f.spelling, nested, inner)
                if f.is_bitfield():
                    d += f" : {f.get_bitfield_width()}"
                lines.append(f"{inner}{d};")
    return head + " {\n" + "\n".join(lines) + f"\n{indent}}}"


def c_layout_asserts(c, type_name):
    t = c.type
    out = [f'_Static_assert(sizeof({type_name}) == {t.get_size()}, "size of {type_name}");']
    for f in c.get_children():
        if f.kind == K.FIELD_DECL and f.spelling and not f.is_bitfield():
            off = t.get_offset(f.spelling)
            if off >= 0:
                out.append(
                    f'_Static_assert(offsetof({type_name}, {f.spelling}) == {off // 8}, '
                    f'"offset of {type_name}.{f.spelling}");'
                )
    return out


INT_MACRO = re.compile(r"^\(?\s*(-?(?:0x[0-9a-fA-F]+|\d+)[uUlL]*)\s*\)?$")


def c_items(tu, files, prototypes):
    """Types, integer macros and prototypes of `files`, in declaration order."""
    out, asserts = [], []
    for c in tu.cursor.get_children():
        if not in_files(c, files):
            continue
        if c.kind in (K.STRUCT_DECL, K.UNION_DECL, K.ENUM_DECL):
            if c.spelling == "":
                continue  # printed inside the typedef that names it
            if c.is_definition():
                out.append(c_definition(c) + ";")
                if c.kind != K.ENUM_DECL:
                    kw = "struct" if c.kind == K.STRUCT_DECL else "union"
                    asserts += c_layout_asserts(c, f"{kw} {c.spelling}")
            elif c.kind != K.ENUM_DECL:
                out.append(f"{'struct' if c.kind == K.STRUCT_DECL else 'union'} {c.spelling};")
        elif c.kind == K.TYPEDEF_DECL:
            out.append(f"typedef {c_decl(c.underlying_typedef_type, c.spelling)};")
            d = c.underlying_typedef_type.get_canonical().get_declaration()
            if d.kind in (K.STRUCT_DECL, K.UNION_DECL) and d.spelling == "" and d.is_definition():
                asserts += c_layout_asserts(d, c.spelling)
        elif c.kind == K.MACRO_DEFINITION:
            if c.spelling.startswith("_") or c.spelling.endswith("_H") or c.spelling.endswith("_h__"):
                continue
            toks = macro_tokens(c)
            if toks and INT_MACRO.match(" ".join(toks)):
                out.append(f"#define {c.spelling} {' '.join(toks)}")
            elif CAST_MACRO.match(" ".join(toks)):
                out.append(f"#define {c.spelling} {' '.join(toks)}")
    for name, fn in sorted(prototypes.items()):
        params = [c_decl(a.type, a.spelling) for a in fn.get_arguments()]
        out.append(f"{c_decl(fn.type.get_result(), name)}({', '.join(params) or 'void'});")
    return out, asserts


def c_header(h13, nvml_include, nvml_label, rows):
    nvml_tu = parse(nvml_include, "#include <nvml.h>\n", [], detailed=True)
    nvml_protos = {}
    for defines in ([], ["NVML_NO_UNVERSIONED_FUNC_DEFS"]):
        tu = parse(nvml_include, "#include <nvml.h>\n", defines)
        for c in tu.cursor.get_children():
            if c.kind == K.FUNCTION_DECL and in_files(c, ("nvml.h",)):
                nvml_protos.setdefault(c.spelling, c)
    cuda_protos = {n: c for n, (_, c) in h13.decls.items()}
    cuda, cuda_asserts = c_items(h13.tu, CUDA_FILES + tuple(os.path.basename(f) for f in STUBS), cuda_protos)
    nvml, nvml_asserts = c_items(nvml_tu, ("nvml.h",), nvml_protos)
    seen, syms = set(), []
    for r in rows:
        if not r["alias"] and r["symbol"] not in seen:
            seen.add(r["symbol"])
            syms.append(f"typedef {r['typedef']} gpuslice_sym_{r['symbol']};")
    table = [
        f'    {{"{r["base"]}", {r["version"]}, {1 if r["pt"] else 0}, "{r["symbol"]}"}},' for r in rows
    ]
    v = h13.version
    return "\n".join(
        [
            "/* gpuslice_cuda_abi.h: the types, constants and exported functions of NVIDIA's",
            f" * cuda.h + cudaTypedefs.h {v // 1000}.{v % 1000 // 10} (with their __CUDA_API_VERSION_INTERNAL",
            f" * sections) and nvml.h ({nvml_label}), and the cuGetProcAddress table of the crate",
            " * gpuslice-cuda-abi, for C. Generated by scripts/gen-cuda-abi.sh: do not edit. */",
            "#ifndef GPUSLICE_CUDA_ABI_H",
            "#define GPUSLICE_CUDA_ABI_H",
            "#include <stddef.h>",
            "#include <stdint.h>",
            "",
            "/* ---- cuda.h, cudaTypedefs.h ---- */",
            *cuda,
            "",
            "/* ---- nvml.h ---- */",
            *nvml,
            "",
            "/* ---- the signature of each exported driver symbol ---- */",
            *syms,
            "",
            "/* ---- cuGetProcAddress: (name, CUDA version, per-thread) -> exported symbol ---- */",
            "struct gpuslice_proc_row {",
            "    const char *name;",
            "    int version;",
            "    int per_thread;",
            "    const char *symbol;",
            "};",
            "__attribute__((unused)) static const struct gpuslice_proc_row gpuslice_proc_table[] = {",
            *table,
            "};",
            f"#define GPUSLICE_PROC_TABLE_LEN {len(rows)}",
            "",
            "/* ---- layouts, as libclang computed them for this target ---- */",
            *cuda_asserts,
            *nvml_asserts,
            "",
            "#endif /* GPUSLICE_CUDA_ABI_H */",
            "",
        ]
    )


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuda", action="append", required=True, metavar="LABEL=INCLUDE_DIR",
                    help="a CUDA release's include dir (cuda.h, cudaTypedefs.h); the last one gives the types")
    ap.add_argument("--nvml", required=True, metavar="LABEL=INCLUDE_DIR")
    ap.add_argument("--out", required=True, help="the repository root")
    ap.add_argument("--bindgen", default="bindgen")
    ap.add_argument("--rustfmt", default="rustfmt")
    ap.add_argument("--cc", default="cc")
    ap.add_argument("--libclang", required=True)
    args = ap.parse_args()
    ci.Config.set_library_file(args.libclang)
    os.environ["LIBCLANG_PATH"] = os.path.dirname(args.libclang)

    headers = []
    for spec in args.cuda:
        label, inc = spec.split("=", 1)
        headers.append(CudaHeaders(label, inc))
    nvml_label, nvml_inc = args.nvml.split("=", 1)

    rows, counts = build_table(headers)
    for h in headers:
        c = counts[h.label]
        print(
            f"cudaTypedefs.h {h.label} (CUDA_VERSION {h.version}): {c['typedefs']} typedefs, all mapped "
            f"({c['by_signature']} by signature, {c['by_order']} by order among same-signature variants); "
            f"{c['aliases']} cross-name PFN aliases added; {len(c['skipped'])} aliases skipped"
        )
        for s in c["skipped"]:
            print(f"    skipped {s}")
    print(
        f"table: {len(rows)} rows ({sum(1 for r in rows if r['alias'])} from aliases), "
        f"{len({r['base'] for r in rows})} names, {len({r['symbol'] for r in rows})} symbols"
    )

    src = os.path.join(args.out, "cuda-abi", "src")
    inc = os.path.join(args.out, "cuda-abi", "include")
    os.makedirs(src, exist_ok=True)
    os.makedirs(inc, exist_ok=True)
    h13 = headers[-1]
    files = {
        os.path.join(src, "cuda.rs"): rust_cuda(args, h13, rows),
        os.path.join(src, "table.rs"): rust_table(rows, headers),
    }
    nvml_rs, nfuncs = rust_nvml(args, nvml_inc, nvml_label)
    files[os.path.join(src, "nvml.rs")] = nvml_rs
    print(f"nvml.h {nvml_label}: {nfuncs} exported functions")
    header = os.path.join(inc, "gpuslice_cuda_abi.h")
    files[header] = c_header(h13, nvml_inc, nvml_label, rows)
    for path, text in files.items():
        with open(path, "w") as f:
            f.write(text)
    config = os.path.join(args.out, "rustfmt.toml")
    run([args.rustfmt, "--edition", "2024", "--config-path", config] + [p for p in files if p.endswith(".rs")])
    # The C header must compile on its own, layout assertions included.
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "t.c")
        with open(probe, "w") as f:
            f.write('#include "gpuslice_cuda_abi.h"\nint main(void) { return gpuslice_proc_table[0].version == 0; }\n')
        run([args.cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", inc, "-o", os.path.join(tmp, "t"), probe])
    for path in files:
        print(f"wrote {os.path.relpath(path, args.out)}")


if __name__ == "__main__":
    main()
