"""The dycomp example zoo: small plain-PyTorch dynamic networks, written as research code is.

Every module exposes ``make(seed) -> (model, example_inputs)``, ``sample_inputs(n, seed)``,
``path_key(model, inputs, output)``, ``PATHS`` and ``METHOD``; some also export
``EXTRA_METHODS = {method_name: path_key_fn}`` for additional entry points.
See ``examples/README.md``.
"""

from . import (
    act,
    decoder,
    gated54,
    gated_mul,
    gated_resnet,
    moe,
    multi_exit,
    nested_if,
    policy_net,
    static_resnet,
)

ZOO = {
    "multi_exit": multi_exit,
    "gated_resnet": gated_resnet,
    "policy_net": policy_net,
    "moe": moe,
    "decoder": decoder,
    "act": act,
    "nested_if": nested_if,
    "static_resnet": static_resnet,
    "gated54": gated54,
    "gated_mul": gated_mul,
}

__all__ = ["ZOO", *ZOO]
