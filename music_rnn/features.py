"""Feature names shared by ExampleGen, Transform, Trainer and the exported model.

Raw features are what the ExampleGen writes (one tf.Example per extracted drum track or
melody); transformed features are what Transform's `preprocessing_fn` produces.
"""

# --- Raw features (ExampleGen output), present for every config. -------------------
SOURCE_ID = 'source_id'  # bytes: id of the source piece; the train/eval split key
TRACK_INDEX = 'track_index'  # int64: index of this sequence among those of its piece
START_STEP = 'start_step'  # int64: first quantized step of the sequence in the piece
NUM_STEPS = 'num_steps'  # int64: number of events (steps)
STEPS_PER_BAR = 'steps_per_bar'  # int64
STEPS_PER_QUARTER = 'steps_per_quarter'  # int64
QPM = 'qpm'  # float: tempo of the (time-change-split) source segment

# Melody configs: Magenta's melody events, -2 no event, -1 note off, 0..127 note on.
MELODY_EVENTS = 'melody_events'  # int64[num_steps]

# Drum configs: per-step sets of MIDI pitches, as a ragged pair.
DRUM_PITCHES = 'drum_pitches'  # int64[sum(drum_pitch_counts)]: sorted pitches, step by step
DRUM_PITCH_COUNTS = 'drum_pitch_counts'  # int64[num_steps]: how many pitches each step has

# MusicVAE configs only: int64 0/1, 1 for the <= max_tensors_per_notesequence slices of a
# piece drawn for training (Magenta's maybe_sample_items, seeded). The ExampleGen keeps
# only those in the train split; not a statistics feature (Transform never sees it).
IN_TRAINING_SAMPLE = 'in_training_sample'

METADATA_FEATURES = (SOURCE_ID, TRACK_INDEX, START_STEP, NUM_STEPS, STEPS_PER_BAR,
                     STEPS_PER_QUARTER, QPM)

# --- Transformed features (Transform output, Trainer input). ----------------------
# The input rows (note-seq's events_to_input at every position 0..length-1, i.e.
# `get_inputs_batch(full_length=True)`) are stored compactly (music_rnn/compact.py):
# hot: int64 [length * H], row-major: per step the column index of each of the row's H
#   leading one-hot blocks (block offset included; num_hot = no column set).
# flags: int64 [length]: per step, bit j = the j-th stored dense column (the columns
#   that follow from the position, binary counters and bar end, are not stored).
# labels: int64 [length - 1]: labels[i] is events_to_label(events, i + 1), so
#   (inputs[:length-1], labels) is exactly note-seq's `encode(events)`.
HOT = 'hot'
FLAGS = 'flags'
LABELS = 'labels'
LENGTH = 'length'  # int64 scalar: number of input steps (== num_steps)
TRANSPOSE_AMOUNT = 'transpose_amount'  # int64 scalar: melody squash transposition (0 for drums)
# float32 scalar: sum over the example's labels of -log p(label), p the analyzed (train)
# split's label frequencies with add-one smoothing: the unigram baseline a model must beat.
UNIGRAM_XENT = 'unigram_xent'

# --- Split names. ------------------------------------------------------------------
TRAIN_SPLIT = 'train'
EVAL_SPLIT = 'eval'


def raw_event_features(kind: str):
  """The raw event feature names the ExampleGen writes for a config kind."""
  from music_rnn import configs  # pylint: disable=g-import-not-at-top
  return (MELODY_EVENTS,) if kind == configs.MELODY else (DRUM_PITCHES, DRUM_PITCH_COUNTS)


def varlen_feature_spec(kind: str):
  """Every raw feature of a config kind as a tf.io.VarLenFeature (what SchemaGen gives
  without shape inference): for building Transform inputs outside a pipeline."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = {SOURCE_ID: tf.io.VarLenFeature(tf.string), QPM: tf.io.VarLenFeature(tf.float32)}
  for key in (TRACK_INDEX, START_STEP, NUM_STEPS, STEPS_PER_BAR, STEPS_PER_QUARTER):
    spec[key] = tf.io.VarLenFeature(tf.int64)
  for key in raw_event_features(kind):
    spec[key] = tf.io.VarLenFeature(tf.int64)
  return spec


def statistics_features(kind: str):
  """Raw features StatisticsGen describes (and so SchemaGen and Transform see).

  SOURCE_ID is an identifier, not data: statistics on it would make SchemaGen infer a
  closed string domain of training piece names and flag every eval piece as an anomaly.
  """
  return [f for f in METADATA_FEATURES if f != SOURCE_ID] + list(raw_event_features(kind))
