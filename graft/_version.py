"""graft's version, in a base module so that any layer can record it (feature files, the
server's answers) without importing the package's top, which sits above them all."""

__version__ = "0.1.0"
