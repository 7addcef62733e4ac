"""The music-rnn TFX pipeline definition and its runners."""
