"""The arguments every config-driven verb (``run``, ``study limit|zero-loss``, ``compare``)
shares, so that they read the same on the command line."""

from __future__ import annotations

import argparse


def add_config_arguments(p: argparse.ArgumentParser, *, config_help: str, output: str,
                         output_help: str, quiet_help: str) -> None:
    """CONFIG, ``-o/--output``, ``--set SECTION.KEY=VALUE`` (repeatable) and ``-q/--quiet``."""
    p.add_argument("config", metavar="CONFIG", help=config_help)
    p.add_argument("-o", "--output", metavar=output, help=output_help)
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[],
                   help="override a config key (VALUE is a TOML value, else a string); repeatable")
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)


def add_no_plots(p: argparse.ArgumentParser, dest: str) -> None:
    """``--no-plots`` (also spelled ``--no-plot``): write no figures."""
    p.add_argument("--no-plots", "--no-plot", dest=dest, action="store_true",
                   help="write no figures")
