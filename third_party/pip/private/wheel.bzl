"""Installing one hash-pinned wheel from a PyPI simple index WITHOUT a Python: the pinned interpreter (Debian's
python3.11-minimal) ships no pip, and the host's Python must not be needed.

A wheel is a zip: the index page names each file with its `#sha256=` fragment, so the file whose hash is
pinned is found there, downloaded through Bazel's downloader (checked against the same sha256, kept in the
repository cache) and unpacked. Only wheels whose scripts are plain binaries (uv, ruff) fit: no entry-point
scripts are generated and nothing is byte-compiled.
"""

def _normalize(name):
    return name.lower().replace("_", "-").replace(".", "-")

def _links(page):
    """(href, filename) of every <a href="..."> on a simple-index page."""
    links = []
    for chunk in page.split("href=\"")[1:]:
        href = chunk.split("\"", 1)[0].replace("&amp;", "&")
        filename = href.split("#", 1)[0].rsplit("/", 1)[-1]
        links.append((href, filename))
    return links

def _absolute(index_page_url, href):
    if "://" in href:
        return href
    base = index_page_url
    if href.startswith("/"):
        scheme, rest = base.split("://", 1)
        return scheme + "://" + rest.split("/", 1)[0] + href
    parts = base.rstrip("/").split("/")
    for piece in href.split("/")[:-1]:
        if piece == "..":
            parts = parts[:-1]
        elif piece not in ("", "."):
            parts.append(piece)
    return "/".join(parts) + "/" + href.split("/")[-1]

def install_wheel(rctx, name, version, sha256s, platform_tags, index_url, output, fix):
    """Unpacks the wheel of `name`==`version` whose sha256 is one of `sha256s` and whose file name contains
    every one of `platform_tags` (e.g. ["manylinux", "x86_64"]) into `output`.

    Args:
      rctx: the repository context.
      name: the distribution name.
      version: the pinned version.
      sha256s: the pinned hashes (any wheel of the release may be pinned; the platform picks one).
      platform_tags: substrings the wheel's file name must contain, e.g. ["manylinux", "x86_64"].
      index_url: the simple index (https://pypi.org/simple or a mirror).
      output: the folder to unpack into.
      fix: what to tell the user when nothing fits.
    """
    page_url = "%s/%s/" % (index_url.rstrip("/"), _normalize(name))
    page = "simple_%s.html" % _normalize(name)
    result = rctx.download(url = page_url, output = page, allow_fail = True)
    if not result.success:
        fail("mlenv: cannot read the package index page %s for %s %s; behind a mirror, %s" % (page_url, name, version, fix))
    prefix = "%s-%s-" % (name.replace("-", "_"), version)
    for href, filename in _links(rctx.read(page)):
        if not filename.endswith(".whl") or not filename.lower().startswith(prefix.lower()) or [t for t in platform_tags if t not in filename]:
            continue
        if "#sha256=" not in href:
            continue
        sha = href.split("#sha256=", 1)[1].split("&", 1)[0]
        if sha not in sha256s:
            continue
        rctx.download_and_extract(
            url = _absolute(page_url, href.split("#", 1)[0]),
            sha256 = sha,
            type = "zip",
            output = output,
        )
        rctx.delete(page)
        return "%s/%s-%s.data/scripts" % (output, name.replace("-", "_"), version)
    fail("mlenv: %s lists no %s %s wheel for %s with a pinned sha256 (pinned: %s); %s" % (
        page_url,
        name,
        version,
        " ".join(platform_tags),
        ", ".join(sha256s),
        fix,
    ))

def parse_pinned_requirement(text, label):
    """(name, version, [sha256...]) of the single `name==version --hash=sha256:...` requirement in `text`."""
    joined = text.replace("\\\n", " ")
    for line in joined.split("\n"):
        line = line.split("#", 1)[0].strip()
        if not line or "==" not in line:
            continue
        words = [w for w in line.replace("\t", " ").split(" ") if w]
        name, version = words[0].split("==", 1)
        hashes = [w[len("--hash=sha256:"):] for w in words[1:] if w.startswith("--hash=sha256:")]
        if not hashes:
            fail("mlenv: %s pins %s==%s without --hash=sha256:... lines; relock it" % (label, name, version))
        return name, version, hashes
    fail("mlenv: %s has no `name==version --hash=sha256:...` requirement" % label)
