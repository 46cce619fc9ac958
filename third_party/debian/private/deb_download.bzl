"""Downloading one locked .deb by its sha256 pin: shared by @debian_bookworm (the image base layer) and
@mlenv_python (the interpreter every Python target runs), so both take the very same bytes from one lock.

The downloads go through Bazel's downloader, so they land in the repository cache (keyed by sha256) and a
re-fetch after `bazel clean --expunge` needs no network. A file whose sha256 differs from the lock fails the
fetch naming the package, both hashes and the fix; a URL that is gone (superseded versions vanish from
deb.debian.org at point releases and security updates; snapshot.debian.org is not reachable from our
machines) fails saying to relock.
"""

MIRROR_ENV = "MLENV_DEBIAN_MIRROR"
_DEFAULT_HOST = "https://deb.debian.org"
RELOCK = "tools/bazel run //third_party/debian:lock"
_FIELDS = ["name", "version", "architecture", "url", "sha256", "size"]

def _url(rctx, url):
    mirror = rctx.os.environ.get(MIRROR_ENV, "").rstrip("/")
    if mirror and url.startswith(_DEFAULT_HOST + "/"):
        return mirror + url[len(_DEFAULT_HOST):]
    return url

def check_lock_entry(lock, index, pkg):
    """Fails naming the lock and the fix when entry `index` of `lock` is damaged."""
    missing = [f for f in _FIELDS if f not in pkg]
    if missing:
        fail("mlenv: %s: package #%d (%s) lacks %s; the lock is damaged: regenerate it with `%s`" % (
            lock,
            index,
            pkg.get("name", "?"),
            ", ".join(missing),
            RELOCK,
        ))
    sha = pkg["sha256"]
    if len(sha) != 64 or sha.strip("0123456789abcdef") != "":
        fail("mlenv: %s: %s %s has sha256 %r, not 64 lower-case hex digits; regenerate the lock with `%s`" % (
            lock,
            pkg["name"],
            pkg["version"],
            sha,
            RELOCK,
        ))

def deb_filename(pkg):
    """Where a package's .deb lands inside the repository (the same name in every repository)."""
    return "debs/%s_%s_%s.deb" % (pkg["name"], pkg["version"].replace(":", "%3a"), pkg["architecture"])

def download_deb(rctx, lock, pkg):
    """Downloads `pkg` (a checked lock entry) to deb_filename(pkg), verified against its sha256 pin.

    Args:
      rctx: the repository context.
      lock: the lock's label, for messages.
      pkg: the lock entry (name, version, architecture, url, sha256).
    Returns:
      the path of the .deb, relative to the repository.
    """
    filename = deb_filename(pkg)
    url = _url(rctx, pkg["url"])
    result = rctx.download(url = url, output = filename, sha256 = pkg["sha256"], allow_fail = True)
    if result.success:
        return filename

    # Fetch again without the pin to tell a tampered or stale lock (wrong bytes) from a vanished URL.
    probe = rctx.download(url = url, output = "mismatch/" + filename, allow_fail = True)
    if probe.success:
        fail(("mlenv: hash mismatch for Debian package %s %s (%s): %s pins sha256 %s, but %s hashes to " +
              "%s. Nothing from it was used. The lock was edited by hand or the mirror serves other " +
              "bytes; regenerate it with `%s`.") % (
            pkg["name"],
            pkg["version"],
            pkg["architecture"],
            lock,
            pkg["sha256"],
            url,
            probe.sha256,
            RELOCK,
        ))
    fail(("mlenv: cannot download Debian package %s %s from %s. deb.debian.org keeps only current " +
          "versions: a point release or security update has replaced it. Relock with `%s` (and commit " +
          "the lock); behind a proxy or mirror, set %s (it replaces %s in every URL).") % (
        pkg["name"],
        pkg["version"],
        url,
        RELOCK,
        MIRROR_ENV,
        _DEFAULT_HOST,
    ))
