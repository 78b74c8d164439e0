"""Merging a preprocessing model in front of a network, as onnx.hub's ``load_composite_model``.

The default domain (``ai.onnx``) of the model with the lower opset is converted up to the
higher one with ``onnx.version_converter``; any other domain imported by both models must
already have the same version in both, else :class:`CompositeModelError` (onnx.hub meant to
check this but compared a version with itself, so conflicts slipped through). The outputs of the
preprocessing model feed the inputs of the network in order; ``onnx.compose.merge_models`` does
the merge. Blocking: callers run it in a worker thread.
"""

from __future__ import annotations

import onnx
import onnx.compose
import onnx.version_converter

from .._exceptions import CompositeModelError

__all__ = ["domain_versions", "merge_preprocessing"]

DEFAULT_DOMAIN = "ai.onnx"


def domain_versions(model: onnx.ModelProto) -> dict[str, int]:
    """``{domain: version}`` of a model's opset imports (``""`` is reported as ``ai.onnx``)."""
    return {(entry.domain or DEFAULT_DOMAIN): entry.version for entry in model.opset_import}


def _convert(model: onnx.ModelProto, version: int, ir_version: int) -> onnx.ModelProto:
    converted = onnx.version_converter.convert_version(model, version)
    converted.ir_version = ir_version
    onnx.checker.check_model(converted)
    return converted


def merge_preprocessing(
    network: onnx.ModelProto,
    preprocessing: onnx.ModelProto,
    network_name: str = "network",
    preprocessing_name: str = "preprocessing",
) -> onnx.ModelProto:
    """``preprocessing`` followed by ``network`` as one model."""
    net_versions = domain_versions(network)
    pre_versions = domain_versions(preprocessing)
    for domain in sorted(set(net_versions) & set(pre_versions) - {DEFAULT_DOMAIN}):
        if net_versions[domain] != pre_versions[domain]:
            raise CompositeModelError(
                f"Can not merge {preprocessing_name} and {network_name} because they contain "
                f"different opset versions for domain {domain} ({pre_versions[domain]} and "
                f"{net_versions[domain]}). Only the default domain can be automatically "
                "converted to the highest version of the two."
            )
    pre_opset = pre_versions.get(DEFAULT_DOMAIN, -1)
    net_opset = net_versions.get(DEFAULT_DOMAIN, -1)
    if pre_opset > net_opset >= 0:
        network = _convert(network, pre_opset, preprocessing.ir_version)
    elif net_opset > pre_opset >= 0:
        preprocessing = _convert(preprocessing, net_opset, network.ir_version)
    if network.ir_version != preprocessing.ir_version:
        # merge_models demands equal IR versions; the newer one reads both.
        newest = max(network.ir_version, preprocessing.ir_version)
        network.ir_version = preprocessing.ir_version = newest
    io_map = [
        (out.name, inp.name)
        for out, inp in zip(preprocessing.graph.output, network.graph.input, strict=False)
    ]
    return onnx.compose.merge_models(preprocessing, network, io_map=io_map)
