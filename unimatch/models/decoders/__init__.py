"""Decoders: one registry entry each (see ``base``); importing this package registers them all."""

from .. import dpt  # noqa: F401  (registration)
from . import segformer, vlg  # noqa: F401  (registration)
from .base import DECODERS, Decoder, DecoderEntry, decoder_entry, register_decoder

__all__ = ["DECODERS", "Decoder", "DecoderEntry", "decoder_entry", "register_decoder"]
