"""music-rnn-tfx: Magenta-style Drums RNN and Melody RNN models trained with TFX."""

__version__ = '0.1.0'

import warnings as _warnings

# note_seq imports pydub for audio we never use; its missing-ffmpeg warning is noise here.
_warnings.filterwarnings('ignore', message="Couldn't find ffmpeg or avconv")
