# The one place the package version is written; the build backend reads it too.
__version__ = "0.1.0"
