"""Reusable TFX components of music-rnn-tfx."""
