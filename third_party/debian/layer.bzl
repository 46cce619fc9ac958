"""Public: debian_base_layer and DebianLayerInfo, the OS layer of our images (see docs/debian-base.md).

    load("//third_party/debian:layer.bzl", "debian_base_layer")

    debian_base_layer(name = "base_layer")   # from @debian_bookworm (WORKSPACE: mlenv_debian_repositories())
    # outputs: base_layer.tar (uncompressed, deterministic), base_layer.tar.sha256 (`sha256:<hex>`, the diff_id)
    # provider: DebianLayerInfo(layer, diff_id, interpreter = "/usr/bin/python3.11", packages)
"""

load("//third_party/debian/private:layer.bzl", _DebianLayerInfo = "DebianLayerInfo", _debian_base_layer = "debian_base_layer")

DebianLayerInfo = _DebianLayerInfo
debian_base_layer = _debian_base_layer
