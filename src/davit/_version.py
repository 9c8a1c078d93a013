"""The package version, in a module of its own so that the server and the command line can name it
without importing the package facade."""
__version__ = "0.2.0"
