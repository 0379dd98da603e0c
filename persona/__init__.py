"""persona: a digital likeness of one consenting person, and short explainer videos made with it.

The package is the core (workspace and pack, model locator, recipes, media, progress) plus the
stage packages `persona.data` (footage -> datasets), `persona.train` (datasets -> pack) and
`persona.inference` (pack -> videos), which meet only through files on disk.
"""

__version__ = "0.1.0"
