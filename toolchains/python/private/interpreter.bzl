"""Repository rule: the pinned CPython (Debian bookworm's python3.11 packages, by the sha256 pins of
//third_party/debian:packages.lock.json) as a py_runtime toolchain.

The same .debs make the images' /usr/bin/python3.11 (//third_party/debian:base_layer), so a test, a
`bazel run` and a container run the same interpreter bytes. They are downloaded by the shared code of
//third_party/debian/private:deb_download.bzl and unpacked without any Python: the `ar` member is cut out
with sh + coreutils, and Bazel unpacks its data.tar.xz (Bazel 4.2.3's rctx.extract knows tar.xz, not .deb).

glibc stays the host's. At fetch time the host's glibc version (`getconf GNU_LIBC_VERSION`) is compared with
the newest GLIBC_x.y symbol version the unpacked binaries reference; an older host fails the fetch naming
both and the fix. $MLENV_PYTHON (an absolute path) opts into a host CPython 3.11 instead, loudly: printed at
fetch and written in origin.txt.

Nothing generated here that an action or test reads holds an absolute path of the output base: the wrapper
finds the interpreter next to itself, which the cross-checkout remote cache (issue 18 §4) relies on.
"""

load("//third_party/debian/private:deb_download.bzl", "RELOCK", "check_lock_entry", "download_deb")
load(":versions.bzl", "INTERPRETER_PACKAGES", "PYTHON_ENV_VAR", "PYTHON_FULL_VERSION", "PYTHON_VERSION")

_PROBE = "import json, platform, sys; print(json.dumps({'executable': sys.executable, 'version': list(sys.version_info[:3]), 'implementation': platform.python_implementation(), 'prefix': sys.base_prefix}))"

# Prints the name of the deb's data.tar.* member after copying it to $2: a .deb is an `ar` archive of
# 60-byte ASCII headers (name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic 2), members 2-aligned.
_AR_DATA_MEMBER = """
deb="$1"; out="$2"
[ "$(head -c 7 "$deb")" = '!<arch>' ] || { echo "$deb is not an ar archive (.deb)" >&2; exit 1; }
size=$(wc -c < "$deb"); off=8
while [ "$off" -lt "$size" ]; do
  hdr=$(dd if="$deb" bs=1 skip="$off" count=60 2>/dev/null)
  name=$(printf '%s' "$hdr" | cut -c1-16 | tr -d ' '); name=${name%/}
  len=$(printf '%s' "$hdr" | cut -c49-58 | tr -d ' ')
  case "$name" in
    data.tar.xz|data.tar.gz|data.tar) tail -c +$((off + 61)) "$deb" | head -c "$len" > "$out/$name"; echo "$name"; exit 0 ;;
  esac
  off=$((off + 60 + len + len % 2))
done
echo "$deb has no data.tar.xz/.gz member" >&2; exit 1
"""

# The newest GLIBC_x.y symbol version the interpreter, its extension modules and its libraries reference.
_GLIBC_NEEDED = "grep -aoh 'GLIBC_2\\.[0-9][0-9]*' usr/bin/python3.11 usr/lib/python3.11/lib-dynload/*.so usr/lib/*-linux-gnu/*.so* lib/*-linux-gnu/*.so* 2>/dev/null | sort -u"

def _fix_hint():
    return ("To use a host CPython %d.%d instead (not the images' bytes), point Bazel at it with " +
            "`export %s=/path/to/python3.%d` before starting Bazel (or add " +
            "`build --repo_env=%s=/path/to/python3.%d` to .bazelrc.user).") % (
        PYTHON_VERSION[0],
        PYTHON_VERSION[1],
        PYTHON_ENV_VAR,
        PYTHON_VERSION[1],
        PYTHON_ENV_VAR,
        PYTHON_VERSION[1],
    )

def parse_glibc_version(text):
    """(major, minor) from `getconf GNU_LIBC_VERSION` output ("glibc 2.36") or a symbol version ("GLIBC_2.34")."""
    word = text.strip().split(" ")[-1].split("_")[-1]
    parts = word.split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return (int(parts[0]), int(parts[1]))

