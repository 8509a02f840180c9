"""Update transforms: validation, clipping (and, built on the same seam, privacy noise and codecs).
One module each; importing registers."""

from fedllm.fl.transforms import validate as validate  # noqa: F401
from fedllm.fl.transforms import clip as clip  # noqa: F401
from fedllm.fl.transforms import dp_fedllm_bench as dp_fedllm_bench  # noqa: F401
from fedllm.fl.transforms import dp_fedavg as dp_fedavg  # noqa: F401
from fedllm.fl.transforms import dp_local as dp_local  # noqa: F401
