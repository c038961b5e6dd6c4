"""Build entry for EL9's %py3_build / %py3_install (setup.py build / install); the metadata
is in setup.cfg, which setuptools 53 and current setuptools read alike."""

from setuptools import setup

setup()