def glibc_refusal(host_text, needed_symbols):
    """None when the host's glibc runs binaries referencing `needed_symbols`, else the message to fail with.

    Args:
      host_text: what `getconf GNU_LIBC_VERSION` printed ("" when it did not run).
      needed_symbols: GLIBC_x.y strings found in the binaries.
    """
    needed = [v for v in [parse_glibc_version(s) for s in needed_symbols] if v]
    newest = sorted(needed)[-1] if needed else (2, 0)
    host = parse_glibc_version(host_text) if host_text.strip().startswith("glibc") else None
    if host == None:
        return ("mlenv: the pinned CPython %s (Debian bookworm) needs glibc >= %d.%d, but this host reports no " +
                "glibc (`getconf GNU_LIBC_VERSION` printed %r; a musl system?). %s") % (
            PYTHON_FULL_VERSION,
            newest[0],
            newest[1],
            host_text.strip(),
            _fix_hint(),
        )
    if host < newest:
        return ("mlenv: the pinned CPython %s (Debian bookworm) needs glibc >= %d.%d (its binaries reference " +
                "GLIBC_%d.%d), but this host has glibc %d.%d. Run Bazel on a newer system (Debian 12, Ubuntu " +
                "22.04 or later), or: %s") % (
            PYTHON_FULL_VERSION,
            newest[0],
            newest[1],
            newest[0],
            newest[1],
            host[0],
            host[1],
            _fix_hint(),
        )
    return None

def _multiarch(rctx):
    arch = rctx.execute(["uname", "-m"]).stdout.strip()
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(arch, arch + "-linux-gnu")

def _unpack_pinned(rctx):
    """Downloads and unpacks the interpreter's packages into root/; returns the packages.json entries."""
    lock = json.decode(rctx.read(rctx.attr.lock))
    by_name = {}
    for index, pkg in enumerate(lock.get("packages", [])):
        check_lock_entry(rctx.attr.lock, index, pkg)
        by_name[pkg["name"]] = pkg
    missing = [name for name in INTERPRETER_PACKAGES if name not in by_name]
    if missing:
        fail(("mlenv: %s lacks %s, which the interpreter needs (//toolchains/python/private:versions.bzl); " +
              "keep python3.11 in third_party/debian/packages.in and run `%s`") % (rctx.attr.lock, ", ".join(missing), RELOCK))
    listed = []
    for name in INTERPRETER_PACKAGES:
        pkg = by_name[name]
        deb = download_deb(rctx, rctx.attr.lock, pkg)
        result = rctx.execute(["sh", "-c", _AR_DATA_MEMBER, "ar", str(rctx.path(deb)), str(rctx.path("."))])
        if result.return_code != 0:
            fail("mlenv: cannot unpack %s (%s): %s" % (deb, name, result.stderr.strip()))
        member = result.stdout.strip()
        rctx.extract(member, output = "root")
        rctx.delete(member)
        listed.append({"file": deb, "name": name, "sha256": pkg["sha256"], "version": pkg["version"]})
    return listed

