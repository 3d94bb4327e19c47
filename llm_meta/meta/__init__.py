"""The meta-learning layer: the text-free core and the public functions over any torch model
(`llm_meta.meta`), then the episode heads, losses, algorithms, transfer and adaptation over a body.

`from llm_meta import meta` gives the core made public (functional.py): `trainable(model)`,
`model_loss(model, batch)` and the core's inner loop and meta-gradients. Importing this package
loads only torch; the modules beside it load the model layer when they are imported.
"""

from llm_meta.meta.core import (InnerConfig, Loss, Params, inner_batches, inner_loop, interpolate, maml_gradient,
                                meta_sgd_rates, reptile_gradient)
from llm_meta.meta.functional import model_loss, trainable

__all__ = ["InnerConfig", "Loss", "Params", "inner_batches", "inner_loop", "interpolate", "maml_gradient",
           "meta_sgd_rates", "model_loss", "reptile_gradient", "trainable"]
