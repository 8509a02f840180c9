"""Client methods: what clients do besides plain local training, with their server halves. One
module each; importing registers."""

from fedllm.fl.methods import plain as plain  # noqa: F401
from fedllm.fl.methods import fedprox as fedprox  # noqa: F401
from fedllm.fl.methods import scaffold as scaffold  # noqa: F401
from fedllm.fl.methods import ditto as ditto  # noqa: F401
from fedllm.fl.methods import pfedme as pfedme  # noqa: F401
from fedllm.fl.methods import fedsa as fedsa  # noqa: F401