def _compile_stdlib(rctx, multiarch):
    """Byte code for the whole standard library, written once here and the same in every checkout.

    The .debs ship none (Debian's postinst compiles it). Left alone, each run of this interpreter would write
    timestamp .pyc files for what it imported into root/, holding this output base's path and the unpack
    time: the set and the bytes of root/ (an input of every Python action; a remote cache keys on every file
    in it) would then depend on the checkout and on what happened to run first. Unchecked-hash .pyc are
    never rewritten; their file names are the image's (/usr/lib/python3.11/...), and importing from the real
    path, Python names the real source in tracebacks (as for @pypi)."""
    root = str(rctx.path("root"))

    # `env -i`: nothing from the caller's shell reaches the compiler. rctx.execute passes the client's
    # environment through, where PYTHONPYCACHEPREFIX (byte code written outside root/), PYTHONOPTIMIZE
    # (.opt-N.pyc instead) or PYTHONDONTWRITEBYTECODE (whether the compiler's imports leave timestamp .pyc,
    # hence -B) would change root/'s files, whose contents Bazel does not track.
    result = rctx.execute(
        [
            "env",
            "-i",
            "LD_LIBRARY_PATH=%s/lib/%s:%s/usr/lib/%s" % (root, multiarch, root, multiarch),
            "PYTHONHASHSEED=0",
            root + "/usr/bin/python3.11",
            "-S",
            "-B",  # the compiler's own imports write no timestamp .pyc, which compileall would then keep
            "-m",
            "compileall",
            "-q",
            "-f",
            "-j0",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            root,
            "-p",
            "/",
            root + "/usr/lib/python3.11",
        ],
        timeout = 600,
    )
    if result.return_code not in (0, 1):  # 1: a file did not compile (lib2to3's test data); fine
        fail("mlenv: compiling the pinned CPython's standard library failed:\n%s%s" % (result.stdout[-2000:], result.stderr[-2000:]))

def _pinned(rctx):
    packages = _unpack_pinned(rctx)
    getconf = rctx.which("getconf")
    host = rctx.execute([getconf, "GNU_LIBC_VERSION"]).stdout if getconf else ""
    needed = rctx.execute(["sh", "-c", _GLIBC_NEEDED], working_directory = str(rctx.path("root"))).stdout.strip().split("\n")
    refusal = glibc_refusal(host, needed)
    if refusal:
        fail(refusal)
    multiarch = _multiarch(rctx)
    libs = "$here/root/lib/%s:$here/root/usr/lib/%s" % (multiarch, multiarch)
    _compile_stdlib(rctx, multiarch)

    # LD_LIBRARY_PATH, exported: the lib-dynload modules (_ssl, _sqlite3, _ctypes, ...) resolve their
    # libraries from the pinned packages, not the host's, and so do the interpreters that subprocesses,
    # torchrun and Ray workers start from sys.executable (the real binary), which inherit it. Patching
    # RUNPATH instead would change the bytes that must equal the images'.
    wrapper = """#!/bin/sh
# Generated by //toolchains/python/private:interpreter.bzl: Debian bookworm's CPython {version}, unpacked
# next to this file from the locked .debs. -S: no site-packages of any kind; the lock arrives by PYTHONPATH.
here=$(dirname "$(readlink -f "$0")")
libs="{libs}"
case ":${{LD_LIBRARY_PATH:-}}:" in
  *":$libs:"*) ;;
  *) LD_LIBRARY_PATH="$libs${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" ;;
esac
export LD_LIBRARY_PATH
exec "$here/root/usr/bin/python3.11" -S "$@"
""".format(version = PYTHON_FULL_VERSION, libs = libs)
    origin = "pinned: Debian bookworm CPython %s from %s (%s)\n" % (
        PYTHON_FULL_VERSION,
        rctx.attr.lock,
        ", ".join(["%s %s" % (p["name"], p["version"]) for p in packages]),
    )
    rctx.file("packages.json", json.encode_indent({"lock": str(rctx.attr.lock), "packages": packages}, indent = "  ") + "\n")
    return wrapper, PYTHON_FULL_VERSION, origin

