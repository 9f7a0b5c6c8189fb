"""Pure-PyTorch reference of the kvarn method: the executable spec, the CPU path and the test oracle.

Never imports vllm or triton.
"""

from kvarn.reference.balance import balance, imbalance
from kvarn.reference.codec import decode_tiles, encode_tiles, record_fields, roundtrip
from kvarn.reference.hadamard import hadamard_matrix, rotate
from kvarn.reference.quant import pack_codes, rtn, unpack_codes

__all__ = [
    "balance",
    "imbalance",
    "decode_tiles",
    "encode_tiles",
    "record_fields",
    "roundtrip",
    "hadamard_matrix",
    "rotate",
    "pack_codes",
    "rtn",
    "unpack_codes",
]
