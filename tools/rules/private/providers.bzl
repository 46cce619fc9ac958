"""Providers shared by our rules (documented fields; no implementation is loaded with them)."""

ModelBundleInfo = provider(
    doc = "A deployable model bundle made by ml_model_bundle.",
    fields = {
        "dir": "File: the bundle folder (bundle.json, model artifact, golden batch).",
        "model_name": "string: the name clients address the model by (the OIP model name).",
        "version": "string: the model version inside the bundle.",
    },
)

ImageLayerInfo = provider(
    doc = "One uncompressed, deterministic OCI layer.",
    fields = {
        "digest": "File: holds `sha256:<hex>` of the tar (its diff_id and, uncompressed, its blob digest).",
        "name": "string: what the layer is (base, environment, app, model), recorded in the image history.",
        "tar": "File: the layer tar.",
    },
)
