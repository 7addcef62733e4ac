"""music-rnn-tfx: Magenta-style Drums RNN and Melody RNN models trained with TFX."""

__version__ = '0.1.0'
