"""music-rnn-tfx: Magenta-style Drums RNN and Melody RNN trained, tuned and exported with TFX.

Install with `make venv` (pinned lock, see requirements/); this file declares the package.
"""

import setuptools

setuptools.setup(
    name='music-rnn-tfx',
    version='0.1.0',
    description='Magenta-style Drums RNN and Melody RNN models as a TFX pipeline.',
    python_requires='>=3.11,<3.12',
    packages=setuptools.find_packages(
        include=['music_rnn', 'music_rnn.*', 'components', 'components.*', 'pipeline',
                 'pipeline.*', 'serving', 'serving.*']),
    py_modules=['module_file'],
    install_requires=[
        'tfx==1.16.0',
        'tensorflow>=2.16,<2.17',
        'tensorflow-transform==1.16.0',
        'tensorflow-hub>=0.16',
        'keras-tuner>=1.4',
        'apache-beam>=2.53',
        'note-seq==0.0.5',
        'music21',
        'matplotlib',
        'tqdm',
    ],
    entry_points={'console_scripts': ['music-rnn=music_rnn.cli:main']},
)
