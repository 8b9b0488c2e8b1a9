"""The installed distribution's version, in a module of its own: the modules that record it in
what they write import it from here, not from the package they belong to."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("reef-forensics")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
