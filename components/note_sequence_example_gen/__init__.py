"""ExampleGen that reads NoteSequence TFRecords and extracts Magenta event sequences."""

from components.note_sequence_example_gen.component import NoteSequenceExampleGen

__all__ = ['NoteSequenceExampleGen']