def _host(rctx, explicit):
    if not explicit.startswith("/"):
        # A bare name would be looked up on $PATH, which this rule does not watch (see `environ` below).
        fail("mlenv: $%s=%s is not an absolute path: set it to the interpreter's full path, e.g. `export %s=$(command -v %s)`, or unset it to use the pinned interpreter." % (
            PYTHON_ENV_VAR,
            explicit,
            PYTHON_ENV_VAR,
            explicit,
        ))
    result = rctx.execute([explicit, "-I", "-c", _PROBE], timeout = 60)
    if result.return_code != 0:
        fail("mlenv: %s (from $%s) does not run: %s. Unset %s to use the pinned interpreter." % (
            explicit,
            PYTHON_ENV_VAR,
            result.stderr.strip(),
            PYTHON_ENV_VAR,
        ))
    info = json.decode(result.stdout.strip())
    version = info["version"]
    if info["implementation"] != "CPython" or (version[0], version[1]) != PYTHON_VERSION:
        fail("mlenv: the locked environment needs CPython %d.%d (its wheels are built for the cp%d%d ABI), but %s (from $%s) is %s %d.%d.%d. Unset %s to use the pinned interpreter, or %s" % (
            PYTHON_VERSION[0],
            PYTHON_VERSION[1],
            PYTHON_VERSION[0],
            PYTHON_VERSION[1],
            explicit,
            PYTHON_ENV_VAR,
            info["implementation"],
            version[0],
            version[1],
            version[2],
            PYTHON_ENV_VAR,
            _fix_hint(),
        ))

    # Resolve symlinks and shims: sys.executable is what actually ran.
    executable = str(rctx.path(info["executable"]).realpath)
    text = "%d.%d.%d" % tuple(version)
    print("\n\nmlenv: WARNING: $%s=%s: every Python target runs the HOST interpreter %s (CPython %s), not the pinned Debian bookworm CPython %s that the images run. Unset %s to go back.\n" % (
        PYTHON_ENV_VAR,
        explicit,
        executable,
        text,
        PYTHON_FULL_VERSION,
        PYTHON_ENV_VAR,
    ))
    wrapper = "#!/bin/sh\n# Generated by //toolchains/python/private:interpreter.bzl: the HOST interpreter, chosen by $%s.\nexec \"%s\" -S \"$@\"\n" % (PYTHON_ENV_VAR, executable)
    origin = "host: %s (CPython %s, from $%s) -- NOT the pinned interpreter of the images\n" % (executable, text, PYTHON_ENV_VAR)
    rctx.file("packages.json", json.encode_indent({"lock": "", "packages": []}, indent = "  ") + "\n")
    return wrapper, text, origin

def _python_interpreter_impl(rctx):
    explicit = rctx.os.environ.get(PYTHON_ENV_VAR, "")
    wrapper, version, origin = _host(rctx, explicit) if explicit else _pinned(rctx)
    rctx.file("python3", wrapper, executable = True)
    rctx.file("version.txt", version + "\n")
    rctx.file("origin.txt", origin)
    rctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % rctx.name)
    rctx.template("BUILD.bazel", rctx.attr._build_tpl, {
        "{files}": "[\"root\", \"packages.json\"]" if not explicit else "[\"packages.json\"]",
        "{origin}": origin.strip().split(" (")[0],
        "{repo}": rctx.name,
        # The name without a module extension's canonical prefix (`_main~mlenv~mlenv_python` under Bzlmod): a
        # workspace that overrides its own repository with this one (sample workspaces) names it that way.
        "{apparent}": rctx.name.split("~")[-1].split("+")[-1],
        "{version}": version,
    })

python_interpreter = repository_rule(
    implementation = _python_interpreter_impl,
    doc = """The pinned CPython (Debian bookworm's python3.11 .debs from the lock) as a py_runtime toolchain.

Exposes `@<name>//:toolchain`, `@<name>//:python3` (the wrapper; what repository rules run), `:version.txt`,
`:origin.txt` (pinned or host), `:packages.json` and `:debs` (the .debs it was unpacked from).
$MLENV_PYTHON=/path/to/python3.11 uses a host interpreter instead (printed as a warning at fetch).""",
    attrs = {
        "lock": attr.label(default = "//third_party/debian:packages.lock.json", allow_single_file = [".json"]),
        "_build_tpl": attr.label(default = "//toolchains/python/private:BUILD.interpreter.tpl"),
    },
    # Not PATH: a refetch with unchanged contents still gives root/ (a source directory, whose mtime Bazel's
    # action cache keeps) a new mtime, so under the next server every Python action and test would rerun
    # whenever a shell's PATH differed (a CI agent's against a laptop's, a venv activated). The tools this rule runs from PATH (ar, sh, env,
    # getconf) do not change what it writes; a host interpreter must be given by absolute path.
    environ = [PYTHON_ENV_VAR, "MLENV_DEBIAN_MIRROR"],
)
